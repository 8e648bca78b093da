//! What ephemera knows about instance types without asking AWS: the Service Quotas code of each
//! family and a dated On-Demand price table used when the Price List API cannot be reached.

use serde::{Deserialize, Serialize};

use crate::market::Market;

/// The date the fallback prices were read (us-east-1, Linux, shared tenancy).
pub const PRICES_AS_OF: &str = "2026-11-01";
/// The region the fallback prices, and the EBS, Step Functions and Lambda prices, are for.
pub const PRICES_REGION: &str = "us-east-1";

/// How much dearer than us-east-1 (the fallback table's region) a region may be, at most: São
/// Paulo, the dearest, is about 1.5× us-east-1 for general-purpose types. The table applied
/// elsewhere is multiplied by it, so an estimate from the table never under-prices a region.
pub const REGIONAL_UPLIFT_BOUND: f64 = 1.6;

/// An On-Demand hourly price from the dated table that `region` does not exceed: the table's
/// own outside us-east-1 times [`REGIONAL_UPLIFT_BOUND`].
pub fn on_demand_hourly_bound(instance_type: &str, region: &str) -> Option<f64> {
    let t = lookup(instance_type)?;
    Some(if region == PRICES_REGION {
        t.on_demand_hourly
    } else {
        t.on_demand_hourly * REGIONAL_UPLIFT_BOUND
    })
}

/// A CPU architecture: the candidates of one run share one, and the AMI must match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Intel and AMD types (`c7i`, `m6a`, the GPU types).
    X86_64,
    /// Graviton types (`c7g`, `t4g`).
    Arm64,
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        })
    }
}

/// What the catalog knows of one instance type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypeInfo {
    /// Its vCPUs.
    pub vcpus: u32,
    /// Its CPU architecture.
    pub arch: Arch,
    /// On-Demand USD per hour from the dated table.
    pub on_demand_hourly: f64,
}

/// Families priced linearly in vCPUs: (family, arch, USD per vCPU-hour).
const LINEAR_FAMILIES: &[(&str, Arch, f64)] = &[
    ("c5", Arch::X86_64, 0.0425),
    ("c5a", Arch::X86_64, 0.0385),
    ("c6a", Arch::X86_64, 0.03825),
    ("c6i", Arch::X86_64, 0.0425),
    ("c6g", Arch::Arm64, 0.034),
    ("c7a", Arch::X86_64, 0.05132),
    ("c7g", Arch::Arm64, 0.03625),
    ("c7i", Arch::X86_64, 0.044625),
    ("c8g", Arch::Arm64, 0.03988),
    ("m5", Arch::X86_64, 0.048),
    ("m6a", Arch::X86_64, 0.0432),
    ("m6g", Arch::Arm64, 0.0385),
    ("m6i", Arch::X86_64, 0.048),
    ("m7a", Arch::X86_64, 0.05796),
    ("m7g", Arch::Arm64, 0.0408),
    ("m7i", Arch::X86_64, 0.0504),
    ("m8g", Arch::Arm64, 0.04488),
    ("r5", Arch::X86_64, 0.063),
    ("r6g", Arch::Arm64, 0.0504),
    ("r6i", Arch::X86_64, 0.063),
    ("r7g", Arch::Arm64, 0.05355),
    ("r7i", Arch::X86_64, 0.06615),
    ("r8g", Arch::Arm64, 0.05891),
];

/// Types whose price is not linear in vCPUs: (type, vCPUs, arch, USD per hour).
const EXPLICIT_TYPES: &[(&str, u32, Arch, f64)] = &[
    ("t3.medium", 2, Arch::X86_64, 0.0416),
    ("t3.large", 2, Arch::X86_64, 0.0832),
    ("t3.xlarge", 4, Arch::X86_64, 0.1664),
    ("t3.2xlarge", 8, Arch::X86_64, 0.3328),
    ("t4g.medium", 2, Arch::Arm64, 0.0336),
    ("t4g.large", 2, Arch::Arm64, 0.0672),
    ("t4g.xlarge", 4, Arch::Arm64, 0.1344),
    ("t4g.2xlarge", 8, Arch::Arm64, 0.2688),
];

const SIZES: &[(&str, u32)] = &[
    ("medium", 1),
    ("large", 2),
    ("xlarge", 4),
    ("2xlarge", 8),
    ("4xlarge", 16),
    ("8xlarge", 32),
    ("12xlarge", 48),
    ("16xlarge", 64),
    ("24xlarge", 96),
    ("32xlarge", 128),
    ("48xlarge", 192),
];

/// A type ephemera can price and validate, or None.
pub fn lookup(instance_type: &str) -> Option<TypeInfo> {
    // The GPU types' table (`crate::gpu`): each size priced, all x86_64.
    if let Some(g) = crate::gpu::lookup(instance_type) {
        return Some(TypeInfo {
            vcpus: g.vcpus,
            arch: Arch::X86_64,
            on_demand_hourly: g.on_demand_hourly,
        });
    }
    if let Some(&(_, vcpus, arch, price)) = EXPLICIT_TYPES.iter().find(|t| t.0 == instance_type) {
        return Some(TypeInfo {
            vcpus,
            arch,
            on_demand_hourly: price,
        });
    }
    let (family, size) = instance_type.split_once('.')?;
    let &(_, arch, per_vcpu) = LINEAR_FAMILIES.iter().find(|f| f.0 == family)?;
    let &(_, vcpus) = SIZES.iter().find(|s| s.0 == size)?;
    // `medium` exists only for Graviton families.
    if size == "medium" && arch != Arch::Arm64 {
        return None;
    }
    Some(TypeInfo {
        vcpus,
        arch,
        on_demand_hourly: round6(per_vcpu * vcpus as f64),
    })
}

/// Every family the catalog knows (`c7g`, `t3`, the GPU families), for an error naming them.
pub fn family_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = LINEAR_FAMILIES.iter().map(|f| f.0).collect();
    for t in EXPLICIT_TYPES {
        let fam = t.0.split('.').next().unwrap_or(t.0);
        if !names.contains(&fam) {
            names.push(fam);
        }
    }
    names.extend(crate::gpu::families());
    names
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// The quota class of a family, by the letters it starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QuotaClass {
    /// Running Standard (A, C, D, H, I, M, R, T, Z) instances.
    Standard,
    /// G and VT instances (GPU graphics, video transcoding).
    GAndVt,
    /// P instances (GPU compute).
    P,
    /// X instances (memory-optimized).
    X,
    /// Inf instances (Inferentia).
    Inf,
    /// F instances (FPGA).
    F,
    /// Trn instances (Trainium).
    Trn,
    /// DL instances (deep learning accelerators).
    Dl,
    /// HPC instances (not sold as Spot).
    Hpc,
    /// High Memory instances (`u-*`, `u7*`; not sold as Spot).
    HighMemory,
}

/// The vCPU quota class an instance type's family counts in, by its letters; None for a family no
/// EC2 vCPU quota is known for.
pub fn quota_class(instance_type: &str) -> Option<QuotaClass> {
    let family = instance_type.split('.').next()?.to_ascii_lowercase();
    if family.starts_with("u-") || family.starts_with("u7") {
        return Some(QuotaClass::HighMemory);
    }
    let letters: String = family
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    let class = match letters.as_str() {
        "inf" => QuotaClass::Inf,
        "trn" => QuotaClass::Trn,
        "dl" => QuotaClass::Dl,
        "hpc" => QuotaClass::Hpc,
        "vt" | "g" | "gr" => QuotaClass::GAndVt,
        "p" => QuotaClass::P,
        "x" => QuotaClass::X,
        "f" => QuotaClass::F,
        _ => match letters.chars().next()? {
            'a' | 'c' | 'd' | 'h' | 'i' | 'm' | 'r' | 't' | 'z' => QuotaClass::Standard,
            _ => return None,
        },
    };
    Some(class)
}

/// The EC2 vCPU quota code (Service Quotas, service `ec2`) for a class and market.
pub fn quota_code(class: QuotaClass, market: Market) -> Option<&'static str> {
    use QuotaClass::*;
    Some(match (class, market) {
        (Standard, Market::OnDemand) => "L-1216C47A",
        (GAndVt, Market::OnDemand) => "L-DB2E81BA",
        (P, Market::OnDemand) => "L-417A185B",
        (X, Market::OnDemand) => "L-7295265B",
        (Inf, Market::OnDemand) => "L-1945791B",
        (F, Market::OnDemand) => "L-74FC7D96",
        (Trn, Market::OnDemand) => "L-2C3B7624",
        (Dl, Market::OnDemand) => "L-6E869C2A",
        (Hpc, Market::OnDemand) => "L-F7808C92",
        (HighMemory, Market::OnDemand) => "L-43DA4232",
        (Standard, Market::Spot) => "L-34B43A08",
        (GAndVt, Market::Spot) => "L-3819A6DF",
        (P, Market::Spot) => "L-7212CCBC",
        (X, Market::Spot) => "L-E3A00192",
        (Inf, Market::Spot) => "L-B5D1601B",
        (F, Market::Spot) => "L-88CF9481",
        (Trn, Market::Spot) => "L-6B0D517C",
        (Dl, Market::Spot) => "L-85EED4F7",
        // High-memory and HPC instances are not sold as Spot.
        (Hpc, Market::Spot) | (HighMemory, Market::Spot) => return None,
    })
}

impl QuotaClass {
    /// Every class, in the order [`vcpu_quota_codes`] reads them.
    pub const ALL: [QuotaClass; 10] = [
        QuotaClass::Standard,
        QuotaClass::GAndVt,
        QuotaClass::P,
        QuotaClass::X,
        QuotaClass::Inf,
        QuotaClass::F,
        QuotaClass::Trn,
        QuotaClass::Dl,
        QuotaClass::Hpc,
        QuotaClass::HighMemory,
    ];
}

/// Every EC2 vCPU quota code a run may draw on: the only quotas quota-check may read or ask
/// to raise (template.yaml's quota-check role lists exactly these; tests/tests/template.rs).
pub fn vcpu_quota_codes() -> Vec<&'static str> {
    let mut codes: Vec<&'static str> = QuotaClass::ALL
        .iter()
        .flat_map(|&c| [Market::OnDemand, Market::Spot].map(|m| quota_code(c, m)))
        .flatten()
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes
}

/// Every EC2 vCPU quota code [`quota_code`] knows, in both markets: those the sweeper looks for
/// reservations in (`crate::vcpus`); the same list as [`vcpu_quota_codes`].
pub fn quota_codes() -> Vec<&'static str> {
    vcpu_quota_codes()
}

/// gp3 storage, USD per GiB-month, and the hours AWS counts in a billing month.
pub const GP3_USD_PER_GIB_MONTH: f64 = 0.08;
/// The hours AWS counts in a billing month (EBS bills per GiB-month).
pub const HOURS_PER_MONTH: f64 = 730.0;
/// Step Functions Standard, USD per state transition.
pub const SFN_USD_PER_TRANSITION: f64 = 0.000_025;
/// Lambda arm64, USD per GB-second, and per request.
pub const LAMBDA_ARM_USD_PER_GB_SECOND: f64 = 0.000_013_333_4;
/// Lambda, USD per request.
pub const LAMBDA_USD_PER_REQUEST: f64 = 0.000_000_2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_and_explicit_prices() {
        let c = lookup("c7g.4xlarge").unwrap();
        assert_eq!(c.vcpus, 16);
        assert_eq!(c.arch, Arch::Arm64);
        assert!((c.on_demand_hourly - 0.58).abs() < 1e-9);
        assert!((lookup("m5.large").unwrap().on_demand_hourly - 0.096).abs() < 1e-9);
        assert_eq!(lookup("t3.large").unwrap().vcpus, 2);
        assert!(lookup("c5.medium").is_none());
        assert!(lookup("c6g.medium").is_some());
        assert!(lookup("c7g.huge").is_none());
        assert!(lookup("nope").is_none());
    }

    #[test]
    fn quota_classes_by_family_letters() {
        assert_eq!(quota_class("c7g.4xlarge"), Some(QuotaClass::Standard));
        assert_eq!(quota_class("z1d.large"), Some(QuotaClass::Standard));
        assert_eq!(quota_class("im4gn.large"), Some(QuotaClass::Standard));
        assert_eq!(quota_class("g5.xlarge"), Some(QuotaClass::GAndVt));
        assert_eq!(quota_class("vt1.3xlarge"), Some(QuotaClass::GAndVt));
        assert_eq!(quota_class("p4d.24xlarge"), Some(QuotaClass::P));
        assert_eq!(quota_class("x2idn.16xlarge"), Some(QuotaClass::X));
        assert_eq!(quota_class("inf2.xlarge"), Some(QuotaClass::Inf));
        assert_eq!(quota_class("trn1.2xlarge"), Some(QuotaClass::Trn));
        assert_eq!(quota_class("f1.2xlarge"), Some(QuotaClass::F));
        assert_eq!(quota_class("hpc7g.4xlarge"), Some(QuotaClass::Hpc));
        assert_eq!(quota_class("u-6tb1.metal"), Some(QuotaClass::HighMemory));
        assert_eq!(quota_class("mac1.metal"), Some(QuotaClass::Standard));
    }

    #[test]
    fn quota_codes() {
        // Every class in ALL, each market's code its own.
        assert_eq!(vcpu_quota_codes().len(), 18);
        assert_eq!(
            quota_code(QuotaClass::Standard, Market::OnDemand),
            Some("L-1216C47A")
        );
        assert_eq!(
            quota_code(QuotaClass::Standard, Market::Spot),
            Some("L-34B43A08")
        );
        assert_eq!(
            quota_code(QuotaClass::GAndVt, Market::OnDemand),
            Some("L-DB2E81BA")
        );
        assert_eq!(quota_code(QuotaClass::Hpc, Market::Spot), None);
        let all = super::quota_codes();
        assert_eq!(all.len(), 18);
        assert!(all.contains(&"L-1216C47A") && all.contains(&"L-34B43A08"));
    }
}

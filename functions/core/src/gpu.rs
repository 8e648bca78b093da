//! GPU instance types: the NVIDIA families a team picks for training and inference (g4dn, g5,
//! g6, g6e, p4d, p5), in the sizes people use. Each is x86_64, counted against the G and VT
//! or the P vCPU quota (`catalog::quota_class`, requested like any other), launched from the
//! GPU variant of the ECS-optimized AMI (`crate::image`), and hands its GPUs to the job's
//! container (`exec --gpus`).

/// (type, vCPUs, GPUs, On-Demand USD per hour in the dated table: us-east-1, Linux, as of
/// `catalog::PRICES_AS_OF`). Prices are not linear in vCPUs (the 12xlarge sizes carry four
/// GPUs, the 16xlarge one), so each size is listed. Checked row by row (vCPUs, GPUs, price)
/// against SkyPilot's AWS catalog (`skypilot-org/skypilot-catalog`, `catalogs/v8/aws/vms.csv`,
/// us-east-1 rows), which carries AWS's June 2025 cut of the P4d and P5 prices (AWS News Blog,
/// "Announcing up to 45% price reduction for Amazon EC2 NVIDIA GPU-accelerated instances").
const GPU_TYPES: &[(&str, u32, u32, f64)] = &[
    // NVIDIA T4.
    ("g4dn.xlarge", 4, 1, 0.526),
    ("g4dn.2xlarge", 8, 1, 0.752),
    ("g4dn.4xlarge", 16, 1, 1.204),
    ("g4dn.8xlarge", 32, 1, 2.176),
    ("g4dn.12xlarge", 48, 4, 3.912),
    ("g4dn.16xlarge", 64, 1, 4.352),
    // NVIDIA A10G.
    ("g5.xlarge", 4, 1, 1.006),
    ("g5.2xlarge", 8, 1, 1.212),
    ("g5.4xlarge", 16, 1, 1.624),
    ("g5.8xlarge", 32, 1, 2.448),
    ("g5.12xlarge", 48, 4, 5.672),
    ("g5.16xlarge", 64, 1, 4.096),
    ("g5.24xlarge", 96, 4, 8.144),
    ("g5.48xlarge", 192, 8, 16.288),
    // NVIDIA L4.
    ("g6.xlarge", 4, 1, 0.8048),
    ("g6.2xlarge", 8, 1, 0.9776),
    ("g6.4xlarge", 16, 1, 1.3232),
    ("g6.8xlarge", 32, 1, 2.0144),
    ("g6.12xlarge", 48, 4, 4.6016),
    ("g6.16xlarge", 64, 1, 3.3968),
    ("g6.24xlarge", 96, 4, 6.6752),
    ("g6.48xlarge", 192, 8, 13.3504),
    // NVIDIA L40S.
    ("g6e.xlarge", 4, 1, 1.861),
    ("g6e.2xlarge", 8, 1, 2.24208),
    ("g6e.4xlarge", 16, 1, 3.00424),
    ("g6e.8xlarge", 32, 1, 4.52856),
    ("g6e.12xlarge", 48, 4, 10.49264),
    ("g6e.16xlarge", 64, 1, 7.57719),
    ("g6e.24xlarge", 96, 4, 15.06559),
    ("g6e.48xlarge", 192, 8, 30.13118),
    // NVIDIA A100 (40 GB) and H100: one size each.
    ("p4d.24xlarge", 96, 8, 21.957642),
    ("p5.48xlarge", 192, 8, 55.04),
];

/// A GPU type of the table: its vCPUs, GPUs and dated On-Demand price.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuType {
    /// Its vCPUs.
    pub vcpus: u32,
    /// Its NVIDIA GPUs.
    pub gpus: u32,
    /// On-Demand USD per hour from the dated table (us-east-1, as of `catalog::PRICES_AS_OF`).
    pub on_demand_hourly: f64,
}

/// The GPU type of the table named `instance_type`; None for any other type.
pub fn lookup(instance_type: &str) -> Option<GpuType> {
    GPU_TYPES
        .iter()
        .find(|t| t.0 == instance_type)
        .map(|&(_, vcpus, gpus, price)| GpuType {
            vcpus,
            gpus,
            on_demand_hourly: price,
        })
}

/// Whether the type has GPUs (one of the table's).
pub fn is_gpu(instance_type: &str) -> bool {
    lookup(instance_type).is_some()
}

/// The GPU families, for the catalog's list of what it knows.
pub fn families() -> Vec<&'static str> {
    let mut f: Vec<&str> = GPU_TYPES
        .iter()
        .map(|t| t.0.split('.').next().unwrap_or(t.0))
        .collect();
    f.dedup();
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{self, Arch, QuotaClass};
    use crate::market::Market;

    #[test]
    fn every_gpu_type_is_priced_x86_and_counted_against_the_g_or_p_quota() {
        for &(t, vcpus, gpus, price) in GPU_TYPES {
            let info = catalog::lookup(t).unwrap_or_else(|| panic!("{t} in the catalog"));
            assert_eq!((info.vcpus, info.arch), (vcpus, Arch::X86_64), "{t}");
            assert_eq!(info.on_demand_hourly, price, "{t}");
            assert!(gpus >= 1 && price > 0.5, "{t}");
            let class = catalog::quota_class(t).unwrap();
            let want = if t.starts_with('p') {
                QuotaClass::P
            } else {
                QuotaClass::GAndVt
            };
            assert_eq!(class, want, "{t}");
        }
        assert_eq!(
            catalog::quota_code(catalog::quota_class("g6.xlarge").unwrap(), Market::Spot),
            Some("L-3819A6DF"),
            "All G and VT Spot Instance Requests"
        );
        assert_eq!(
            catalog::quota_code(
                catalog::quota_class("p5.48xlarge").unwrap(),
                Market::OnDemand
            ),
            Some("L-417A185B"),
            "Running On-Demand P instances"
        );
    }

    #[test]
    fn a_gpu_run_requests_the_g_family_quota_and_no_other() {
        let types: Vec<(String, u32)> = ["g6.xlarge", "g5.2xlarge"]
            .iter()
            .map(|t| (t.to_string(), lookup(t).unwrap().vcpus))
            .collect();
        let needs = crate::quota::needs(&types, &[Market::Spot, Market::OnDemand], 2).unwrap();
        let mut codes: Vec<(&str, u32)> = needs
            .iter()
            .map(|q| (q.code.as_str(), q.needed_vcpus))
            .collect();
        codes.sort();
        // All G and VT Spot Instance Requests, Running On-Demand G and VT instances: two
        // workers, each on the largest candidate (8 vCPUs).
        assert_eq!(codes, [("L-3819A6DF", 16), ("L-DB2E81BA", 16)]);
    }

    #[test]
    fn the_families_a_team_picks_are_all_there() {
        assert_eq!(families(), ["g4dn", "g5", "g6", "g6e", "p4d", "p5"]);
        assert!(is_gpu("g5.xlarge") && !is_gpu("c7g.4xlarge") && !is_gpu("g5.bogus"));
        assert_eq!(lookup("g5.12xlarge").map(|t| t.gpus), Some(4));
    }
}

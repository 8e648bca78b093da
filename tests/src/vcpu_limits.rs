//! EC2's vCPU quotas at launch, which moto does not play: RunInstances is refused when the
//! vCPUs of the running and pending instances of the quota's families (one quota per instance
//! family class and market, `ephemera_core::catalog::quota_code`), with the new ones, would pass
//! the quota's applied value (the Service Quotas stand-in's). On-Demand is refused with
//! `VcpuLimitExceeded`, Spot with `MaxSpotInstanceCountExceeded`, as EC2 answers: "On-Demand
//! Instance quotas are managed in terms of the number of virtual central processing units
//! (vCPUs) that your running On-Demand Instances are using"
//! (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-on-demand-instances.html#ec2-on-demand-instances-limits);
//! "Spot Instance quotas are managed in terms of the number of vCPUs that your running Spot
//! Instances are either using or will use pending the fulfillment of open Spot Instance
//! requests", and a request past it gets "the error Max spot instance count exceeded"
//! (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/using-spot-limits.html). The On-Demand
//! message is EC2's as users quote it (e.g. 4dn-dcic/tibanna#267).
//!
//! Launches in a region are judged one at a time (EC2 decides each request on its own, and two
//! at once never both take the last room), and every launch let through records the vCPUs then
//! running in its quota: the peak per quota is what the tests hold against the applied value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ephemera_core::instance_state::InstanceState;
use ephemera_core::Market;
use ephemera_functions::aws::Compute;

/// A launch refused for a vCPU quota.
#[derive(Debug, Clone, PartialEq)]
pub struct VcpuRefusal {
    pub code: String,
    pub market: Market,
    pub instance_type: String,
    /// vCPUs running and pending in the quota.
    pub in_use: u32,
    /// vCPUs the launch asked for.
    pub asked: u32,
    pub applied: f64,
}

/// One launch let through: its quota, and the vCPUs running there with it.
#[derive(Debug, Clone, PartialEq)]
pub struct VcpuLaunch {
    pub code: String,
    pub instance_type: String,
    pub in_use_after: u32,
    pub applied: f64,
}

/// What the quota of a launch says: let it through (with the vCPUs in use after it), or refuse.
pub enum Judged {
    /// No quota is known for the type: EC2's other limits only.
    Unknown,
    Admitted(VcpuLaunch),
    Refused(VcpuRefusal),
}

#[derive(Default)]
pub struct VcpuLimits {
    /// One launch at a time in a region, from the count to moto's answer.
    launching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Every launch let through, by region.
    launches: Mutex<HashMap<String, Vec<VcpuLaunch>>>,
    /// Every launch refused, by region.
    refusals: Mutex<HashMap<String, Vec<VcpuRefusal>>>,
    /// vCPUs of the types asked about (moto's DescribeInstanceTypes).
    vcpus: Mutex<HashMap<String, u32>>,
}

impl VcpuLimits {
    /// The region's launch lock: held from the count to the launch.
    pub fn region_lock(&self, region: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.launching
            .lock()
            .unwrap()
            .entry(region.to_string())
            .or_default()
            .clone()
    }

    /// The most vCPUs ever running at once in `code` in `region` (0 when nothing launched).
    pub fn peak(&self, region: &str, code: &str) -> u32 {
        self.launches
            .lock()
            .unwrap()
            .get(region)
            .into_iter()
            .flatten()
            .filter(|l| l.code == code)
            .map(|l| l.in_use_after)
            .max()
            .unwrap_or(0)
    }

    pub fn launches_in(&self, region: &str) -> Vec<VcpuLaunch> {
        self.launches
            .lock()
            .unwrap()
            .get(region)
            .cloned()
            .unwrap_or_default()
    }

    pub fn refusals_in(&self, region: &str) -> Vec<VcpuRefusal> {
        self.refusals
            .lock()
            .unwrap()
            .get(region)
            .cloned()
            .unwrap_or_default()
    }

    pub fn record(&self, region: &str, judged: &Judged) {
        match judged {
            Judged::Admitted(l) => self
                .launches
                .lock()
                .unwrap()
                .entry(region.to_string())
                .or_default()
                .push(l.clone()),
            Judged::Refused(r) => self
                .refusals
                .lock()
                .unwrap()
                .entry(region.to_string())
                .or_default()
                .push(r.clone()),
            Judged::Unknown => {}
        }
    }

    async fn vcpus_of(&self, ec2: &aws_sdk_ec2::Client, types: &[String]) -> HashMap<String, u32> {
        let mut out = HashMap::new();
        let mut missing = vec![];
        {
            let known = self.vcpus.lock().unwrap();
            for t in types {
                match known.get(t) {
                    Some(v) => {
                        out.insert(t.clone(), *v);
                    }
                    None => missing.push(t.clone()),
                }
            }
        }
        if !missing.is_empty() {
            let found = ec2.vcpus(&missing).await.unwrap_or_default();
            self.vcpus
                .lock()
                .unwrap()
                .extend(found.iter().map(|(k, v)| (k.clone(), *v)));
            out.extend(found);
        }
        out
    }

    /// Judges a launch of `count` instances of `instance_type` in `market` against `applied`,
    /// counting what moto has running and pending (through `ec2`, straight to moto).
    pub async fn judge(
        &self,
        ec2: &aws_sdk_ec2::Client,
        instance_type: &str,
        market: Market,
        count: u32,
        applied: impl FnOnce(&str) -> f64,
    ) -> Judged {
        let Some(code) = ephemera_core::vcpus::code_of(instance_type, market) else {
            return Judged::Unknown;
        };
        let active = ec2
            .instances(&[], &[InstanceState::Pending, InstanceState::Running])
            .await
            .unwrap_or_default();
        let mut types: Vec<String> = active.iter().map(|i| i.instance_type.clone()).collect();
        types.push(instance_type.to_string());
        types.sort();
        types.dedup();
        let vcpus = self.vcpus_of(ec2, &types).await;
        let in_use: u32 = active
            .iter()
            .filter(|i| ephemera_core::vcpus::code_of(&i.instance_type, i.market) == Some(code))
            .map(|i| vcpus.get(&i.instance_type).copied().unwrap_or(0))
            .sum();
        let asked = vcpus.get(instance_type).copied().unwrap_or(0) * count;
        let applied = applied(code);
        if f64::from(in_use + asked) > applied + 1e-9 {
            return Judged::Refused(VcpuRefusal {
                code: code.into(),
                market,
                instance_type: instance_type.into(),
                in_use,
                asked,
                applied,
            });
        }
        Judged::Admitted(VcpuLaunch {
            code: code.into(),
            instance_type: instance_type.into(),
            in_use_after: in_use + asked,
            applied,
        })
    }
}

/// EC2's answer to a launch a vCPU quota refuses: its code and message.
pub fn refusal_error(r: &VcpuRefusal) -> (&'static str, String) {
    match r.market {
        Market::OnDemand => (
            "VcpuLimitExceeded",
            format!(
                "You have requested more vCPU capacity than your current vCPU limit of {} allows for the instance bucket that the specified instance type belongs to. Please visit http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit.",
                r.applied
            ),
        ),
        Market::Spot => (
            "MaxSpotInstanceCountExceeded",
            "Max spot instance count exceeded".to_string(),
        ),
    }
}

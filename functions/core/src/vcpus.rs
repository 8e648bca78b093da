//! vCPUs reserved across runs (issue 32, parts 4 and 5): the runs of a stack share each EC2
//! vCPU quota of a region (one per instance family class and market, `catalog::quota_code`), and
//! runs started together used to read the same free room and all launch into it. Each run now
//! reserves the vCPUs it may use in every quota it may launch into, in the ledger table, before
//! its first launch; a run is admitted only when its need fits beside what the stack's other runs
//! reserved and what runs outside them (instances of no run holding a reservation), and the
//! reservation is given back when the run is torn down (or by the sweeper, for a run that ended
//! without its teardown).
//!
//! A run's own instances are counted once: an instance whose execution holds a reservation in a
//! quota is inside that reservation, so the usage outside reservations leaves it out.
//!
//! A launch EC2 still refuses for a vCPU quota (`VcpuLimitExceeded`, On-Demand;
//! `MaxSpotInstanceCountExceeded`, Spot: usage outside the stack grew since the check) is a
//! quota verdict, not a lost worker: the worker waits with the run's quota backoff and launches
//! again ([`after_refusal`]).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog;
use crate::market::Market;
use crate::quota;
use crate::runspec::RunSpec;

/// What the stack's runs hold in one vCPU quota: each run's vCPUs by execution ARN.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The vCPU quota's code (`L-…`).
    pub code: String,
    /// Each run's reservation in vCPUs, by its execution ARN.
    pub runs: BTreeMap<String, u32>,
}

impl Held {
    /// Every run's reservation.
    pub fn total(&self) -> u32 {
        self.runs.values().fold(0, |sum, v| sum.saturating_add(*v))
    }

    /// What the runs other than `execution` hold.
    pub fn others(&self, execution: Option<&str>) -> u32 {
        self.runs
            .iter()
            .filter(|(e, _)| Some(e.as_str()) != execution)
            .fold(0, |sum, (_, v)| sum.saturating_add(*v))
    }

    /// What `execution` holds, if anything.
    pub fn own(&self, execution: &str) -> Option<u32> {
        self.runs.get(execution).copied()
    }
}

/// The quota an instance of `instance_type` bought in `market` draws on, if any is known.
pub fn code_of(instance_type: &str, market: Market) -> Option<&'static str> {
    catalog::quota_class(instance_type).and_then(|c| catalog::quota_code(c, market))
}

/// The vCPUs in use in each quota outside the stack's reservations: every pending or running
/// instance (type, market, the execution its `ephemera:execution` tag names) counted in the
/// quota it draws on, unless that execution holds a reservation there — its vCPUs are inside
/// the reservation, and counting them again would hold them twice.
pub fn outside_usage<'a>(
    active: impl IntoIterator<Item = (&'a str, Market, Option<&'a str>)>,
    vcpus: &HashMap<String, u32>,
    held: &BTreeMap<String, Held>,
) -> BTreeMap<&'static str, u32> {
    let mut usage = BTreeMap::new();
    for (t, market, execution) in active {
        let Some(code) = code_of(t, market) else {
            continue;
        };
        let reserved = execution
            .zip(held.get(code))
            .is_some_and(|(e, h)| h.own(e).is_some());
        if !reserved {
            *usage.entry(code).or_default() += vcpus.get(t).copied().unwrap_or(0);
        }
    }
    usage
}

/// The runs holding a reservation in each quota at either of two reads: one before the instances
/// were listed, one after. A run gives its reservation back only once its instances are
/// terminated (the teardown and the sweeper both terminate first), so an instance listed
/// between the reads belongs to a run in one of them: left out of the usage outside
/// reservations, it is neither counted twice (reservation and usage) nor, its run's reservation
/// gone, taken for someone else's.
pub fn holders(
    before: &BTreeMap<String, Held>,
    after: &BTreeMap<String, Held>,
) -> BTreeMap<String, Held> {
    let mut out = after.clone();
    for (code, h) in before {
        let merged = out.entry(code.clone()).or_insert_with(|| Held {
            code: code.clone(),
            runs: BTreeMap::new(),
        });
        for (e, v) in &h.runs {
            merged.runs.entry(e.clone()).or_insert(*v);
        }
    }
    out
}

/// A run's reservation in one quota: its need, and the most the stack's runs may hold there
/// together once it is made (the applied value less the usage outside reservations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The vCPU quota's code (`L-…`).
    pub code: String,
    /// The vCPUs the run reserves: its need in the quota.
    pub vcpus: u32,
    /// The most the stack's runs may hold there together, in vCPUs: the applied value (whole vCPUs)
    /// less the usage outside reservations.
    pub limit: u32,
}

impl Claim {
    /// The claim of `needed` vCPUs in a quota of `applied` with `outside` in use beside the
    /// reservations.
    pub fn new(code: &str, needed: u32, applied: f64, outside: u32) -> Claim {
        let room = (applied + 1e-9).floor().max(0.0) as u64;
        Claim {
            code: code.to_string(),
            vcpus: needed,
            limit: room
                .saturating_sub(u64::from(outside))
                .min(u64::from(u32::MAX)) as u32,
        }
    }

    /// Whether the claim fits beside `others` (what the other runs hold): the admission.
    pub fn admits(&self, others: u32) -> bool {
        u64::from(others) + u64::from(self.vcpus) <= u64::from(self.limit)
    }

    /// The condition the ledger writes the claim on: the quota's total (`others` plus what
    /// this run held, `before`) at most this, so that runs reserving at the same instant can
    /// never together pass the limit. None when the claim cannot fit at all.
    pub fn most_reserved_before(&self, before: Option<u32>) -> Option<u32> {
        self.limit
            .checked_sub(self.vcpus)
            .map(|room| room.saturating_add(before.unwrap_or(0)))
    }
}

/// Every vCPU quota a run of `spec` may launch into, whatever quota-check chose: each candidate
/// type in each market its policy may use (the first launch's, and a relaunch's). What a
/// teardown releases.
pub fn codes_of(spec: &RunSpec) -> Vec<&'static str> {
    let mut markets = spec.worker.market.markets(false);
    markets.extend(spec.worker.market.markets(true));
    let mut codes: Vec<&'static str> = markets
        .into_iter()
        .flat_map(|m| {
            spec.worker
                .instance_types
                .iter()
                .filter_map(move |t| code_of(t, m))
        })
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes
}

/// The item key of a quota's reservations in the ledger table: per region (a ledger table kept
/// from another stack's region, or shared, never mixes them) and quota code. It has no `month`,
/// so the month's index never lists it.
pub fn ledger_key(region: &str, code: &str) -> String {
    format!("vcpus#{region}#{code}")
}

/// The error codes with which RunInstances refuses a launch for a vCPU quota: On-Demand
/// (`VcpuLimitExceeded`: "You have requested more vCPU capacity than your current vCPU limit of
/// N allows for the instance bucket that the specified instance type belongs to") and Spot
/// (`MaxSpotInstanceCountExceeded`: "Max spot instance count exceeded",
/// https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/using-spot-limits.html). Both quotas
/// count the vCPUs of the running (and, for Spot, requested) instances of the quota's families
/// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-on-demand-instances.html#ec2-on-demand-instances-limits,
/// https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html).
pub fn is_quota_refusal(code: &str) -> bool {
    matches!(code, "VcpuLimitExceeded" | "MaxSpotInstanceCountExceeded")
}

/// How many times one worker waits for quota at launch, at most (its Map iteration's history:
/// each wait is a LaunchWorker call, a Pass and a Wait, `RunSpec::history_events`). With the
/// default waits (60 s doubling to 1,800 s) six waits span about an hour; never past
/// `quota.max_wait_seconds` from the first refusal.
pub const LAUNCH_QUOTA_WAITS: u32 = 6;

/// A worker's launch refused for quota, as the state machine carries it to its Wait and back to
/// LaunchWorker (`$.launch_quota.refused`): which attempt, how many waits the worker has made,
/// since when this attempt waits, the next wait and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRefused {
    /// The attempt whose launch was refused.
    pub attempt: u32,
    /// How many times the worker has waited for quota at launch, this wait included (at most
    /// [`LAUNCH_QUOTA_WAITS`]).
    pub waits: u32,
    /// When this attempt was first refused: `quota.max_wait_seconds` counts from then.
    pub since: DateTime<Utc>,
    /// Seconds to wait before launching again (the run's quota backoff, never past the deadline);
    /// read by the `WaitLaunchQuota` state's `SecondsPath`.
    pub wait_seconds: u64,
    /// Why, in words: RunInstances' refusal.
    pub reason: String,
}

/// What a launch refused for quota does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterRefusal {
    /// Wait `wait_seconds` and launch again.
    Wait(QuotaRefused),
    /// The worker has waited as long as it may: it ends with this reason.
    GiveUp(String),
}

/// The worker's next step after its launch of `attempt` was refused for quota (`reason`):
/// another wait, with the run's quota backoff (`waits.quota_poll_*`) from the attempt's first
/// refusal, unless the worker made [`LAUNCH_QUOTA_WAITS`] already or `quota.max_wait_seconds`
/// has passed since the first refusal.
pub fn after_refusal(
    spec: &RunSpec,
    previous: Option<&QuotaRefused>,
    attempt: u32,
    reason: String,
    now: DateTime<Utc>,
) -> AfterRefusal {
    let waits = previous.map_or(0, |p| p.waits);
    // A relaunch's first refusal starts its own wait; the count is the worker's.
    let since = previous
        .filter(|p| p.attempt == attempt)
        .map_or(now, |p| p.since);
    let deadline = since + Duration::seconds(spec.quota.max_wait_seconds as i64);
    if waits >= LAUNCH_QUOTA_WAITS {
        return AfterRefusal::GiveUp(format!(
            "{reason}; the worker waited for vCPU quota at launch {waits} times, the most it may"
        ));
    }
    if now >= deadline {
        return AfterRefusal::GiveUp(format!(
            "{reason}; quota.max_wait_seconds ({}) passed at {} since the first refusal",
            spec.quota.max_wait_seconds,
            deadline.to_rfc3339()
        ));
    }
    let first_of_attempt = previous.is_none_or(|p| p.attempt != attempt);
    let polls = if first_of_attempt { 0 } else { waits };
    AfterRefusal::Wait(QuotaRefused {
        attempt,
        waits: waits + 1,
        since,
        wait_seconds: quota::next_wait(
            polls,
            spec.waits.quota_poll_min_seconds,
            spec.waits.quota_poll_max_seconds,
            now,
            deadline,
        ),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const SPOT: &str = "L-34B43A08";
    const OD: &str = "L-1216C47A";

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn held(code: &str, runs: &[(&str, u32)]) -> Held {
        Held {
            code: code.into(),
            runs: runs.iter().map(|(e, v)| (e.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn a_runs_own_instances_are_inside_its_reservation_and_counted_once() {
        let vcpus: HashMap<String, u32> = [("c7g.4xlarge".to_string(), 16)].into();
        let holding = BTreeMap::from([(SPOT.to_string(), held(SPOT, &[("run-a", 16)]))]);
        let usage = outside_usage(
            [
                // run-a's instance, in the quota it reserved: inside its reservation.
                ("c7g.4xlarge", Market::Spot, Some("run-a")),
                // run-b holds nothing: its instance is usage like anyone's.
                ("c7g.4xlarge", Market::Spot, Some("run-b")),
                // Outside the stack altogether.
                ("c7g.4xlarge", Market::Spot, None),
                // run-a's On-Demand instance: it reserved no On-Demand room.
                ("c7g.4xlarge", Market::OnDemand, Some("run-a")),
                ("q9.unknown", Market::Spot, None),
            ],
            &vcpus,
            &holding,
        );
        assert_eq!(usage.get(SPOT), Some(&32));
        assert_eq!(usage.get(OD), Some(&16));
        assert_eq!(usage.len(), 2);
    }

    #[test]
    fn a_run_that_gave_its_room_back_between_the_reads_is_not_taken_for_usage_outside() {
        let vcpus: HashMap<String, u32> = [("c7g.4xlarge".to_string(), 16)].into();
        // run-a held Spot when the first read was made and gave it back (its instance
        // terminated) before the second; its instance was still listed between them.
        let before = BTreeMap::from([(SPOT.to_string(), held(SPOT, &[("run-a", 16)]))]);
        let after = BTreeMap::from([(SPOT.to_string(), held(SPOT, &[("run-b", 16)]))]);
        let both = holders(&before, &after);
        assert_eq!(both[SPOT].runs.len(), 2);
        let usage = outside_usage(
            [("c7g.4xlarge", Market::Spot, Some("run-a"))],
            &vcpus,
            &both,
        );
        assert_eq!(usage.get(SPOT), None);
        // What the others hold is the latest read's.
        assert_eq!(after[SPOT].others(Some("run-c")), 16);
    }

    #[test]
    fn a_run_is_admitted_only_beside_the_others_reservations_and_the_usage_outside() {
        // Room for four 16-vCPU runs: three reserved, nothing outside.
        let h = held(SPOT, &[("a", 16), ("b", 16), ("c", 16)]);
        let claim = Claim::new(SPOT, 16, 64.0, 0);
        assert_eq!(claim.limit, 64);
        assert!(claim.admits(h.others(Some("d"))));
        // A fourth reserved: the fifth waits.
        let h = held(SPOT, &[("a", 16), ("b", 16), ("c", 16), ("d", 16)]);
        assert!(!claim.admits(h.others(Some("e"))));
        // Its own reservation (a retried call) is not another run's.
        assert!(claim.admits(h.others(Some("d"))));
        // Usage outside the stack takes room as a reservation does.
        let outside = Claim::new(SPOT, 16, 64.0, 20);
        assert_eq!(outside.limit, 44);
        assert!(!outside.admits(32));
        assert!(outside.admits(16));
        // The write's condition: the total as it may stand before, this run's own included.
        assert_eq!(claim.most_reserved_before(None), Some(48));
        assert_eq!(claim.most_reserved_before(Some(16)), Some(64));
        assert_eq!(
            Claim::new(SPOT, 16, 8.0, 0).most_reserved_before(None),
            None
        );
        // More in use outside than applied (the quota was lowered): no room, no underflow.
        assert_eq!(Claim::new(SPOT, 16, 8.0, 20).limit, 0);
        assert_eq!(h.total(), 64);
    }

    #[test]
    fn a_teardown_releases_every_quota_the_run_may_have_reserved() {
        let mut spec: RunSpec = serde_json::from_value(serde_json::json!({
            "run_id": "r",
            "worker": {"instance_types": ["c7g.4xlarge", "g5.xlarge"], "subnets": ["s"],
                       "image": "ami-1", "artifact": "s3://art/b"},
            "limits": {"max_runtime_seconds": 60, "budget_usd": 10.0}
        }))
        .unwrap();
        assert_eq!(
            codes_of(&spec),
            vec!["L-1216C47A", "L-34B43A08", "L-3819A6DF", "L-DB2E81BA"]
        );
        spec.worker.market = crate::MarketPolicy::Spot;
        assert_eq!(codes_of(&spec), vec!["L-34B43A08", "L-3819A6DF"]);
        assert_eq!(ledger_key("eu-west-1", SPOT), "vcpus#eu-west-1#L-34B43A08");
    }

    #[test]
    fn a_launch_refused_for_quota_is_a_quota_verdict() {
        assert!(is_quota_refusal("VcpuLimitExceeded"));
        assert!(is_quota_refusal("MaxSpotInstanceCountExceeded"));
        assert!(!is_quota_refusal("InsufficientInstanceCapacity"));
        assert!(!is_quota_refusal("InstanceLimitExceeded"));
    }

    #[test]
    fn a_refused_launch_waits_with_the_quota_backoff_then_gives_up() {
        let mut spec: RunSpec = serde_json::from_value(serde_json::json!({
            "run_id": "r",
            "worker": {"instance_types": ["c7g.4xlarge"], "subnets": ["s"],
                       "image": "ami-1", "artifact": "s3://art/b"},
            "limits": {"max_runtime_seconds": 60, "budget_usd": 10.0},
            "quota": {"max_wait_seconds": 3600},
            "waits": {"quota_poll_min_seconds": 60, "quota_poll_max_seconds": 600}
        }))
        .unwrap();
        let mut prev: Option<QuotaRefused> = None;
        let mut waits = vec![];
        let mut now = t(0);
        loop {
            match after_refusal(&spec, prev.as_ref(), 1, "refused".into(), now) {
                AfterRefusal::Wait(r) => {
                    assert_eq!(r.since, t(0));
                    waits.push(r.wait_seconds);
                    now += Duration::seconds(r.wait_seconds as i64);
                    prev = Some(r);
                }
                AfterRefusal::GiveUp(why) => {
                    assert!(why.contains("6 times"), "{why}");
                    break;
                }
            }
        }
        assert_eq!(waits, vec![60, 120, 240, 480, 600, 600]);
        // A relaunch's refusal starts its own wait, within the worker's count.
        let r = match after_refusal(&spec, prev.as_ref(), 2, "again".into(), now) {
            AfterRefusal::GiveUp(_) => None,
            AfterRefusal::Wait(r) => Some(r),
        };
        assert_eq!(r, None, "the worker's waits are spent");
        let first = QuotaRefused {
            attempt: 1,
            waits: 1,
            since: t(0),
            wait_seconds: 60,
            reason: String::new(),
        };
        match after_refusal(&spec, Some(&first), 2, "again".into(), t(5000)) {
            AfterRefusal::Wait(r) => {
                assert_eq!((r.attempt, r.waits, r.since), (2, 2, t(5000)));
                assert_eq!(
                    r.wait_seconds, 60,
                    "the attempt's own backoff from the start"
                );
            }
            other => panic!("{other:?}"),
        }
        // Never past quota.max_wait_seconds from the attempt's first refusal, and no wait past it.
        spec.quota.max_wait_seconds = 100;
        match after_refusal(&spec, Some(&first), 1, "x".into(), t(70)) {
            AfterRefusal::Wait(r) => assert_eq!(r.wait_seconds, 30),
            other => panic!("{other:?}"),
        }
        match after_refusal(&spec, Some(&first), 1, "x".into(), t(100)) {
            AfterRefusal::GiveUp(why) => assert!(why.contains("max_wait_seconds"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}

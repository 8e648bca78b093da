//! The run's hard cap, `limits.budget_usd`, kept by admission: nothing is launched unless what
//! is left of the cap covers the attempt's worst case, the most one attempt of one worker can
//! bill whatever happens to it (issue 32).
//!
//! An attempt's instance carries the `ephemera:deadline` tag (`launch::deadline`): its boot
//! timeout, its max runtime and [`DEADLINE_GRACE_SECONDS`] (time for the state machine to stop
//! and tear it down) after its LaunchWorker state was entered; the sweeper terminates it at its
//! first tick past that deadline, at most [`SWEEPER_INTERVAL_SECONDS`] later, even when the
//! execution's own cleanup failed. So no attempt is billed for longer than the sum of those four,
//! at no more than the dearest candidate's On-Demand price (Spot never bills above it: ephemera
//! sets no higher maximum price). With it go its root volume for as long, the log lines its
//! worker may ship ([`MAX_SHIPPED_BYTES`], which the worker enforces) and its share of the
//! state machine's transitions and Lambda invocations. The run's own states (the quota and
//! snapshot waits, verification, the report) are [`run_overhead`], counted once.
//!
//! The cap is also kept while the run goes, by a money deadline rather than by measuring: when
//! what is left of the cap cannot buy an attempt's whole worst case, the attempt is granted the
//! runtime it can buy ([`grant`]): no less than [`MIN_USEFUL_RUNTIME_SECONDS`], at most
//! `limits.max_runtime_seconds`. Its reservation, its deadline tag and the AwaitCompletion
//! timeout are that runtime's, and the worker is told it (`--budget-seconds`): it stops the work
//! then as at a Spot notice and reports `Worker.BudgetExhausted`. What is *measured* is not
//! consulted: no Lambda runs while a worker works (AwaitCompletion waits on a task token), and
//! the measured bill can only be below the worst case the deadline is drawn from.

use serde::{Deserialize, Serialize};

use crate::catalog::{
    LAMBDA_ARM_USD_PER_GB_SECOND, LAMBDA_USD_PER_REQUEST, PRICES_REGION, REGIONAL_UPLIFT_BOUND,
    SFN_USD_PER_TRANSITION,
};
use crate::contract::logs::MAX_SHIPPED_BYTES;
use crate::cost;
use crate::launch::DEADLINE_GRACE_SECONDS;
use crate::runspec::RunSpec;
use crate::sweep::SWEEPER_INTERVAL_SECONDS;

/// CloudWatch Logs, USD per GB a worker ships, at most: ingestion is $0.50 in us-east-1 and
/// $0.76 in ap-northeast-1 (https://aws.amazon.com/cloudwatch/pricing/); twice us-east-1's
/// covers the dearer regions and the storage of the retention period.
pub const LOGS_USD_PER_GB_BOUND: f64 = 1.0;

/// The functions' memory (template.yaml `Globals.Function.MemorySize`, 128 MB) in GB.
pub const LAMBDA_MEMORY_GB: f64 = 0.125;
/// Each function's `Timeout` in template.yaml: an invocation is billed at most that long.
pub const HEALTH_CHECK_TIMEOUT_SECONDS: f64 = 60.0;
/// launch-worker's `Timeout` in template.yaml.
pub const LAUNCH_WORKER_TIMEOUT_SECONDS: f64 = 300.0;
/// terminate-with-cost-report's `Timeout` in template.yaml.
pub const TERMINATE_TIMEOUT_SECONDS: f64 = 120.0;
/// quota-check's `Timeout` in template.yaml.
pub const QUOTA_CHECK_TIMEOUT_SECONDS: f64 = 60.0;
/// The tries of an invocation that failed (the ASL's `Retry` on `Ephemera.AwsError` and
/// `Lambda.ServiceException`: the call and 3 more), each billed. Throttled invocations
/// (`Lambda.TooManyRequestsException`) never ran, so are not billed.
pub const BILLED_TRIES: f64 = 4.0;

/// States one attempt passes through besides its boot polls: Stagger, LaunchWorker, WaitBoot,
/// AwaitCompletion, WasReclaimed, CanRelaunch, Relaunch, ReleaseWorker and the iteration's end,
/// counted generously.
const ATTEMPT_TRANSITIONS: u64 = 12;
/// A boot poll: WaitHealth, HealthCheck, Booted.
const POLL_TRANSITIONS: u64 = 3;
/// A wait for vCPU quota at launch: LaunchQuotaRefused, ReadLaunchQuotaWait, WaitLaunchQuota,
/// LaunchWorker.
const QUOTA_WAIT_TRANSITIONS: u64 = 4;
/// The run's own states besides its polls (Start to Done or Failed through Cleanup), generously.
const RUN_TRANSITIONS: u64 = 24;
/// The run's own invocations besides its polls: verify, prune, the report and the cleanup.
const RUN_INVOCATIONS: u64 = 4;

/// The least runtime worth launching an attempt for: an attempt the cap cannot give this much
/// is not launched (and a run whose first attempts cannot each have it is refused).
pub const MIN_USEFUL_RUNTIME_SECONDS: u64 = 60;

/// What the AwaitCompletion timeout allows past a granted runtime: the job's grace after
/// SIGTERM (systemd's `TimeoutStopSec` is 115 s), the last checkpoint save and the report.
/// The timeout is the backstop of a worker that does not stop itself.
pub const STOP_ALLOWANCE_SECONDS: u64 = 180;

/// One attempt's worst case, term by term, as the refusal, the report and `ephemera validate`
/// show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptWorstCase {
    /// The dearest candidate, whose On-Demand price bounds every candidate and both markets.
    pub instance_type: String,
    /// Its On-Demand price in `region`, in USD per hour.
    pub usd_per_hour: f64,
    /// `limits.boot_timeout_seconds`.
    pub boot_seconds: u64,
    /// The runtime counted: `limits.max_runtime_seconds`, or less when the cap grants less
    /// ([`grant`]).
    pub runtime_seconds: u64,
    /// `limits.max_runtime_seconds`.
    #[serde(default)]
    pub max_runtime_seconds: u64,
    /// The region the prices are for.
    #[serde(default)]
    pub region: String,
    /// The deadline's grace past the limits: the stop and the teardown.
    pub grace_seconds: u64,
    /// One sweeper interval past the deadline.
    pub sweeper_seconds: u64,
    /// The instance for `billed_seconds` at `usd_per_hour`, in USD.
    pub compute_usd: f64,
    /// The root volume (`worker.volume_gib` of gp3) as long.
    pub ebs_usd: f64,
    /// [`MAX_SHIPPED_BYTES`] at [`LOGS_USD_PER_GB_BOUND`].
    pub logs_usd: f64,
    /// The attempt's transitions and invocations (its boot polls at their most).
    pub orchestration_usd: f64,
    /// The sum.
    pub usd: f64,
}

impl AttemptWorstCase {
    /// The seconds an attempt's instance can be billed.
    pub fn billed_seconds(&self) -> u64 {
        self.boot_seconds + self.runtime_seconds + self.grace_seconds + self.sweeper_seconds
    }

    /// Whether the runtime counted is less than `limits.max_runtime_seconds`: the cap's grant.
    pub fn capped(&self) -> bool {
        self.runtime_seconds < self.max_runtime_seconds
    }

    /// The same attempt with `runtime_seconds` of runtime.
    pub fn with_runtime(&self, spec: &RunSpec, runtime_seconds: u64) -> AttemptWorstCase {
        worst_case_for(
            spec,
            &self.instance_type,
            self.usd_per_hour,
            &self.region,
            runtime_seconds,
        )
    }

    /// The terms, in words, for an error or a report.
    pub fn terms(&self) -> String {
        let runtime = match self.capped() {
            true => format!(
                "a runtime of {} (limits.max_runtime_seconds {})",
                self.runtime_seconds, self.max_runtime_seconds
            ),
            false => format!("limits.max_runtime_seconds {}", self.runtime_seconds),
        };
        format!(
            "{} at ${}/h for {} s (limits.boot_timeout_seconds {} + {runtime} + stop and teardown {} + one sweeper interval {}) ${:.4}, EBS ${:.4}, logs (at most {} MiB shipped) ${:.4}, orchestration ${:.4}",
            self.instance_type,
            self.usd_per_hour,
            self.billed_seconds(),
            self.boot_seconds,
            self.grace_seconds,
            self.sweeper_seconds,
            self.compute_usd,
            self.ebs_usd,
            MAX_SHIPPED_BYTES / (1024 * 1024),
            self.logs_usd,
            self.orchestration_usd,
        )
    }
}

/// EBS, Step Functions and Lambda prices are us-east-1's: elsewhere they are bounded by the
/// regional uplift, as the fallback price table's are.
fn regional(region: &str) -> f64 {
    if region == PRICES_REGION {
        1.0
    } else {
        REGIONAL_UPLIFT_BOUND
    }
}

fn lambda_usd(invocations: u64, timeout_seconds: f64) -> f64 {
    let tries = invocations as f64 * BILLED_TRIES;
    tries
        * (LAMBDA_USD_PER_REQUEST
            + LAMBDA_MEMORY_GB * timeout_seconds * LAMBDA_ARM_USD_PER_GB_SECOND)
}

/// The most one attempt of one worker can bill, with `dearest` the dearest candidate and its
/// On-Demand price in `region`.
pub fn attempt_worst_case(
    spec: &RunSpec,
    dearest: &str,
    usd_per_hour: f64,
    region: &str,
) -> AttemptWorstCase {
    worst_case_for(
        spec,
        dearest,
        usd_per_hour,
        region,
        spec.limits.max_runtime_seconds,
    )
}

/// [`attempt_worst_case`] with `runtime` seconds of runtime in place of the limit's.
fn worst_case_for(
    spec: &RunSpec,
    dearest: &str,
    usd_per_hour: f64,
    region: &str,
    runtime: u64,
) -> AttemptWorstCase {
    let boot = spec.limits.boot_timeout_seconds;
    let billed = boot + runtime + DEADLINE_GRACE_SECONDS + SWEEPER_INTERVAL_SECONDS;
    let secs = (billed as i64).max(cost::MINIMUM_BILLED_SECONDS);
    let polls = boot / spec.waits.boot_poll_seconds.max(1) + 1;
    // A launch refused for vCPU quota waits and launches again (`crate::vcpus`): up to
    // LAUNCH_QUOTA_WAITS more launches, each with its two Pass states and its Wait (a worker's
    // waits are counted with each of its attempts: more than it can make, never less).
    let quota_waits = u64::from(crate::vcpus::LAUNCH_QUOTA_WAITS);
    let transitions =
        ATTEMPT_TRANSITIONS + polls * POLL_TRANSITIONS + quota_waits * QUOTA_WAIT_TRANSITIONS;
    let orchestration = (transitions as f64 * SFN_USD_PER_TRANSITION
        + lambda_usd(polls + 1, HEALTH_CHECK_TIMEOUT_SECONDS)
        + lambda_usd(1 + quota_waits, LAUNCH_WORKER_TIMEOUT_SECONDS)
        + lambda_usd(1, TERMINATE_TIMEOUT_SECONDS))
        * regional(region);
    let compute = cost::on_demand_cost(usd_per_hour, secs);
    let ebs = cost::ebs_cost(spec.worker.volume_gib, secs) * regional(region);
    let logs = MAX_SHIPPED_BYTES as f64 / 1e9 * LOGS_USD_PER_GB_BOUND;
    AttemptWorstCase {
        instance_type: dearest.to_string(),
        usd_per_hour,
        boot_seconds: boot,
        runtime_seconds: runtime,
        max_runtime_seconds: spec.limits.max_runtime_seconds,
        region: region.to_string(),
        grace_seconds: DEADLINE_GRACE_SECONDS,
        sweeper_seconds: SWEEPER_INTERVAL_SECONDS,
        compute_usd: cost::usd(compute),
        ebs_usd: cost::usd(ebs),
        logs_usd: cost::usd(logs),
        orchestration_usd: cost::usd(orchestration),
        usd: cost::usd(compute + ebs + logs + orchestration),
    }
}

/// The run's own orchestration, counted once: every quota and snapshot poll at its most
/// (`RunSpec::poll_bounds`) and the states every run passes through.
pub fn run_overhead(spec: &RunSpec, region: &str) -> f64 {
    let b = spec.poll_bounds();
    let polls = b.quota + b.snapshot;
    let usd = (RUN_TRANSITIONS + polls * POLL_TRANSITIONS) as f64 * SFN_USD_PER_TRANSITION
        + lambda_usd(polls, QUOTA_CHECK_TIMEOUT_SECONDS)
        + lambda_usd(RUN_INVOCATIONS, TERMINATE_TIMEOUT_SECONDS);
    cost::usd(usd * regional(region))
}

/// The cap and what a run holds against it: its own overhead and the attempts reserved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cap {
    /// `limits.budget_usd`.
    pub budget_usd: f64,
    /// [`run_overhead`].
    pub overhead_usd: f64,
}

impl Cap {
    /// The run's cap (`limits.budget_usd`) and its overhead in `region`.
    pub fn of(spec: &RunSpec, region: &str) -> Cap {
        Cap {
            budget_usd: spec.limits.budget_usd,
            overhead_usd: run_overhead(spec, region),
        }
    }

    /// What is left for attempts once `reserved_usd` of them are reserved.
    pub fn remainder(&self, reserved_usd: f64) -> f64 {
        cost::usd(self.budget_usd - self.overhead_usd - reserved_usd)
    }

    /// The most the run's attempts may already hold for one more of `attempt_usd` to fit: the
    /// ledger's condition on the run's counter. Every amount is at the report's rounding, so a
    /// budget of exactly N attempts admits N, here and in DynamoDB's decimal arithmetic alike.
    pub fn room_for(&self, attempt_usd: f64) -> f64 {
        cost::usd(self.remainder(0.0) - cost::usd(attempt_usd))
    }

    /// Whether one more attempt of `attempt_usd` fits beside `reserved_usd` already reserved.
    pub fn admits(&self, reserved_usd: f64, attempt_usd: f64) -> bool {
        cost::usd(reserved_usd) <= self.room_for(attempt_usd)
    }
}

/// The attempt `room_usd` buys: its whole worst case when that fits, else the longest runtime
/// whose worst case fits (the boot deadline, the grace and the sweeper interval are paid for
/// first), or `None` when that is under [`MIN_USEFUL_RUNTIME_SECONDS`].
pub fn grant(spec: &RunSpec, worst: &AttemptWorstCase, room_usd: f64) -> Option<AttemptWorstCase> {
    let fits = |w: &AttemptWorstCase| cost::usd(w.usd) <= cost::usd(room_usd);
    let full = worst.with_runtime(spec, spec.limits.max_runtime_seconds);
    if fits(&full) {
        return Some(full);
    }
    let least = MIN_USEFUL_RUNTIME_SECONDS.min(spec.limits.max_runtime_seconds);
    let least_case = worst.with_runtime(spec, least);
    if !fits(&least_case) {
        return None;
    }
    // The worst case grows with the runtime: the longest that fits, by bisection over whole
    // seconds (`lo` always fits, `hi` never does).
    let (mut lo, mut hi) = (least, spec.limits.max_runtime_seconds);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match fits(&worst.with_runtime(spec, mid)) {
            true => lo = mid,
            false => hi = mid,
        }
    }
    Some(worst.with_runtime(spec, lo))
}

/// What one attempt may take of `remainder_usd` (what the cap leaves beside everything
/// reserved) when `unstarted` other workers have not launched their first attempt yet: an equal
/// share with them, so that the first worker to launch never leaves the others nothing.
pub fn share(remainder_usd: f64, unstarted: u32) -> f64 {
    cost::usd(remainder_usd.max(0.0) / f64::from(1 + unstarted))
}

/// The first admission, before any quota is asked for: every worker's first attempt (each an
/// equal share of the cap, [`grant`]: its whole worst case, or a runtime of at least
/// [`MIN_USEFUL_RUNTIME_SECONDS`] the share buys) and the run's overhead within the cap, or the
/// refusal's words (the least attempt's worst case and its terms).
pub fn first_admission(
    spec: &RunSpec,
    worst: &AttemptWorstCase,
    cap: &Cap,
) -> Result<f64, FirstRefusal> {
    let workers = f64::from(spec.worker.count);
    let each = share(cap.remainder(0.0), spec.worker.count - 1);
    if let Some(granted) = grant(spec, worst, each) {
        return Ok(cost::usd(workers * granted.usd + cap.overhead_usd));
    }
    let least = worst.with_runtime(
        spec,
        MIN_USEFUL_RUNTIME_SECONDS.min(spec.limits.max_runtime_seconds),
    );
    let each = match spec.worker.count {
        1 => String::new(),
        n => format!("{n} workers (worker.count) × ${:.4}, each ", least.usd),
    };
    Err(FirstRefusal {
        worst_case_usd: cost::usd(workers * least.usd + cap.overhead_usd),
        detail: format!(
            "{each}{}; the run's own orchestration ${:.4}",
            least.terms(),
            cap.overhead_usd
        ),
    })
}

/// Why a run is refused before anything: its first attempts' worst case, and its terms.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstRefusal {
    /// What every worker's least attempt (a runtime of [`MIN_USEFUL_RUNTIME_SECONDS`]) and the
    /// run's overhead would cost together, in USD: more than `limits.budget_usd`.
    pub worst_case_usd: f64,
    /// The worst case in words: the workers, the least attempt's terms and the run's own
    /// orchestration.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> RunSpec {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "run_id": "r",
            "worker": {"instance_types": ["c7g.4xlarge"], "subnets": ["subnet-1"],
                       "security_groups": ["sg-1"], "image": "ami-1", "volume_gib": 30,
                       "artifact": "s3://bkt/w"},
            "limits": {"boot_timeout_seconds": 600, "max_runtime_seconds": 3600,
                       "budget_usd": 10.0, "max_relaunches": 2},
            "waits": {"boot_poll_seconds": 20, "quota_poll_min_seconds": 60,
                      "quota_poll_max_seconds": 600},
            "quota": {"max_wait_seconds": 3600}
        })
    }

    #[test]
    fn an_attempt_is_billed_for_its_boot_runtime_grace_and_one_sweep() {
        let s = spec(base());
        let w = attempt_worst_case(&s, "c7g.4xlarge", 0.58, "us-east-1");
        // 600 + 3600 + 900 + 900 = 6000 s.
        assert_eq!(w.billed_seconds(), 6000);
        // 0.58 $/h × 6000 s / 3600 = 0.966667.
        assert_eq!(w.compute_usd, 0.966667);
        // 30 GiB × 0.08 $/GiB-month × 6000 s / (730 × 3600 s) = 0.005479.
        assert_eq!(w.ebs_usd, 0.005479);
        // 16 MiB = 16,777,216 bytes at 1 $/GB.
        assert_eq!(w.logs_usd, 0.016777);
        // 600 / 20 + 1 = 31 boot polls and 6 waits for vCPU quota at launch: 12 + 93 + 24 =
        // 129 transitions at 0.000025 = 0.003225; 4 tries of 32 health checks of 7.5 GB-s, of
        // seven launches (the first and one after each wait) of 37.5 GB-s and of one release of
        // 15 GB-s: 160 requests (0.000032) and 4 × 517.5 = 2070 GB-s (× 0.0000133334 =
        // 0.027600138); 0.030857138 in all.
        assert_eq!(w.orchestration_usd, 0.030857);
        assert_eq!(
            w.usd,
            cost::usd(
                0.58 * 6000.0 / 3600.0
                    + 30.0 * 0.08 * 6000.0 / 2_628_000.0
                    + 0.016777216
                    + 0.030857138
            )
        );
        // Outside the price table's region EBS and orchestration are bounded by the uplift; the
        // instance's price is the caller's (the Price List's, or the table's with the uplift).
        let far = attempt_worst_case(&s, "c7g.4xlarge", 0.58, "sa-east-1");
        assert_eq!(far.compute_usd, w.compute_usd);
        assert_eq!(far.ebs_usd, cost::usd(0.005479452 * 1.6));
        assert!(far.usd > w.usd);
        assert!(
            w.terms()
                .contains("6000 s (limits.boot_timeout_seconds 600"),
            "{}",
            w.terms()
        );
    }

    #[test]
    fn the_issues_example_is_refused_whole() {
        // 40 × r7i.48xlarge (12.7008 $/h), max runtime 60 s, boot 7200 s, budget $10: counted
        // at its runtime alone it was admitted at about $8.5; its worst case is the boot too.
        let mut v = base();
        v["worker"]["instance_types"] = serde_json::json!(["r7i.48xlarge"]);
        v["worker"]["count"] = serde_json::json!(40);
        v["limits"]["max_runtime_seconds"] = serde_json::json!(60);
        v["limits"]["boot_timeout_seconds"] = serde_json::json!(7200);
        v["limits"]["heartbeat_seconds"] = serde_json::json!(30);
        v["waits"]["boot_poll_seconds"] = serde_json::json!(60);
        let s = spec(v);
        let w = attempt_worst_case(&s, "r7i.48xlarge", 12.7008, "us-east-1");
        // 7200 + 60 + 900 + 900 = 9060 s at 12.7008 $/h = 31.96368.
        assert_eq!(w.compute_usd, 31.96368);
        let cap = Cap::of(&s, "us-east-1");
        let refused = first_admission(&s, &w, &cap).unwrap_err();
        assert!(refused.worst_case_usd > 40.0 * 31.96368, "{refused:?}");
        assert!(
            refused.detail.starts_with("40 workers (worker.count) × $"),
            "{}",
            refused.detail
        );
        assert!(
            refused.detail.contains("limits.boot_timeout_seconds 7200"),
            "{}",
            refused.detail
        );
    }

    #[test]
    fn the_remainder_admits_exactly_what_fits() {
        let cap = Cap {
            budget_usd: 10.0,
            overhead_usd: 0.5,
        };
        // 9.5 left: three attempts of 3.0 fit, a fourth does not.
        assert_eq!(cap.remainder(0.0), 9.5);
        assert!(cap.admits(0.0, 3.0));
        assert!(cap.admits(6.0, 3.0));
        assert!(!cap.admits(9.0, 3.0));
        // A budget of exactly two attempts admits two, even with float noise.
        let cap = Cap {
            budget_usd: 0.1 + 0.2,
            overhead_usd: 0.0,
        };
        assert!(cap.admits(0.1, 0.2));
        assert!(!cap.admits(0.1, 0.200002));
    }

    #[test]
    fn a_run_whose_first_attempts_fit_is_admitted_with_its_overhead() {
        let s = spec(base());
        let w = attempt_worst_case(&s, "c7g.4xlarge", 0.58, "us-east-1");
        let cap = Cap::of(&s, "us-east-1");
        assert!(cap.overhead_usd > 0.0 && cap.overhead_usd < 0.05, "{cap:?}");
        assert_eq!(
            first_admission(&s, &w, &cap),
            Ok(cost::usd(w.usd + cap.overhead_usd))
        );
        // Less than the whole worst case: admitted for the runtime it buys.
        let shorter = Cap {
            budget_usd: w.usd + cap.overhead_usd - 0.001,
            ..cap
        };
        assert!(first_admission(&s, &w, &shorter).is_ok());
        // Less than a minute's attempt: refused.
        let least = w.with_runtime(&s, MIN_USEFUL_RUNTIME_SECONDS);
        let tight = Cap {
            budget_usd: least.usd + cap.overhead_usd - 0.001,
            ..cap
        };
        let refused = first_admission(&s, &w, &tight).unwrap_err();
        assert!(
            !refused.detail.contains("workers (worker.count)"),
            "{}",
            refused.detail
        );
        assert!(
            refused.detail.contains("the run's own orchestration"),
            "{}",
            refused.detail
        );
    }

    #[test]
    fn the_cap_grants_the_longest_runtime_it_can_buy_and_no_less_than_a_minute() {
        let s = spec(base());
        let w = attempt_worst_case(&s, "c7g.4xlarge", 0.58, "us-east-1");
        // Room for the whole worst case: the whole runtime.
        assert_eq!(grant(&s, &w, w.usd).unwrap(), w);
        assert!(!w.capped());
        // Room for half the runtime: boot 600 + grace 900 + sweeper 900 are paid first, then
        // the runtime at 0.58 $/h (and the EBS beside it). The grant is the longest whole
        // second that fits, and one more second would not.
        let half = w.with_runtime(&s, 1800);
        let g = grant(&s, &w, half.usd).unwrap();
        assert!(g.capped());
        assert!((1799..=1800).contains(&g.runtime_seconds), "{g:?}");
        assert!(g.usd <= half.usd);
        assert!(w.with_runtime(&s, g.runtime_seconds + 1).usd > half.usd);
        assert!(g.terms().contains(&format!(
            "a runtime of {} (limits.max_runtime_seconds 3600)",
            g.runtime_seconds
        )));
        // A minute is the least worth launching: less room than that buys nothing.
        let minute = w.with_runtime(&s, MIN_USEFUL_RUNTIME_SECONDS);
        assert_eq!(grant(&s, &w, minute.usd).unwrap().runtime_seconds, 60);
        assert_eq!(grant(&s, &w, minute.usd - 0.000002), None);
        assert_eq!(grant(&s, &w, 0.0), None);
        assert_eq!(grant(&s, &w, -1.0), None);
        // Half the runtime: 600 + 1800 + 900 + 900 s at 0.58 $/h is 0.676667 of compute.
        assert_eq!(half.billed_seconds(), 4200);
        assert_eq!(half.compute_usd, 0.676667);
    }

    #[test]
    fn workers_not_yet_launched_keep_an_equal_share() {
        assert_eq!(share(9.0, 0), 9.0);
        assert_eq!(share(9.0, 2), 3.0);
        assert_eq!(share(-1.0, 2), 0.0);
        // Three workers launched in turn, each the share of what the others left: equal.
        let first = share(9.0, 2);
        let second = share(9.0 - first, 1);
        let third = share(9.0 - first - second, 0);
        assert_eq!((first, second, third), (3.0, 3.0, 3.0));
    }

    #[test]
    fn a_run_whose_cap_buys_less_than_its_runtime_is_admitted_for_what_it_buys() {
        let mut v = base();
        v["worker"]["count"] = serde_json::json!(2);
        let s = spec(v);
        let w = attempt_worst_case(&s, "c7g.4xlarge", 0.58, "us-east-1");
        let cap = Cap::of(&s, "us-east-1");
        // Two workers, each with room for a 1,000 s runtime.
        let each = w.with_runtime(&s, 1000);
        let tight = Cap {
            budget_usd: cap.overhead_usd + 2.0 * each.usd,
            ..cap
        };
        let first = first_admission(&s, &w, &tight).unwrap();
        assert!(first <= cost::usd(tight.budget_usd), "{first}");
        assert_eq!(
            grant(&s, &w, share(tight.remainder(0.0), 1))
                .unwrap()
                .runtime_seconds,
            1000
        );
        // Under a minute each: refused, naming the least attempt.
        let least = w.with_runtime(&s, MIN_USEFUL_RUNTIME_SECONDS);
        let short = Cap {
            budget_usd: cap.overhead_usd + 2.0 * least.usd - 0.00001,
            ..cap
        };
        let refused = first_admission(&s, &w, &short).unwrap_err();
        assert!(
            refused
                .detail
                .contains("a runtime of 60 (limits.max_runtime_seconds 3600)"),
            "{}",
            refused.detail
        );
    }
}

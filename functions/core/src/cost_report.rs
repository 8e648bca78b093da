//! The cost report's figures: each instance priced from what terminate-with-cost-report read of
//! it, the run's phases and totals. The handler reads, terminates and sends; this decides.

use chrono::{DateTime, Utc};

use crate::caps;
use crate::catalog;
use crate::cost::{self, Orchestration, PricePoint};
use crate::instance_state::InstanceState;
use crate::market::Market;
use crate::quota::{QuotaState, QuotaVerdict};
use crate::report::{AttemptCost, CostReport, Outcome, Phases, WorkerLine};
use crate::rundoc::{failure_for, Attempt, CaughtError, WorkerEnd};
use crate::runspec::RunSpec;
use crate::snapshot::SnapshotState;
use crate::verify::Verification;

/// The Spot price history of an instance's type and zone over its life, as far as it was read.
#[derive(Debug, Clone, PartialEq)]
pub enum SpotHistory {
    /// Not a Spot instance (or its zone is unknown): priced On-Demand.
    NotAsked,
    /// The history could not be read: why.
    Unreadable(String),
    /// The history as DescribeSpotPriceHistory returned it (empty when AWS had none).
    Read(Vec<PricePoint>),
}

/// What was read of one instance of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceFacts {
    /// Which of the run's workers it served: its `ephemera:worker` tag, else the run document.
    pub worker: u32,
    /// Which of its worker's launches it was: its `ephemera:attempt` tag, else the run document.
    pub attempt: u32,
    /// The EC2 instance id.
    pub instance_id: String,
    /// The EC2 instance type.
    pub instance_type: String,
    /// Spot or On-Demand, as EC2 describes it.
    pub market: Market,
    /// Its availability zone, as EC2 describes it.
    pub availability_zone: Option<String>,
    /// EC2's launch time (else the run document's, else now).
    pub launched_at: DateTime<Utc>,
    /// When its terminating transition happened, or now when this call terminated it.
    pub ended_at: DateTime<Utc>,
    /// Its root volume's size in GiB, as launched (else the RunSpec's `worker.volume_gib`).
    pub volume_gib: u32,
    /// Its state before terminate-with-cost-report acted (None: unknown to this code).
    pub state_before: Option<InstanceState>,
    /// The type's On-Demand price per hour and where it came from; None for a type no source
    /// knows.
    pub on_demand: Option<(f64, String)>,
    /// The Spot price history over its life, for a Spot instance.
    pub spot: SpotHistory,
    /// How its launch ordered the candidates (the run document's attempt).
    pub placement: Option<String>,
}

/// The instance's cost, and a note when its price had to be estimated. Pricing never fails the
/// report: a run that finished stays finished, and a price that could not be read is estimated
/// and said so.
pub fn price(f: &InstanceFacts) -> (AttemptCost, Option<String>) {
    let billed = cost::billed_seconds(f.launched_at, f.ended_at);
    let (od_hourly, od_source) = f
        .on_demand
        .clone()
        .unwrap_or((0.0, "unknown type: not priced".to_string()));
    let on_demand_usd = cost::on_demand_cost(od_hourly, billed);
    let az = f.availability_zone.as_deref().unwrap_or("?");
    let (compute_usd, source, note) = match &f.spot {
        SpotHistory::NotAsked => (on_demand_usd, od_source, None),
        SpotHistory::Unreadable(why) => (
            on_demand_usd,
            format!("estimated: {od_source}"),
            Some(format!(
                "{}: Spot price history unavailable ({why}); compute estimated at On-Demand ({od_source})",
                f.instance_id
            )),
        ),
        SpotHistory::Read(h) => match cost::spot_cost(h, f.launched_at, billed) {
            Some(c) => (c, "spot-price-history".to_string(), None),
            None => (
                on_demand_usd,
                od_source.clone(),
                Some(format!(
                    "{}: no Spot price history for {} in {az}; priced at On-Demand ({od_source})",
                    f.instance_id, f.instance_type
                )),
            ),
        },
    };
    let ebs_usd = cost::ebs_cost(f.volume_gib, billed);
    let attempt = AttemptCost {
        worker: f.worker,
        attempt: f.attempt,
        instance_id: f.instance_id.clone(),
        instance_type: f.instance_type.clone(),
        market: f.market,
        availability_zone: f.availability_zone.clone(),
        launched_at: f.launched_at,
        ended_at: f.ended_at,
        billed_seconds: billed,
        compute_usd: cost::usd(compute_usd),
        ebs_usd: cost::usd(ebs_usd),
        on_demand_equivalent_usd: cost::usd(on_demand_usd + ebs_usd),
        average_usd_per_hour: cost::usd(compute_usd * 3600.0 / billed as f64),
        // Both may quote AWS: cut to what the run document plans for (crate::payload).
        price_source: caps::cap(&source, caps::DETAIL_KEPT),
        state_before: f.state_before,
        placement: f
            .placement
            .as_deref()
            .map(|l| caps::cap(l, crate::placement::LINE_KEPT)),
    };
    (attempt, note.map(|n| caps::cap(&n, caps::NOTE_KEPT)))
}

/// How long after its worker's iteration ended an instance may still be billed: its worker's
/// unit stops (systemd's `TimeoutStopSec`, 115 s), then its `ExecStopPost` shuts the instance
/// down three minutes later (`crate::userdata`), and the shutdown itself takes at most systemd's
/// default 90 s a unit. EC2 stops billing an instance once it is shutting down.
pub const AFTER_ITERATION_SECONDS: i64 = 115 + 180 + 90;

/// Spot's interruption notice: EC2 ends a reclaimed instance within two minutes of it, and the
/// relaunch that follows a reclaim comes after the notice.
pub const SPOT_NOTICE_SECONDS: i64 = 120;

/// The latest an attempt that EC2 no longer describes can have ended, and why. EC2 keeps a
/// terminated instance visible for about an hour
/// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstances.html>): a
/// worker that finished or was reclaimed long before the report is gone from it, and is billed
/// to this bound (never under-billed; over by at most the bound's slack), never left out.
/// `attempts` are its worker's, `released` what its release terminated, `iteration_end` when
/// its worker's iteration ended (the history's WorkerReported, WorkerLost or
/// WorkerLostUnreleased).
pub fn vanished_end(
    attempts: &[Attempt],
    released: &[String],
    attempt: u32,
    iteration_end: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, String) {
    let this = attempts.iter().find(|a| a.attempt == attempt);
    let next = attempts.iter().find(|a| a.attempt == attempt + 1);
    let was_released = this.is_some_and(|a| released.contains(&a.instance_id));
    let secs = chrono::Duration::seconds;
    let (bound, why) = match (next, was_released, iteration_end) {
        (Some(n), _, _) => (
            n.launched_at + secs(SPOT_NOTICE_SECONDS),
            format!(
                "its relaunch at {} came after a Spot notice, which ends the instance within two minutes",
                n.launched_at.format("%H:%M:%S")
            ),
        ),
        (None, true, Some(t)) => (
            t,
            format!(
                "released when its worker was lost, by {}",
                t.format("%H:%M:%S")
            ),
        ),
        (None, false, Some(t)) => (
            t + secs(AFTER_ITERATION_SECONDS),
            format!(
                "its worker ended at {}, and its instance shuts itself down within {} s",
                t.format("%H:%M:%S"),
                AFTER_ITERATION_SECONDS
            ),
        ),
        (None, _, None) => (now, "no end is known: billed to the report".to_string()),
    };
    let floor = this.map_or(bound, |a| a.launched_at);
    (bound.min(now).max(floor), why)
}

/// When the run's parts happened, as far as they are known.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// When the execution started (from its input or history).
    pub started_at: Option<DateTime<Utc>>,
    /// When terminate-with-cost-report began terminating, and how long that took.
    pub teardown_start: DateTime<Utc>,
    /// Seconds terminate-with-cost-report took to terminate.
    pub teardown_seconds: i64,
    /// When the report is made: the phases' and the run's end.
    pub now: DateTime<Utc>,
}

/// The phases: the quota wait, boot (the first worker to become healthy: its launch to then),
/// work (from then to teardown), teardown, and the whole.
pub fn phases(
    quota: Option<&QuotaState>,
    ends: &[WorkerEnd],
    attempts: &[AttemptCost],
    t: &Timing,
) -> Phases {
    let first_launch = attempts.iter().map(|a| a.launched_at).min();
    let quota_wait = quota
        .filter(|q| q.verdict == QuotaVerdict::Enough)
        .map(|q| (q.checked_at - q.started_at).num_seconds())
        .unwrap_or(0);
    let first_healthy = ends
        .iter()
        .filter_map(|e| {
            let healthy = e.health.as_ref()?.healthy_at?;
            Some((healthy, e.worker.as_ref()?.current()?.launched_at))
        })
        .min();
    let boot = match first_healthy {
        Some((h, launched)) => (h - launched).num_seconds().max(0),
        None => first_launch.map_or(0, |l| (t.teardown_start - l).num_seconds().max(0)),
    };
    let work = first_healthy.map_or(0, |(h, _)| (t.teardown_start - h).num_seconds().max(0));
    let total = t
        .started_at
        .or(quota.map(|q| q.started_at))
        .or(first_launch)
        .map_or(0, |s| (t.now - s).num_seconds().max(0));
    Phases {
        quota_wait_seconds: quota_wait,
        boot_seconds: boot,
        work_seconds: work,
        teardown_seconds: t.teardown_seconds,
        total_seconds: total,
    }
}

/// Everything the report is made of.
pub struct Parts<'a> {
    /// The run's RunSpec.
    pub spec: &'a RunSpec,
    /// The Step Functions execution's ARN.
    pub execution: &'a str,
    /// The error the run ended with (`$.error`); None when it succeeded.
    pub error: Option<&'a CaughtError>,
    /// quota-check's state (`$.quota`), for the quota wait; None when the run ended before it.
    pub quota: Option<&'a QuotaState>,
    /// Every worker's end (`$.workers`).
    pub ends: &'a [WorkerEnd],
    /// Every instance priced, with the notes pricing made.
    pub priced: Vec<(AttemptCost, Option<String>)>,
    /// None when the execution history could not be read.
    pub orchestration: Option<Orchestration>,
    /// What this call terminated.
    pub terminated: Vec<String>,
    /// When the run's parts happened.
    pub timing: Timing,
    /// verify-completion's checks (`$.verification`), when the run got to them.
    pub verification: Option<&'a Verification>,
    /// The snapshot taken before the workers wrote (`database.snapshot_before`), if any.
    pub snapshot: Option<&'a SnapshotState>,
}

/// The report: totals from the priced instances and the orchestration, the workers, the
/// phases, what was terminated (here and by the lost workers' releases) and the notes.
pub fn assemble(p: Parts<'_>) -> CostReport {
    let mut notes = vec![];
    let mut attempts = vec![];
    for (a, note) in p.priced {
        attempts.push(a);
        notes.extend(note);
    }
    attempts.sort_by_key(|a| (a.worker, a.attempt, a.launched_at));
    let orchestration = p.orchestration.unwrap_or_else(|| {
        notes.push("the execution history could not be read; orchestration not priced".into());
        Orchestration::default()
    });
    let sum = |f: fn(&AttemptCost) -> f64| attempts.iter().fold(0.0, |s, a| s + f(a));
    let compute = sum(|a| a.compute_usd);
    let ebs = sum(|a| a.ebs_usd);
    let on_demand = sum(|a| a.on_demand_equivalent_usd);
    let estimate = p
        .ends
        .iter()
        .filter_map(|e| e.worker.as_ref())
        .flat_map(|w| w.attempts.iter())
        .fold(0.0, |s, a| s + a.estimate_usd);
    let mut terminated = p.terminated;
    for r in p.ends.iter().filter_map(|e| e.released.as_ref()) {
        terminated.extend(r.terminated.iter().cloned());
    }
    terminated.sort();
    terminated.dedup();
    if attempts.is_empty() {
        notes.push("nothing was launched".into());
    }
    notes.push(format!(
        "EBS gp3 at ${}/GiB-month; fallback prices as of {}",
        catalog::GP3_USD_PER_GIB_MONTH,
        catalog::PRICES_AS_OF
    ));
    CostReport {
        run_id: p.spec.run_id.clone(),
        execution: p.execution.to_string(),
        outcome: Outcome::of(p.error),
        error: p.error.cloned(),
        failure: p.error.map(failure_for),
        estimate_usd: estimate,
        budget_usd: p.spec.limits.budget_usd,
        actual_usd: cost::usd(compute + ebs + orchestration.usd),
        compute_usd: cost::usd(compute),
        ebs_usd: cost::usd(ebs),
        on_demand_equivalent_usd: cost::usd(on_demand + orchestration.usd),
        savings_usd: cost::usd(on_demand - compute - ebs),
        orchestration,
        workers: p
            .ends
            .iter()
            .map(|e| WorkerLine {
                slot: e.slot,
                attempts: e.worker.as_ref().map_or(0, |w| w.attempts.len() as u32),
                reported: e.result.is_some(),
                error: e.error.as_ref().map(failure_for),
                // A job's retries ran on its last instance, at its rate.
                work: e.result.as_ref().and_then(|r| {
                    let rate = attempts
                        .iter()
                        .filter(|a| a.worker == e.slot)
                        .max_by_key(|a| a.attempt)
                        .map(|a| a.average_usd_per_hour);
                    WorkerLine::work_of(r, rate)
                }),
            })
            .collect(),
        phases: phases(p.quota, p.ends, &attempts, &p.timing),
        attempts,
        terminated,
        generated_at: p.timing.now,
        notes,
        verification: p.verification.cloned(),
        stored: None,
        month_page: None,
        snapshot: p.snapshot.cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rundoc::{HealthState, HealthVerdict, Released, WorkerState};
    use chrono::{Duration, TimeZone};

    fn at(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap() + Duration::seconds(s)
    }

    /// An On-Demand attempt 1 of `id`, launched at `at(0)`.
    fn attempt_of(id: &str) -> Attempt {
        Attempt {
            attempt: 1,
            instance_id: id.into(),
            instance_type: "c7g.4xlarge".into(),
            subnet: "s".into(),
            availability_zone: None,
            market: Market::OnDemand,
            launched_at: at(0),
            client_token: "t".into(),
            estimate_usd: 1.5,
            volume_gib: 30,
            tried: vec![],
            tried_total: 0,
            reused: false,
            placement: None,
        }
    }

    fn facts(id: &str, worker: u32, market: Market, spot: SpotHistory) -> InstanceFacts {
        InstanceFacts {
            worker,
            attempt: 1,
            instance_id: id.into(),
            instance_type: "c7g.4xlarge".into(),
            market,
            availability_zone: Some("us-east-1a".into()),
            launched_at: at(0),
            ended_at: at(3600),
            volume_gib: 30,
            state_before: Some(InstanceState::Running),
            on_demand: Some((0.58, "price-list-api".into())),
            spot,
            placement: None,
        }
    }

    #[test]
    fn an_hour_is_priced_from_the_spot_history_or_estimated_and_said_so() {
        let read = SpotHistory::Read(vec![PricePoint {
            at: at(-60),
            usd_per_hour: 0.2,
        }]);
        let (a, note) = price(&facts("i-1", 1, Market::Spot, read));
        assert_eq!(
            (a.compute_usd, a.price_source.as_str()),
            (0.2, "spot-price-history")
        );
        assert_eq!(note, None);
        // 30 GiB for an hour at $0.08/GiB-month (730 h).
        assert!((a.ebs_usd - cost::usd(30.0 * 0.08 / 730.0)).abs() < 1e-6);

        let (a, note) = price(&facts(
            "i-2",
            1,
            Market::Spot,
            SpotHistory::Unreadable("denied".into()),
        ));
        assert_eq!(a.compute_usd, 0.58);
        assert!(a.price_source.starts_with("estimated: "));
        assert!(note
            .unwrap()
            .contains("i-2: Spot price history unavailable (denied)"));

        let (a, note) = price(&facts("i-3", 1, Market::Spot, SpotHistory::Read(vec![])));
        assert_eq!(a.compute_usd, 0.58);
        assert!(note.unwrap().contains("no Spot price history"));

        let mut unknown = facts("i-4", 1, Market::OnDemand, SpotHistory::NotAsked);
        unknown.on_demand = None;
        let (a, _) = price(&unknown);
        assert_eq!(
            (a.compute_usd, a.price_source.as_str()),
            (0.0, "unknown type: not priced")
        );
    }

    #[test]
    fn an_instance_ec2_no_longer_describes_is_billed_to_the_latest_it_can_have_ended() {
        let attempt = |n: u32, id: &str, launched: i64| Attempt {
            attempt: n,
            market: Market::Spot,
            launched_at: at(launched),
            ..attempt_of(id)
        };
        let now = at(20_000);
        let two = vec![attempt(1, "i-1", 0), attempt(2, "i-2", 3600)];
        // Reclaimed, then relaunched at 3600 s: gone within the notice's two minutes.
        let (bound, why) = vanished_end(&two, &[], 1, Some(at(7200)), now);
        assert_eq!(bound, at(3600 + SPOT_NOTICE_SECONDS));
        assert!(why.contains("relaunch at 13:00:00"), "{why}");
        // Its worker ended at 7200 s: the unit's stop and the delayed shutdown follow.
        let (bound, why) = vanished_end(&two, &[], 2, Some(at(7200)), now);
        assert_eq!(bound, at(7200 + AFTER_ITERATION_SECONDS));
        assert!(why.contains("ended at 14:00:00"), "{why}");
        // Released when lost: terminated before its iteration ended.
        let one = vec![attempt(1, "i-1", 0)];
        let released = ["i-1".to_string()];
        assert_eq!(
            vanished_end(&one, &released, 1, Some(at(500)), now).0,
            at(500)
        );
        // Never past the report, never before its launch; no end known: the report.
        assert_eq!(
            vanished_end(&two, &[], 2, Some(at(7200)), at(7300)).0,
            at(7300)
        );
        assert_eq!(vanished_end(&one, &[], 1, None, now).0, now);
        let late = vec![attempt(1, "i-1", 900)];
        assert_eq!(
            vanished_end(&late, &released, 1, Some(at(500)), now).0,
            at(900)
        );
    }

    #[test]
    fn the_report_sums_every_worker_and_names_what_the_releases_terminated() {
        let spec = RunSpec::parse(&crate::runspec::tests::sample()).unwrap();
        let attempt = attempt_of;
        let state = |slot: u32, id: &str| WorkerState {
            slot,
            attempts: vec![attempt(id)],
            relaunches_left: 2,
            heartbeat_seconds: 60,
            timeout_seconds: 3600,
            budget_seconds: None,
            boot_poll_seconds: 5,
            token_parameter: String::new(),
            token_reader: String::new(),
        };
        let ends = vec![
            WorkerEnd {
                slot: 1,
                worker: Some(state(1, "i-1")),
                health: Some(HealthState {
                    verdict: HealthVerdict::Healthy,
                    instance_id: "i-1".into(),
                    detail: String::new(),
                    wait_seconds: 0,
                    checked_at: at(90),
                    healthy_at: Some(at(90)),
                }),
                result: Some(serde_json::json!({"partitions_done": 4})),
                error: None,
                released: None,
            },
            WorkerEnd {
                slot: 2,
                worker: Some(state(2, "i-2")),
                health: None,
                result: None,
                error: Some(CaughtError {
                    error: "States.HeartbeatTimeout".into(),
                    cause: None,
                }),
                released: Some(Released {
                    slot: 2,
                    terminated: vec!["i-2".into()],
                    error: None,
                }),
            },
        ];
        let priced = vec![
            price(&facts("i-2", 2, Market::OnDemand, SpotHistory::NotAsked)),
            price(&facts("i-1", 1, Market::OnDemand, SpotHistory::NotAsked)),
        ];
        let r = assemble(Parts {
            spec: &spec,
            execution: "arn:x",
            error: None,
            quota: None,
            ends: &ends,
            priced,
            orchestration: Some(Orchestration {
                usd: 0.01,
                ..Orchestration::default()
            }),
            terminated: vec!["i-1".into()],
            timing: Timing {
                started_at: Some(at(-10)),
                teardown_start: at(3600),
                teardown_seconds: 2,
                now: at(3602),
            },
            verification: None,
            snapshot: None,
        });
        assert_eq!(r.outcome, Outcome::Succeeded);
        assert_eq!(r.attempts[0].instance_id, "i-1", "in worker order");
        assert_eq!(r.compute_usd, 1.16);
        assert_eq!(r.actual_usd, cost::usd(1.16 + r.ebs_usd + 0.01));
        assert_eq!(r.estimate_usd, 3.0);
        assert_eq!(r.terminated, ["i-1", "i-2"]);
        assert_eq!(
            r.workers[1].error.as_ref().unwrap().error,
            "Worker.TimedOut"
        );
        assert!(r.workers[0].reported && !r.workers[1].reported);
        // Boot: worker 1's launch to its health; work: from then to the teardown.
        assert_eq!((r.phases.boot_seconds, r.phases.work_seconds), (90, 3510));
        assert_eq!(r.phases.total_seconds, 3612);
        assert!(!r.notes.iter().any(|n| n.contains("nothing was launched")));
    }
}

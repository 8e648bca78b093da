//! The run ledger and the monthly budget: each run's worst case is reserved when it launches and
//! replaced by what it cost when it ends; the guard refuses a run whose worst case would take the
//! calendar month (UTC) past the monthly budget, and an alert goes out when a run takes the month
//! past [`ALERT_FRACTION`] of it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The share of the monthly budget at which the operator is told.
pub const ALERT_FRACTION: f64 = 0.8;

/// The ledger's month of an instant: `YYYY-MM`, UTC.
pub fn month_of(t: DateTime<Utc>) -> String {
    t.format("%Y-%m").to_string()
}

/// The month before `month` (`YYYY-MM`), None for a month that does not parse.
pub fn month_before(month: &str) -> Option<String> {
    let (y, m) = month.split_once('-')?;
    let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
    if !(1..=12).contains(&m) {
        return None;
    }
    Some(match m {
        1 => format!("{:04}-12", y - 1),
        m => format!("{y:04}-{:02}", m - 1),
    })
}

/// The month a run is booked in: the month (UTC) its execution started, for every attempt it
/// makes, so that a relaunch after the month changed adds to the same entry and the same
/// month's counter, and the run's cost replaces its reservation there. Without the start (an
/// input from before it was passed), the month of the launch.
pub fn booked_month(started: Option<DateTime<Utc>>, launched: DateTime<Utc>) -> String {
    month_of(started.unwrap_or(launched))
}

/// Where a run's entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryState {
    /// Launched: its reservation counts.
    Running,
    /// Ended through the state machine: its actual cost counts.
    Ended,
    /// Its instances were terminated by the sweeper (the execution never cleaned up): the
    /// reservation keeps counting, since no cost was measured.
    Swept,
}

/// One run (one execution) in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The run's Step Functions execution ARN: one entry per execution.
    pub execution: String,
    /// The RunSpec's `run_id`.
    pub run_id: String,
    /// The month it is booked in (`YYYY-MM`, [`booked_month`]).
    pub month: String,
    /// The worst case of every attempt launched so far, over all the run's workers.
    pub reserved_usd: f64,
    /// That worst case by worker (`1..=worker.count`): each worker's launches write only their
    /// own, so workers launching side by side never overwrite each other's.
    #[serde(default)]
    pub workers: BTreeMap<u32, f64>,
    /// What the run cost (the report's `actual_usd`), once it ended through the state machine.
    #[serde(default)]
    pub actual_usd: Option<f64>,
    /// Where the entry stands: which of its amounts counts.
    pub state: EntryState,
    /// When its first launch reserved it (absent on entries written before this was kept).
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// How the run ended, when it ended through the state machine: SUCCEEDED or FAILED.
    #[serde(default)]
    pub outcome: Option<String>,
    /// Its Spot launches and their reclaims (`placement::history` reads them back).
    #[serde(default)]
    pub placements: Vec<crate::placement::Placed>,
}

impl Entry {
    /// What the entry counts for in the month: its actual cost once known, else its reservation.
    pub fn charged_usd(&self) -> f64 {
        match (self.state, self.actual_usd) {
            (EntryState::Ended, Some(actual)) => actual,
            _ => self.reserved_usd,
        }
    }
}

/// Whether an entry in state `from` is closed as `to`. The sweeper marks only a run that never
/// settled: a run the state machine ended keeps its measured cost when the sweeper later finds
/// one of its instances still up (a launch that finished after the run's teardown had listed
/// them), which would otherwise put the run's reservation back in place of its bill.
pub fn closes(from: EntryState, to: EntryState) -> bool {
    !(to == EntryState::Swept && from != EntryState::Running)
}

/// What a run's worker reserves after `attempt` launches: each attempt may bill its whole worst
/// case (`crate::budget::attempt_worst_case`), so `attempt` times one attempt's. The same attempt asked
/// again (a retried call) reserves the same amount.
pub fn reservation(attempt_worst_case_usd: f64, attempt: u32) -> f64 {
    // Rounded as every amount in the ledger is, so that the run's counter adds up exactly.
    crate::cost::usd(attempt_worst_case_usd * f64::from(attempt.max(1)))
}

/// The guard's answer for a launch.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Within the budget; `alert` when this launch takes the month past [`ALERT_FRACTION`].
    Within {
        /// The month's spend and reservations with this launch's, in USD.
        month_to_date_usd: f64,
        /// This launch takes the month past [`ALERT_FRACTION`] of the budget: the operator is
        /// told.
        alert: bool,
    },
    /// Over the budget: nothing may be launched.
    Refused {
        /// What the month's other runs spent or hold, in USD.
        others_usd: f64,
        /// What this run would hold with this launch, its other workers' reservations included,
        /// in USD.
        this_run_usd: f64,
        /// The stack's monthly budget, in USD.
        budget_usd: f64,
    },
}

/// Judges the new reservation of `execution`'s `worker` against the month's other entries
/// and the run's other workers. A budget of zero or less means no monthly ceiling.
pub fn judge(
    entries: &[Entry],
    execution: &str,
    worker: u32,
    reserved_usd: f64,
    budget_usd: f64,
) -> Verdict {
    let others = total(entries.iter().filter(|e| e.execution != execution));
    let mine = entries.iter().find(|e| e.execution == execution);
    let before = others + mine.map_or(0.0, Entry::charged_usd);
    let other_workers: f64 = mine.map_or(0.0, |e| {
        e.workers
            .iter()
            .filter(|(w, _)| **w != worker)
            .fold(0.0, |sum, (_, usd)| sum + usd)
    });
    let this_run = other_workers + reserved_usd;
    let after = others + this_run;
    if budget_usd > 0.0 && after > budget_usd {
        return Verdict::Refused {
            others_usd: others,
            this_run_usd: this_run,
            budget_usd,
        };
    }
    let line = budget_usd * ALERT_FRACTION;
    Verdict::Within {
        month_to_date_usd: after,
        alert: budget_usd > 0.0 && before < line && after >= line,
    }
}

/// The month-to-date spend of a month's entries.
pub fn month_to_date(entries: &[Entry]) -> f64 {
    total(entries.iter())
}

/// Summed from +0.0: `Iterator::sum` of no floats is -0.0, which prints as "$-0.00".
fn total<'e>(entries: impl Iterator<Item = &'e Entry>) -> f64 {
    entries.fold(0.0, |sum, e| sum + e.charged_usd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweeper_never_replaces_a_settled_bill_by_its_reservation() {
        use EntryState::*;
        assert!(closes(Running, Swept) && closes(Running, Ended) && closes(Swept, Ended));
        assert!(!closes(Ended, Swept) && !closes(Swept, Swept));
    }

    #[test]
    fn the_month_before() {
        assert_eq!(month_before("2026-12").as_deref(), Some("2026-11"));
        assert_eq!(month_before("2026-01").as_deref(), Some("2025-12"));
        assert_eq!(month_before("2026-13"), None);
        assert_eq!(month_before("x"), None);
    }
    use chrono::TimeZone;

    fn entry(execution: &str, reserved: f64, actual: Option<f64>, state: EntryState) -> Entry {
        Entry {
            execution: execution.into(),
            run_id: "r".into(),
            month: "2026-11".into(),
            reserved_usd: reserved,
            workers: BTreeMap::from([(1, reserved)]),
            actual_usd: actual,
            state,
            started_at: None,
            outcome: None,
            placements: vec![],
        }
    }

    #[test]
    fn months_are_utc_calendar_months() {
        let t = Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 59).unwrap();
        assert_eq!(month_of(t), "2026-11");
        assert_eq!(month_of(t + chrono::Duration::seconds(1)), "2026-12");
    }

    #[test]
    fn a_run_is_booked_in_the_month_it_started_whatever_month_it_relaunches_in() {
        let started = Utc.with_ymd_and_hms(2026, 11, 30, 23, 50, 0).unwrap();
        let relaunched = Utc.with_ymd_and_hms(2026, 12, 1, 0, 20, 0).unwrap();
        assert_eq!(booked_month(Some(started), started), "2026-11");
        assert_eq!(booked_month(Some(started), relaunched), "2026-11");
        assert_eq!(booked_month(None, relaunched), "2026-12");
    }

    #[test]
    fn ended_runs_count_their_cost_and_the_others_their_reservation() {
        let entries = [
            entry("a", 10.0, Some(2.5), EntryState::Ended),
            entry("b", 10.0, None, EntryState::Running),
            entry("c", 10.0, None, EntryState::Swept),
            // An actual without the ended state (a half-written entry) is not trusted.
            entry("d", 10.0, Some(1.0), EntryState::Running),
        ];
        assert_eq!(month_to_date(&entries), 32.5);
        assert!(month_to_date(&[]).is_sign_positive());
    }

    #[test]
    fn a_run_that_would_cross_the_budget_is_refused() {
        let entries = [entry("a", 800.0, Some(780.0), EntryState::Ended)];
        assert_eq!(
            judge(&entries, "new", 1, 60.0, 833.0),
            Verdict::Refused {
                others_usd: 780.0,
                this_run_usd: 60.0,
                budget_usd: 833.0
            }
        );
        assert!(matches!(
            judge(&entries, "new", 1, 53.0, 833.0),
            Verdict::Within { alert: false, .. }
        ));
        // No ceiling.
        assert!(matches!(
            judge(&entries, "new", 1, 1e6, 0.0),
            Verdict::Within { alert: false, .. }
        ));
    }

    #[test]
    fn the_alert_goes_out_once_when_the_month_passes_eighty_percent() {
        let entries = [entry("a", 70.0, Some(70.0), EntryState::Ended)];
        assert_eq!(
            judge(&entries, "new", 1, 15.0, 100.0),
            Verdict::Within {
                month_to_date_usd: 85.0,
                alert: true
            }
        );
        // Already past the line before this run: no second alert.
        let past = [entry("a", 81.0, Some(81.0), EntryState::Ended)];
        assert!(matches!(
            judge(&past, "new", 1, 5.0, 100.0),
            Verdict::Within { alert: false, .. }
        ));
        // This run's relaunch, already counted past the line: no second alert either.
        let mine = [
            entry("a", 70.0, Some(70.0), EntryState::Ended),
            entry("new", 15.0, None, EntryState::Running),
        ];
        assert!(matches!(
            judge(&mine, "new", 1, 30.0, 100.0),
            Verdict::Within { alert: false, .. }
        ));
    }

    #[test]
    fn a_runs_workers_reserve_side_by_side() {
        // Worker 1 holds 20; worker 2 asks for 20 more: the run is 40, with the others' 780.
        let mut mine = entry("run", 20.0, None, EntryState::Running);
        let others = entry("a", 780.0, Some(780.0), EntryState::Ended);
        assert_eq!(
            judge(&[others.clone(), mine.clone()], "run", 2, 60.0, 833.0),
            Verdict::Refused {
                others_usd: 780.0,
                this_run_usd: 80.0,
                budget_usd: 833.0
            }
        );
        assert!(matches!(
            judge(&[others.clone(), mine.clone()], "run", 2, 20.0, 833.0),
            Verdict::Within { month_to_date_usd, .. } if month_to_date_usd == 820.0
        ));
        // Worker 1's relaunch replaces its own reservation, and keeps worker 2's.
        mine.workers.insert(2, 20.0);
        mine.reserved_usd = 40.0;
        assert!(matches!(
            judge(&[others, mine], "run", 1, reservation(20.0, 2), 833.0),
            Verdict::Refused { this_run_usd, .. } if this_run_usd == 60.0
        ));
    }

    #[test]
    fn a_relaunch_reserves_another_worst_case_and_a_retry_does_not() {
        assert_eq!(reservation(1.5, 1), 1.5);
        assert_eq!(reservation(1.5, 2), 3.0);
        assert_eq!(reservation(1.5, 2), reservation(1.5, 2));
        // The run's own earlier reservation is replaced, not added to.
        let mine = [entry("new", 1.5, None, EntryState::Running)];
        assert_eq!(
            judge(&mine, "new", 1, reservation(1.5, 2), 100.0),
            Verdict::Within {
                month_to_date_usd: 3.0,
                alert: false
            }
        );
    }
}

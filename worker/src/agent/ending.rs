//! How an attempt ends, decided from what happened and nothing else: what the work handed back,
//! whether a Spot interruption notice was seen, whether a stop (SIGTERM) came, whether the money
//! deadline the run's cap granted passed, whether the task token came. Every Spot relaunch hangs on this decision (a `Worker.SpotInterrupted` is
//! relaunched, a `Worker.Failed` fails the run), so it is one pure function, tested over every
//! combination, that both workloads share.

use ephemera_contract::{names, Summary};

/// What the work handed back to the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Worked {
    /// The work returned its summary; whether it got to the end is the stop's to say (the
    /// feature run returns what it did when it is stopped, its partitions in hand handed back).
    Returned {
        summary: Summary,
        /// What the Spot cause says of it, after "Spot interruption notice on … (attempt n)".
        spot: String,
    },
    /// The work says itself that it ran to its end (the job's command exited 0 without being
    /// stopped): a SIGTERM that comes after does not undo it.
    Completed { summary: Summary, spot: String },
    /// The work ran and ended without its result (the job's command exited non-zero, or was
    /// stopped): this cause, unless a Spot notice explains it.
    Unfinished { cause: String, spot: String },
    /// The work could not be done (the run's error, the job's inputs that could not be
    /// fetched, …): reported as it is, even under a Spot notice.
    Failed { cause: String },
    /// The work's task panicked: what the runtime said.
    Crashed { cause: String },
}

/// Whether the task token came: without it nothing can be reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenState {
    Received,
    /// Not within the token timeout, or not readable: why.
    Missing {
        why: String,
    },
}

/// Everything the ending is decided from.
#[derive(Debug, Clone, PartialEq)]
pub struct Happened {
    pub token: TokenState,
    /// What the work handed back; `None` when it handed nothing back (a job does not begin
    /// without the token; the feature run is left running when the token does not come).
    pub worked: Option<Worked>,
    /// A Spot interruption notice was seen: while the work ran, or asked once after a stop.
    pub notice: bool,
    /// The work's stop token was cancelled (by the notice, SIGTERM or the money deadline).
    pub stop: bool,
    /// The money deadline (`--budget-seconds`, the runtime the run's cap granted this attempt)
    /// passed and stopped the work: its seconds.
    pub budget: Option<u64>,
    /// Named in the Spot cause.
    pub instance_id: String,
    pub attempt: u32,
}

/// How the attempt ends: what is reported to the state machine, if anything.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// No token, no report: the worker exits with this error and the state machine finds the
    /// worker lost.
    Unreported {
        why: String,
    },
    /// Relaunched by the state machine, up to `limits.max_relaunches`.
    SpotInterrupted {
        cause: String,
    },
    /// Stopped at the money deadline: released, not relaunched; the run ends BUDGET_EXHAUSTED.
    BudgetExhausted {
        cause: String,
    },
    Failed {
        cause: String,
    },
    /// Reported with its summary once the workload has delivered it ([`delivered`]).
    /// Boxed: a summary is many times the size of the other endings' one string.
    Succeeded {
        summary: Box<Summary>,
    },
}

impl Ending {
    /// The Step Functions error a report of it carries (none for a success or no report).
    pub fn error(&self) -> Option<&'static str> {
        match self {
            Ending::SpotInterrupted { .. } => Some(names::SPOT_INTERRUPTED),
            Ending::BudgetExhausted { .. } => Some(names::BUDGET_EXHAUSTED),
            Ending::Failed { .. } => Some(names::WORKER_FAILED),
            Ending::Unreported { .. } | Ending::Succeeded { .. } => None,
        }
    }
}

/// The cause reported when a stop came without a Spot notice and the work returned anyway
/// (its summary then counts only what was done before the stop).
pub const STOPPED_BY_SIGTERM: &str = "stopped by SIGTERM before the work was done";

/// The ending of an attempt. In order: no token, no report; a work that failed or crashed is
/// reported as such, notice or not; a Spot notice then wins (the work runs again, if the cap
/// admits another attempt); the money deadline stops a work that could not say it was through
/// (a job that exited 0 on its own is done); a stop without either fails a work that could not
/// say it was through; the rest succeeds or fails as the work says.
pub fn ending(h: Happened) -> Ending {
    let worked = match (h.token, h.worked) {
        (TokenState::Missing { why }, _) => return Ending::Unreported { why },
        (TokenState::Received, Some(w)) => w,
        // The session waits for the work once the token is in, so this does not happen; an
        // attempt without a result is not a success.
        (TokenState::Received, None) => {
            return Ending::Failed {
                cause: "the work handed nothing back".into(),
            }
        }
    };
    match worked {
        Worked::Failed { cause } => Ending::Failed { cause },
        Worked::Crashed { cause } => Ending::Failed {
            cause: format!("the worker crashed: {cause}"),
        },
        Worked::Returned { spot, .. }
        | Worked::Completed { spot, .. }
        | Worked::Unfinished { spot, .. }
            if h.notice =>
        {
            Ending::SpotInterrupted {
                cause: format!(
                    "Spot interruption notice on {} (attempt {}){spot}",
                    h.instance_id, h.attempt
                ),
            }
        }
        Worked::Returned { spot, .. } | Worked::Unfinished { spot, .. } if h.budget.is_some() => {
            Ending::BudgetExhausted {
                cause: format!(
                    "stopped at the money deadline on {} (attempt {}): the rest of limits.budget_usd bought this attempt {} s of runtime{spot}",
                    h.instance_id,
                    h.attempt,
                    h.budget.unwrap_or_default()
                ),
            }
        }
        Worked::Returned { .. } if h.stop => Ending::Failed {
            cause: STOPPED_BY_SIGTERM.into(),
        },
        Worked::Returned { summary, .. } | Worked::Completed { summary, .. } => {
            Ending::Succeeded {
                summary: Box::new(summary),
            }
        }
        Worked::Unfinished { cause, .. } => Ending::Failed { cause },
    }
}

/// A success once the workload has delivered it (the job's outputs stored with their
/// manifest): the summary to send, or why the delivery failed, which fails the attempt.
pub fn delivered(delivery: Result<Summary, String>) -> Ending {
    match delivery {
        Ok(summary) => Ending::Succeeded {
            summary: Box::new(summary),
        },
        Err(cause) => Ending::Failed { cause },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(run_id: &str) -> Summary {
        Summary {
            run_id: run_id.into(),
            partitions_done: 3,
            partitions_failed: 0,
            rows_in: 10,
            rows_out: 10,
            processed_here: 3,
            stages: vec![],
            seconds: 1.0,
            manifest: None,
            validation: None,
            job: None,
        }
    }

    /// Every kind of work result, named for the table.
    fn results() -> Vec<(&'static str, Option<Worked>)> {
        vec![
            (
                "returned",
                Some(Worked::Returned {
                    summary: summary("returned"),
                    spot: "; 3 partitions done so far".into(),
                }),
            ),
            (
                "completed",
                Some(Worked::Completed {
                    summary: summary("completed"),
                    spot: ": the job was stopped (exited with status 0)".into(),
                }),
            ),
            (
                "unfinished",
                Some(Worked::Unfinished {
                    cause: "`sh` exited with status 3 after 1 s".into(),
                    spot: ": the job was stopped (exited with status 143)".into(),
                }),
            ),
            (
                "failed",
                Some(Worked::Failed {
                    cause: "fetching s3://b/in/: NoSuchBucket".into(),
                }),
            ),
            (
                "crashed",
                Some(Worked::Crashed {
                    cause: "task 7 panicked".into(),
                }),
            ),
            ("nothing", None),
        ]
    }

    fn spot(tail: &str) -> Ending {
        Ending::SpotInterrupted {
            cause: format!("Spot interruption notice on i-0abc (attempt 2){tail}"),
        }
    }

    fn failed(cause: &str) -> Ending {
        Ending::Failed {
            cause: cause.into(),
        }
    }

    fn budget(tail: &str) -> Ending {
        Ending::BudgetExhausted {
            cause: format!("stopped at the money deadline on i-0abc (attempt 2): the rest of limits.budget_usd bought this attempt 600 s of runtime{tail}"),
        }
    }

    /// The expected ending of every combination, written out as the rules say it. A money
    /// deadline that passed always stopped the work (`stop`).
    fn expected(work: &str, notice: bool, stop: bool, token: bool, deadline: bool) -> Ending {
        let succeeded = |run_id: &str| Ending::Succeeded {
            summary: Box::new(summary(run_id)),
        };
        if !token {
            return Ending::Unreported {
                why: "no task token within 3600s".into(),
            };
        }
        match (work, notice, stop) {
            // An error or a crash is reported as it is, a notice notwithstanding.
            ("failed", _, _) => failed("fetching s3://b/in/: NoSuchBucket"),
            ("crashed", _, _) => failed("the worker crashed: task 7 panicked"),
            ("nothing", _, _) => failed("the work handed nothing back"),
            // A notice wins over whatever the work that ran says: it runs again.
            ("returned", true, _) => spot("; 3 partitions done so far"),
            ("completed", true, _) => spot(": the job was stopped (exited with status 0)"),
            ("unfinished", true, _) => spot(": the job was stopped (exited with status 143)"),
            // The money deadline stops what did not end on its own: not relaunched.
            ("returned", false, _) if deadline => budget("; 3 partitions done so far"),
            ("unfinished", false, _) if deadline => {
                budget(": the job was stopped (exited with status 143)")
            }
            // A stop without a notice: the run's summary is partial, whatever it returned.
            ("returned", false, true) => failed(STOPPED_BY_SIGTERM),
            ("returned", false, false) => succeeded("returned"),
            // A job that exited 0 on its own is done, a late SIGTERM notwithstanding.
            ("completed", false, _) => succeeded("completed"),
            // A non-zero exit, or stopped by SIGTERM: the supervisor's cause.
            ("unfinished", false, _) => failed("`sh` exited with status 3 after 1 s"),
            other => panic!("no rule for {other:?}"),
        }
    }

    #[test]
    fn every_combination_of_work_notice_stop_deadline_and_token_ends_as_the_rules_say() {
        let mut n = 0;
        for (work, worked) in results() {
            for notice in [false, true] {
                for (stop, deadline) in [(false, false), (true, false), (true, true)] {
                    for token in [true, false] {
                        let h = Happened {
                            token: if token {
                                TokenState::Received
                            } else {
                                TokenState::Missing {
                                    why: "no task token within 3600s".into(),
                                }
                            },
                            worked: worked.clone(),
                            notice,
                            stop,
                            budget: deadline.then_some(600),
                            instance_id: "i-0abc".into(),
                            attempt: 2,
                        };
                        assert_eq!(
                            ending(h),
                            expected(work, notice, stop, token, deadline),
                            "work {work}, notice {notice}, stop {stop}, deadline {deadline}, token {token}"
                        );
                        n += 1;
                    }
                }
            }
        }
        assert_eq!(n, 6 * 2 * 3 * 2);
    }

    #[test]
    fn each_ending_carries_the_error_name_the_state_machine_knows() {
        assert_eq!(
            spot("").error(),
            Some(ephemera_contract::names::SPOT_INTERRUPTED)
        );
        assert_eq!(
            failed("x").error(),
            Some(ephemera_contract::names::WORKER_FAILED)
        );
        assert_eq!(
            budget("").error(),
            Some(ephemera_contract::names::BUDGET_EXHAUSTED)
        );
        assert_eq!(
            Ending::Succeeded {
                summary: Box::new(summary("r"))
            }
            .error(),
            None
        );
        assert_eq!(Ending::Unreported { why: "x".into() }.error(), None);
    }

    #[test]
    fn a_success_whose_delivery_failed_fails_the_attempt() {
        assert_eq!(
            delivered(Ok(summary("r"))),
            Ending::Succeeded {
                summary: Box::new(summary("r"))
            }
        );
        let cause = "`sh` exited 0, but its outputs could not be stored: AccessDenied";
        assert_eq!(delivered(Err(cause.into())), failed(cause));
    }
}

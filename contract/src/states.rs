//! The state machine's states by name, as the ASL spells them and as an execution's history
//! names them: what the CLI, the demo and the harness look for in a history is one of these,
//! never a string of their own. `functions/handlers/tests/asl_states.rs` holds this list to the
//! ASL, both ways.

use std::fmt;

/// Defines the enum, its names and [`State::ALL`] from one list, so that none is left out.
macro_rules! states {
    ($($(#[$doc:meta])* $id:ident,)*) => {
        /// A state of `state-machines/ephemeral-worker.asl.json` (the Map's own included).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum State {
            $($(#[$doc])* #[doc = concat!("`", stringify!($id), "` in the ASL.")] $id,)*
        }

        impl State {
            /// Every state, in the order of the ASL.
            pub const ALL: &'static [State] = &[$(State::$id),*];

            /// The name the ASL gives it.
            pub fn name(self) -> &'static str {
                match self {
                    $(State::$id => stringify!($id),)*
                }
            }
        }
    };
}

states! {
    /// A run started by the schedule arrives in another shape than one started by hand.
    Scheduled,
    ScheduledRunId,
    StartScheduled,
    /// The run document is made from the execution's input.
    Start,
    /// quota-check: validates the RunSpec (the only state that does), reads and follows quotas.
    CheckQuota,
    QuotaVerdict,
    WaitQuota,
    QuotaDenied,
    QuotaTimeout,
    SnapshotWanted,
    SnapshotDatabase,
    SnapshotReady,
    WaitSnapshot,
    /// The Map: one iteration per worker.
    Workers,
    Stagger,
    LaunchWorker,
    /// A launch a vCPU quota refused: its wait is read from the error, then the launch again.
    LaunchQuotaRefused,
    ReadLaunchQuotaWait,
    WaitLaunchQuota,
    WaitBoot,
    HealthCheck,
    Booted,
    WaitHealth,
    /// The worker's task token: the run waits here while the worker works.
    AwaitCompletion,
    WasReclaimed,
    CanRelaunch,
    /// After Spot took a worker's instance: the iteration launches again.
    Relaunch,
    ReleaseWorker,
    WorkerLost,
    WorkerLostUnreleased,
    WorkerReported,
    VerifyCompletion,
    PruneWanted,
    PruneSnapshots,
    /// terminate-with-cost-report on the way to success; its output is the report.
    TerminateWithCostReport,
    Done,
    /// terminate-with-cost-report on every failure after the RunSpec is accepted.
    Cleanup,
    Failed,
    CleanupFailed,
    /// A RunSpec CheckQuota refused: one email naming every problem, then RejectRunSpec.
    TellRefusal,
    RejectRunSpec,
    /// RejectRunSpec when the refusal could not be told: the cause is CheckQuota's own.
    RejectRunSpecUntold,
}

impl State {
    /// The state the ASL names so; None for a name this build does not know (an execution of
    /// another deployment).
    pub fn named(name: &str) -> Option<State> {
        State::ALL.iter().copied().find(|s| s.name() == name)
    }

    /// The two states that terminate the run's instances and write its cost report.
    pub fn reports(self) -> bool {
        matches!(self, State::TerminateWithCostReport | State::Cleanup)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_reads_back_as_its_state_and_an_unknown_one_as_none() {
        for s in State::ALL {
            assert_eq!(State::named(s.name()), Some(*s));
        }
        assert_eq!(State::named("checkquota"), None);
        assert_eq!(State::Cleanup.to_string(), "Cleanup");
    }
}

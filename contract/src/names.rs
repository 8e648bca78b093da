//! Error names as the state machine matches them (`ErrorEquals`) and as executions fail with
//! them (ARCHITECTURE.md, "Invariants"). The Lambdas raise them as `Diagnostic::error_type`,
//! the worker with SendTaskFailure, the ASL in its Pass and Fail states.

/// Defines each name once, and [`ALL`] from the same list, so that no name is left out of it.
macro_rules! names {
    ($($(#[$doc:meta])* $id:ident = $name:literal;)*) => {
        $($(#[$doc])* #[doc = concat!("`", $name, "`.")] pub const $id: &str = $name;)*
        /// Every name above: what `functions/handlers/tests/asl_names.rs` holds the ASL to.
        pub const ALL: &[&str] = &[$($id),*];
    };
}

names! {
    INVALID_RUNSPEC = "Ephemera.InvalidRunSpec";
    QUOTA_DENIED = "Ephemera.QuotaDenied";
    QUOTA_TIMEOUT = "Ephemera.QuotaTimeout";
    OVER_BUDGET = "Ephemera.OverBudget";
    CAPACITY_UNAVAILABLE = "Ephemera.CapacityUnavailable";
    /// RunInstances refused a worker's launch for a vCPU quota (VcpuLimitExceeded,
    /// MaxSpotInstanceCountExceeded): the worker waits for the quota and launches again. Its
    /// cause is the wait, as JSON, that the state machine reads.
    QUOTA_EXCEEDED = "Ephemera.QuotaExceeded";
    LAUNCH_FAILED = "Ephemera.LaunchFailed";
    BOOT_FAILED = "Ephemera.BootFailed";
    /// `database.snapshot_before` could not be taken or did not become available in time:
    /// the run does not start.
    SNAPSHOT_FAILED = "Ephemera.SnapshotFailed";
    /// The worker saw the Spot interruption notice (or EventBridge saw Spot reclaim it): the
    /// state machine relaunches.
    SPOT_INTERRUPTED = "Worker.SpotInterrupted";
    /// The worker stopped its work at the money deadline the run's cap granted its attempt
    /// (`--budget-seconds`), as at a Spot notice (the job's grace, its checkpoint saved): the
    /// worker is released, not relaunched, and the run ends with outcome BUDGET_EXHAUSTED.
    BUDGET_EXHAUSTED = "Worker.BudgetExhausted";
    /// The execution was stopped (`ephemera cancel`, the console, StopExecution): the stack's
    /// EventBridge rule on its ABORTED status has terminate-with-cost-report tear it down and
    /// report it, with the outcome CANCELLED.
    CANCELLED = "Ephemera.Cancelled";
    /// The worker's run failed, or it was stopped (SIGTERM) before its work was done.
    WORKER_FAILED = "Worker.Failed";
    /// A heartbeat or runtime timeout (States.HeartbeatTimeout / States.Timeout), as the execution fails.
    WORKER_TIMED_OUT = "Worker.TimedOut";
    VERIFICATION_FAILED = "Ephemera.VerificationFailed";
    REFUSED = "Ephemera.RefusedToTerminate";
    AWS = "Ephemera.AwsError";
    /// The Lambda's input does not have the shape the state machine gives it (a contract error
    /// between the ASL and the code, not the user's RunSpec, which is `INVALID_RUNSPEC`).
    BAD_INPUT = "Ephemera.BadInput";
    /// A fault of ephemera's own code (an output it cannot serialise, an unknown function).
    INTERNAL = "Ephemera.Internal";
    /// AWS refused to terminate the run's instances (a permission taken away): not retried, an
    /// alert names what is left, and the execution ends as [`CLEANUP_FAILED`].
    CLEANUP_DENIED = "Ephemera.CleanupDenied";
    /// The cleanup (terminate-with-cost-report) failed after its retries: the ASL's last Fail.
    CLEANUP_FAILED = "Ephemera.CleanupFailed";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_in_ephemeras_namespaces() {
        let mut seen = std::collections::BTreeSet::new();
        for n in ALL {
            assert!(seen.insert(n), "{n} twice");
            // A Fail state may not raise `States.*`; other prefixes belong to AWS services.
            assert!(
                n.starts_with("Ephemera.") || n.starts_with("Worker."),
                "{n}"
            );
        }
    }
}

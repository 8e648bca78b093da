//! Where the worker ships its log lines and how `ephemera logs` finds them again.

/// The CloudWatch Logs group a worker ships its log lines to when it is not told one (run by
/// hand); on an instance, launch-worker names its stack's ([`stack_worker_log_group`]).
pub const WORKER_LOG_GROUP: &str = "/ephemera/workers";

/// A stack's worker log group (template.yaml's `WorkerLogs`; the worker's role may write only
/// there): one per stack, so that two stacks in one account and region never collide.
pub fn stack_worker_log_group(stack: &str) -> String {
    format!("/ephemera/{stack}/workers")
}

/// The worker log group of the stack whose state machine (`<stack>-worker`) ran
/// `execution_arn` (`arn:aws:states:<region>:<account>:execution:<machine>:<name>`).
pub fn worker_log_group_of(execution_arn: &str) -> Option<String> {
    let machine = execution_arn.split(':').nth(6)?;
    Some(stack_worker_log_group(machine.strip_suffix("-worker")?))
}

/// The most bytes a worker process (one an attempt: the instance's unit never restarts it)
/// sends to CloudWatch Logs, counting every PutLogEvents call it makes (a batch sent again
/// counts again) at each event's message plus its 26 bytes. Past it, lines stay on the
/// instance's stderr only. The run's budget counts an attempt's logs at this bound
/// (`ephemera_core::budget`), so a chatty job cannot bill past its cap through its log.
pub const MAX_SHIPPED_BYTES: u64 = 16 * 1024 * 1024;

/// The message of the line the worker logs once a heartbeat period while its heartbeats reach
/// Step Functions (whose history keeps no heartbeat): `ephemera status` reads the last one
/// back from the worker's stream to say when the job last showed it was alive.
pub const HEARTBEAT_MESSAGE: &str = "heartbeat sent";

/// One log stream per worker process: `<run_id>/<attempt>/<instance id>`, so a run's streams
/// share the prefix `<run_id>/` (a run id holds no `/`).
pub fn worker_log_stream(run_id: &str, attempt: u32, instance_id: &str) -> String {
    format!("{run_id}/{attempt}/{instance_id}")
}

/// (attempt, instance id) of a stream named by [`worker_log_stream`] for `run_id`.
pub fn parse_worker_log_stream(run_id: &str, stream: &str) -> Option<(u32, String)> {
    let rest = stream.strip_prefix(run_id)?.strip_prefix('/')?;
    let (attempt, instance) = rest.split_once('/')?;
    Some((attempt.parse().ok()?, instance.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stacks_log_group_is_found_from_its_executions() {
        assert_eq!(stack_worker_log_group("prod"), "/ephemera/prod/workers");
        assert_eq!(
            worker_log_group_of("arn:aws:states:eu-west-1:1:execution:prod-worker:fx-1").as_deref(),
            Some("/ephemera/prod/workers")
        );
        assert_eq!(
            worker_log_group_of("arn:aws:states:eu-west-1:1:execution:mine:fx-1"),
            None
        );
    }

    #[test]
    fn log_streams_name_run_attempt_and_instance() {
        let s = worker_log_stream("fx-2023", 2, "i-0abc");
        assert_eq!(s, "fx-2023/2/i-0abc");
        assert_eq!(
            parse_worker_log_stream("fx-2023", &s),
            Some((2, "i-0abc".to_string()))
        );
        // Another run whose id starts the same is not this run's.
        assert_eq!(parse_worker_log_stream("fx", "fx-2023/2/i-0abc"), None);
        assert_eq!(parse_worker_log_stream("fx-2023", "fx-2023/x/i-0abc"), None);
    }
}

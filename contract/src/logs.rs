//! Where the worker ships its log lines and how `ephemera logs` finds them again.

/// The CloudWatch Logs group the worker ships its log lines to (the template creates it; the
/// worker's role may write only there).
pub const WORKER_LOG_GROUP: &str = "/ephemera/workers";

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

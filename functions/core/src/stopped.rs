//! An execution that ended outside the state machine's own paths: stopped (`ephemera cancel`,
//! the console, StopExecution: ABORTED) or past its TimeoutSeconds (TIMED_OUT). Neither reaches
//! Cleanup, so the stack's EventBridge rule on those statuses hands the event to
//! terminate-with-cost-report, which tears the run down and reports it with the error decided
//! here, within a minute rather than at the sweeper's next pass.

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use crate::rundoc::CaughtError;

/// The event's `detail-type`
/// (https://docs.aws.amazon.com/step-functions/latest/dg/eventbridge-integration.html).
pub const DETAIL_TYPE: &str = "Step Functions Execution Status Change";

/// The event's `detail`, as EventBridge delivers it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusChange {
    /// The execution's ARN.
    pub execution_arn: String,
    /// The execution's status; the stack's rule sends ABORTED and TIMED_OUT.
    pub status: String,
    /// Milliseconds since the epoch.
    pub start_date: i64,
    /// What StopExecution was given (`ephemera cancel` gives `Ephemera.Cancelled` and the
    /// reason); a stop from the console gives none.
    #[serde(default)]
    pub error: Option<String>,
    /// The cause StopExecution was given, with `error` (the reason `ephemera cancel` gives).
    #[serde(default)]
    pub cause: Option<String>,
}

impl StatusChange {
    /// When the execution started (`start_date`); None for a date out of range.
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        Utc.timestamp_millis_opt(self.start_date).single()
    }
}

/// Why a run that ended so is reported as it is; None for the statuses the state machine's
/// own paths end in (SUCCEEDED, FAILED: its report was made) or that are not an end (RUNNING).
pub fn error_of(c: &StatusChange) -> Option<CaughtError> {
    fn given(s: &Option<String>) -> Option<&str> {
        s.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }
    match c.status.as_str() {
        "ABORTED" => Some(CaughtError {
            error: crate::names::CANCELLED.into(),
            cause: Some(match (given(&c.error), given(&c.cause)) {
                (Some(crate::names::CANCELLED), Some(reason)) => reason.to_string(),
                (Some(crate::names::CANCELLED), None) | (None, None) => {
                    "stopped before it ended (no reason given)".into()
                }
                (Some(e), Some(reason)) => format!("stopped: {e}: {reason}"),
                (Some(e), None) => format!("stopped: {e}"),
                (None, Some(reason)) => reason.to_string(),
            }),
        }),
        "TIMED_OUT" => Some(CaughtError {
            error: "States.Timeout".into(),
            cause: Some("the execution ran past the state machine's TimeoutSeconds".into()),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(status: &str, error: Option<&str>, cause: Option<&str>) -> StatusChange {
        StatusChange {
            execution_arn: "arn:aws:states:us-east-1:1:execution:s-worker:r1-x".into(),
            status: status.into(),
            start_date: 1_764_000_000_000,
            error: error.map(String::from),
            cause: cause.map(String::from),
        }
    }

    #[test]
    fn a_stop_is_a_cancel_with_its_reason_and_a_timeout_is_said() {
        let e = |c: StatusChange| error_of(&c).map(|e| (e.error, e.cause.unwrap()));
        let cancelled = |cause: &str| Some(("Ephemera.Cancelled".to_string(), cause.to_string()));
        assert_eq!(
            e(change(
                "ABORTED",
                Some("Ephemera.Cancelled"),
                Some("wrong data")
            )),
            cancelled("wrong data")
        );
        assert_eq!(
            e(change("ABORTED", None, None)),
            cancelled("stopped before it ended (no reason given)")
        );
        assert_eq!(
            e(change("ABORTED", Some(" "), Some(""))),
            cancelled("stopped before it ended (no reason given)")
        );
        assert_eq!(
            e(change("ABORTED", Some("Ops"), Some("maintenance"))),
            cancelled("stopped: Ops: maintenance")
        );
        assert_eq!(
            e(change("TIMED_OUT", None, None)),
            Some((
                "States.Timeout".into(),
                "the execution ran past the state machine's TimeoutSeconds".into()
            ))
        );
        for done in ["SUCCEEDED", "FAILED", "RUNNING"] {
            assert_eq!(e(change(done, None, None)), None, "{done}");
        }
        assert_eq!(
            change("ABORTED", None, None)
                .started_at()
                .unwrap()
                .to_rfc3339(),
            "2025-11-24T16:00:00+00:00"
        );
    }
}

//! The Lambdas' one error type, the Step Functions error taxonomy. Each variant carries the
//! error name that the state machine's `Retry`/`Catch` blocks match (`Diagnostic::error_type`).
//! It lives with the handlers, which decide what a run is told; the adapters return their own
//! [`AwsError`], which becomes `Ephemera.AwsError` here (or `Ephemera.Internal`).

use ephemera_core::capacity::Tried;
use ephemera_core::rundoc::CaughtError;
use ephemera_core::vcpus::QuotaRefused;
use ephemera_core::verify::Check;
use ephemera_core::InvalidRunSpec;
use ephemera_core::{caps, names};
use lambda_runtime::Diagnostic;

use crate::aws::{AwsError, Unpriced};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    InvalidRunSpec(#[from] InvalidRunSpec),
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The run's first attempts cannot fit its cap: refused by CheckQuota before any quota
    /// increase is asked for.
    #[error("the worst case of every worker's first attempt ${estimate:.4} exceeds limits.budget_usd ${budget:.2} ({detail}); no quota increase was requested and nothing was launched")]
    OverBudget {
        estimate: f64,
        budget: f64,
        detail: String,
    },
    /// What is left of the run's cap cannot cover one more attempt, even at the least runtime
    /// worth launching (`budget::MIN_USEFUL_RUNTIME_SECONDS`): this attempt is not launched,
    /// and the worker ends with this reason.
    #[error("worker {slot}'s attempt {attempt} was not launched: ${remainder:.4} is left of limits.budget_usd ${budget:.2} after the run's reservations, less than one attempt's worst case ${attempt_usd:.4} at the least runtime worth launching ({detail})")]
    OverRunCap {
        slot: u32,
        attempt: u32,
        remainder: f64,
        attempt_usd: f64,
        budget: f64,
        detail: String,
    },
    #[error("this run's worst case ${this_run:.2} on top of ${others:.2} spent or reserved in {month} exceeds the monthly budget ${budget:.2} (MonthlyBudgetUsd); nothing was launched")]
    OverMonthlyBudget {
        month: String,
        others: f64,
        this_run: f64,
        budget: f64,
    },
    #[error("no capacity on any candidate; tried {}", describe_tried(.tried))]
    CapacityUnavailable { tried: Vec<Tried> },
    /// A vCPU quota refused the launch: the worker waits and launches again. The message is
    /// the wait as JSON (`ephemera_core::vcpus::QuotaRefused`), which the state machine reads
    /// into its Wait (`States.StringToJson`).
    #[error("{}", serde_json::to_string(.0).unwrap_or_default())]
    QuotaExceeded(QuotaRefused),
    /// A worker refused for vCPU quota at launch waited as long as it may.
    #[error("the worker's launch was refused for vCPU quota and it waited as long as it may: {0}")]
    LaunchQuotaTimeout(String),
    #[error("launch failed: {0}")]
    LaunchFailed(String),
    #[error("{0}")]
    BootFailed(String),
    #[error("{0}")]
    SnapshotFailed(String),
    #[error("{0}")]
    SpotInterrupted(String),
    #[error("verification failed: {}", describe_checks(.failed))]
    VerificationFailed { failed: Vec<Check> },
    /// Every worker of the run was lost, or a job's worker did not report (its share is never
    /// done): the run fails with the error that lost the first one (its own name, e.g.
    /// `Ephemera.BootFailed`), as a one-worker run always did, its cause naming the workers.
    #[error("{}", .0.cause.as_deref().unwrap_or("every worker was lost"))]
    WorkersLost(CaughtError),
    #[error("refusing to terminate {instance}: {why}")]
    Refused { instance: String, why: String },
    #[error("AWS refused to terminate {} (ec2:TerminateInstances): {detail}; they are left running until the sweeper's next tick, or `ephemera sweep --yes`", .left.join(", "))]
    CleanupDenied { left: Vec<String>, detail: String },
    #[error("{service} {operation} failed: {code}: {message}")]
    Aws {
        service: &'static str,
        operation: &'static str,
        code: String,
        message: String,
    },
}

fn describe_tried(tried: &[Tried]) -> String {
    tried
        .iter()
        .map(Tried::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_checks(checks: &[Check]) -> String {
    checks
        .iter()
        .map(|c| format!("{} ({})", c.name, c.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn error_type(&self) -> &str {
        match self {
            Error::InvalidRunSpec(_) => names::INVALID_RUNSPEC,
            Error::BadInput(_) => names::BAD_INPUT,
            Error::Internal(_) => names::INTERNAL,
            Error::OverBudget { .. }
            | Error::OverRunCap { .. }
            | Error::OverMonthlyBudget { .. } => names::OVER_BUDGET,
            Error::CapacityUnavailable { .. } => names::CAPACITY_UNAVAILABLE,
            Error::QuotaExceeded(_) => names::QUOTA_EXCEEDED,
            Error::LaunchQuotaTimeout(_) => names::QUOTA_TIMEOUT,
            Error::LaunchFailed(_) => names::LAUNCH_FAILED,
            Error::BootFailed(_) => names::BOOT_FAILED,
            Error::SnapshotFailed(_) => names::SNAPSHOT_FAILED,
            Error::SpotInterrupted(_) => names::SPOT_INTERRUPTED,
            Error::VerificationFailed { .. } => names::VERIFICATION_FAILED,
            Error::WorkersLost(e) => &e.error,
            Error::Refused { .. } => names::REFUSED,
            Error::CleanupDenied { .. } => names::CLEANUP_DENIED,
            Error::Aws { .. } => names::AWS,
        }
    }
}

/// An adapter's failure: what AWS answered is `Ephemera.AwsError` (retried by the states), with
/// the same message; ephemera's own fault is `Ephemera.Internal`.
impl From<AwsError> for Error {
    fn from(e: AwsError) -> Error {
        // No answer from AWS at all is still `Ephemera.AwsError` (the state machine retries it
        // as any AWS failure), its code naming which.
        match e.into_failed() {
            Ok(f) => Error::Aws {
                service: f.service,
                operation: f.operation,
                code: f.code,
                message: f.message,
            },
            Err(detail) => Error::Internal(detail),
        }
    }
}

/// A candidate no source prices fails the launch (the budget cannot be kept without it).
impl From<Unpriced> for Error {
    fn from(e: Unpriced) -> Error {
        match e {
            Unpriced::Type { .. } => Error::LaunchFailed(e.to_string()),
            Unpriced::NoTypes => Error::Internal(e.to_string()),
        }
    }
}

/// What the Lambda runtime returns for an error.
impl From<Error> for Diagnostic {
    fn from(e: Error) -> Diagnostic {
        // Cut: the message becomes the caught error's cause in the run document, which
        // Step Functions caps at 256 KiB (ephemera_core::payload); the log has it whole.
        let message = e.to_string();
        let kept = caps::cap(&message, caps::MESSAGE_KEPT);
        if kept.len() < message.len() {
            tracing::warn!(error = %message, "error message cut for the state machine");
        }
        Diagnostic {
            error_type: e.error_type().to_string(),
            error_message: kept,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_carry_the_state_machine_names() {
        let d: Diagnostic = Error::BootFailed("impaired".into()).into();
        assert_eq!(d.error_type, "Ephemera.BootFailed");
        assert_eq!(d.error_message, "impaired");
        let d: Diagnostic = Error::SpotInterrupted("x".into()).into();
        assert_eq!(d.error_type, "Worker.SpotInterrupted");
        let d: Diagnostic = Error::VerificationFailed {
            failed: vec![Check {
                name: "min_rows".into(),
                ok: false,
                detail: "3 < 10".into(),
            }],
        }
        .into();
        assert_eq!(d.error_type, "Ephemera.VerificationFailed");
        assert_eq!(d.error_message, "verification failed: min_rows (3 < 10)");
    }

    #[test]
    fn a_long_message_is_cut_to_what_the_run_document_plans_for() {
        let d: Diagnostic = Error::LaunchFailed("\"".repeat(5000)).into();
        let json = serde_json::to_string(&d.error_message).unwrap();
        assert!(json.len() <= caps::MESSAGE_KEPT, "{}", json.len());
        assert!(d.error_message.starts_with("launch failed: \"\""));
        assert!(d.error_message.ends_with(" bytes cut)"));
    }

    #[test]
    fn an_adapters_failure_keeps_its_name_and_message() {
        let call = AwsError::Call {
            service: "ec2",
            operation: "DescribeInstances",
            code: "RequestLimitExceeded".into(),
            message: "slow down".into(),
        };
        let said = call.to_string();
        let d: Diagnostic = Error::from(call).into();
        assert_eq!(d.error_type, "Ephemera.AwsError");
        assert_eq!(d.error_message, said);
        assert_eq!(
            said,
            "ec2 DescribeInstances failed: RequestLimitExceeded: slow down"
        );

        // No answer at all is an AWS failure too, retried as one, its code saying which.
        let d: Diagnostic = Error::from(AwsError::Unreachable {
            service: "ec2",
            operation: "DescribeInstances",
            detail: "connection refused".into(),
        })
        .into();
        assert_eq!(d.error_type, "Ephemera.AwsError");
        assert_eq!(
            d.error_message,
            "ec2 DescribeInstances failed: Unreachable: connection refused"
        );
        let d: Diagnostic = Error::from(AwsError::NoCredentials {
            service: "ec2",
            operation: "DescribeInstances",
        })
        .into();
        assert_eq!(d.error_type, "Ephemera.AwsError");

        let own = AwsError::Internal("the session tag: missing key".into());
        let said = own.to_string();
        let d: Diagnostic = Error::from(own).into();
        assert_eq!(d.error_type, "Ephemera.Internal");
        assert_eq!(d.error_message, said);

        let unpriced = Unpriced::Type {
            index: 1,
            instance_type: "x9.huge".into(),
            region: "us-east-1".into(),
        };
        let d: Diagnostic = Error::from(unpriced).into();
        assert_eq!(d.error_type, "Ephemera.LaunchFailed");
        assert!(
            d.error_message
                .starts_with("launch failed: worker.instance_types[1]: no On-Demand price"),
            "{}",
            d.error_message
        );
        let d: Diagnostic = Error::from(Unpriced::NoTypes).into();
        assert_eq!(d.error_type, "Ephemera.Internal");
    }
}

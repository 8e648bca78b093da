//! What the adapters return when a call fails. They say what AWS answered; which Step Functions
//! error that becomes is the handlers' choice (`ephemera_functions::error`), so that the CLI,
//! which calls the same adapters, does not carry the state machine's taxonomy.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// A failed adapter call.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// AWS answered with an error, or with an answer that lacks what the call must return:
    /// its service error code when there is one (what callers match on), and its message.
    #[error("{service} {operation} failed: {code}: {message}")]
    Call {
        service: &'static str,
        operation: &'static str,
        code: String,
        message: String,
    },
    /// No credentials: the provider chain found none (no profile, no role, no variables).
    #[error("{service} {operation}: no AWS credentials were found")]
    NoCredentials {
        service: &'static str,
        operation: &'static str,
    },
    /// A credentials provider was there but failed (an expired SSO session, a broken profile,
    /// a refused AssumeRole).
    #[error("{service} {operation}: the AWS credentials could not be loaded: {detail}")]
    Credentials {
        service: &'static str,
        operation: &'static str,
        detail: String,
    },
    /// No answer: connection refused, DNS, a timeout.
    #[error("{service} {operation}: AWS did not answer: {detail}")]
    Unreachable {
        service: &'static str,
        operation: &'static str,
        detail: String,
    },
    /// Not AWS's answer but ephemera's own fault: a request the SDK refused to build, an item
    /// of ours we cannot read back, a caller that asked for what it never recorded.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AwsError {
    /// What a call's SDK error says: AWS's error code and message when the service answered;
    /// else no credentials, failed credentials or no answer (each found in the error's chain,
    /// so that a caller can tell a person which to mend); else the SDK's own words.
    pub fn sdk<E, R>(
        service: &'static str,
        operation: &'static str,
        err: SdkError<E, R>,
    ) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        if let SdkError::ServiceError(s) = &err {
            let e = s.err();
            return AwsError::Call {
                service,
                operation,
                code: e.code().unwrap_or("Unknown").to_string(),
                message: e
                    .message()
                    .map(str::to_string)
                    .unwrap_or_else(|| DisplayErrorContext(e).to_string()),
            };
        }
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = cur {
            if let Some(c) = e.downcast_ref::<CredentialsError>() {
                return match c {
                    CredentialsError::CredentialsNotLoaded(_) => {
                        AwsError::NoCredentials { service, operation }
                    }
                    other => AwsError::Credentials {
                        service,
                        operation,
                        detail: root_cause(other),
                    },
                };
            }
            cur = e.source();
        }
        let unreachable = match &err {
            SdkError::TimeoutError(_) => Some("timed out".to_string()),
            SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => Some(root_cause(&err)),
            _ => None,
        };
        match unreachable {
            Some(detail) => AwsError::Unreachable {
                service,
                operation,
                detail,
            },
            None => AwsError::Call {
                service,
                operation,
                code: err.code().unwrap_or("Unknown").to_string(),
                message: err
                    .message()
                    .map(str::to_string)
                    .unwrap_or_else(|| DisplayErrorContext(&err).to_string()),
            },
        }
    }
}

/// A failed call as one code and message, whichever way it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub service: &'static str,
    pub operation: &'static str,
    /// AWS's error code, or `NoCredentials`, `CredentialsError`, `Unreachable`.
    pub code: String,
    pub message: String,
}

impl AwsError {
    /// The call that failed and what it came to, the causes without an answer named by codes of
    /// their own; `Err` with the detail when the fault is ephemera's (no call failed).
    pub fn into_failed(self) -> Result<Failed, String> {
        let (service, operation, code, message) = match self {
            AwsError::Call {
                service,
                operation,
                code,
                message,
            } => (service, operation, code, message),
            AwsError::NoCredentials { service, operation } => (
                service,
                operation,
                "NoCredentials".into(),
                "no AWS credentials were found".into(),
            ),
            AwsError::Credentials {
                service,
                operation,
                detail,
            } => (service, operation, "CredentialsError".into(), detail),
            AwsError::Unreachable {
                service,
                operation,
                detail,
            } => (service, operation, "Unreachable".into(), detail),
            AwsError::Internal(detail) => return Err(detail),
        };
        Ok(Failed {
            service,
            operation,
            code,
            message,
        })
    }
}

/// The innermost cause's text: the useful part of a chain of wrappers.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sts::config::http::HttpResponse;
    use aws_sdk_sts::operation::get_caller_identity::GetCallerIdentityError;

    /// An error wrapping another, as the SDK's layers wrap a provider's.
    #[derive(Debug)]
    struct Wrapper(CredentialsError);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("dispatch failure")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn failed(source: Wrapper) -> AwsError {
        let e = SdkError::<GetCallerIdentityError, HttpResponse>::construction_failure(source);
        AwsError::sdk("sts", "GetCallerIdentity", e)
    }

    #[test]
    fn a_credential_error_is_found_anywhere_in_the_chain() {
        let none = failed(Wrapper(CredentialsError::not_loaded(
            "no providers in chain",
        )));
        assert!(
            matches!(none, AwsError::NoCredentials { service: "sts", .. }),
            "{none:?}"
        );
        let sso = failed(Wrapper(CredentialsError::provider_error(
            "the SSO session has expired",
        )));
        match sso {
            AwsError::Credentials { detail, .. } => {
                assert_eq!(detail, "the SSO session has expired")
            }
            other => panic!("{other:?}"),
        }
        let plain = AwsError::sdk(
            "sts",
            "GetCallerIdentity",
            SdkError::<GetCallerIdentityError, HttpResponse>::construction_failure(std::fmt::Error),
        );
        assert!(
            matches!(plain, AwsError::Call { ref code, .. } if code == "Unknown"),
            "{plain:?}"
        );
    }
}

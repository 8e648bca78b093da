//! Errors a person can act on. An AWS SDK error is classified into what to do about it (no
//! credentials, no such state machine, an action IAM refuses, …); its debug form never
//! reaches the terminal.

use std::error::Error as StdError;

use aws_sdk_sfn::error::{ProvideErrorMetadata, SdkError};
use ephemera_aws::AwsError;

/// How the stack publishes the state machine's ARN.
pub const STACK_OUTPUT_HINT: &str = "its ARN is the ephemera stack's output StateMachineArn: \
aws cloudformation describe-stacks --stack-name <stack> \
--query \"Stacks[0].Outputs[?OutputKey=='StateMachineArn'].OutputValue\" --output text";

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{path}: invalid RunSpec, {n} problem(s):\n{list}")]
    InvalidRunSpec {
        path: String,
        n: usize,
        list: String,
    },
    #[error(
        "no AWS credentials found: set AWS_PROFILE to a configured profile (and run `aws sso login` \
         for an SSO profile), run `aws configure`, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    NoCredentials,
    #[error(
        "AWS credentials could not be used ({0}): for an SSO profile run `aws sso login`; \
         otherwise check AWS_PROFILE, ~/.aws/credentials or the AWS_* variables"
    )]
    BadCredentials(String),
    #[error("no AWS region: pass --region, set AWS_REGION, or use a profile that has one")]
    NoRegion,
    #[error("no such state machine: {arn}\n  {STACK_OUTPUT_HINT}")]
    NoStateMachine { arn: String },
    #[error("'{arn}' is not a valid ARN for {action} ({message})\n  {STACK_OUTPUT_HINT}")]
    BadArn {
        arn: String,
        action: String,
        message: String,
    },
    #[error(
        "access denied: the AWS identity in use may not call {action}{on}\n  \
         allow {action} in its IAM policy (AWS said: {message})"
    )]
    AccessDenied {
        action: String,
        on: String,
        message: String,
    },
    #[error("no such execution: {0}")]
    NoSuchExecution(String),
    #[error("{0}")]
    NoSuchRun(String),
    #[error(
        "cannot reach AWS for {action} ({detail}): check the network, and --endpoint-url or \
         AWS_ENDPOINT_URL if you set one"
    )]
    Unreachable { action: String, detail: String },
    #[error("{action} failed: {code}: {message}")]
    Aws {
        action: String,
        code: String,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

/// The call being made, for the message when it fails.
#[derive(Debug, Clone)]
pub struct Op {
    /// As IAM names it: `states:StartExecution`.
    pub action: &'static str,
    /// The ARN it is about, if any.
    pub resource: Option<String>,
}

impl Op {
    pub fn new(action: &'static str, resource: &str) -> Op {
        Op {
            action,
            resource: Some(resource.to_string()),
        }
    }

    pub fn any(action: &'static str) -> Op {
        Op {
            action,
            resource: None,
        }
    }

    /// What went wrong, as something to act on.
    pub fn fail<E, R>(&self, e: SdkError<E, R>) -> CliError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        // The adapters' reading of an SDK error, so that the CLI and the Lambdas tell a
        // missing credential, a failed one and no answer apart in one place.
        self.failed(&AwsError::sdk("", self.action, e))
    }

    /// What an adapter's failure says, as something to act on.
    pub fn failed(&self, e: &AwsError) -> CliError {
        classify(self, &Failure::from(e))
    }
}

/// An SDK error reduced to what decides the message.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The credential chain found nothing.
    NoCredentials,
    /// A provider was there but failed (an expired SSO session, a broken profile).
    Credentials(String),
    /// The service answered with an error code.
    Service {
        code: String,
        message: String,
    },
    /// No answer: connection refused, DNS, timeout.
    Unreachable(String),
    Other(String),
}

impl From<&AwsError> for Failure {
    fn from(e: &AwsError) -> Failure {
        match e {
            AwsError::Call { code, message, .. } => Failure::Service {
                code: code.clone(),
                message: message.clone(),
            },
            AwsError::NoCredentials { .. } => Failure::NoCredentials,
            AwsError::Credentials { detail, .. } => Failure::Credentials(detail.clone()),
            AwsError::Unreachable { detail, .. } => Failure::Unreachable(detail.clone()),
            AwsError::Internal(detail) => Failure::Other(detail.clone()),
        }
    }
}

/// Codes that say the credentials themselves are refused (wrong, expired, revoked).
const BAD_CREDENTIAL_CODES: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "AuthFailure",
];

const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnauthorizedOperation",
    "AuthorizationError",
];

/// `… is not authorized to perform: states:StartExecution on resource: arn:… because …` →
/// (the action, the resource).
pub fn denied_action(message: &str) -> Option<(String, Option<String>)> {
    let word = |s: &str| {
        s.split_whitespace()
            .next()
            .map(|w| w.trim_end_matches([',', '.']).to_string())
    };
    let action = word(message.split("perform: ").nth(1)?)?;
    let resource = message.split("on resource: ").nth(1).and_then(word);
    Some((action, resource))
}

pub fn classify(op: &Op, f: &Failure) -> CliError {
    let resource = op.resource.clone().unwrap_or_default();
    match f {
        Failure::NoCredentials => CliError::NoCredentials,
        Failure::Credentials(why) => CliError::BadCredentials(why.clone()),
        Failure::Unreachable(why) => CliError::Unreachable {
            action: op.action.into(),
            detail: why.clone(),
        },
        Failure::Other(why) => CliError::Other(format!("{} failed: {why}", op.action)),
        Failure::Service { code, message } => match code.as_str() {
            c if ACCESS_DENIED_CODES.contains(&c) => {
                let (action, on) = denied_action(message)
                    .unwrap_or_else(|| (op.action.to_string(), op.resource.clone()));
                CliError::AccessDenied {
                    action,
                    on: on.map(|r| format!(" on {r}")).unwrap_or_default(),
                    message: message.clone(),
                }
            }
            c if BAD_CREDENTIAL_CODES.contains(&c) => {
                CliError::BadCredentials(format!("AWS refused them: {code}: {message}"))
            }
            "StateMachineDoesNotExist" => CliError::NoStateMachine { arn: resource },
            "InvalidArn" => CliError::BadArn {
                arn: resource,
                action: op.action.into(),
                message: message.clone(),
            },
            "ExecutionDoesNotExist" => CliError::NoSuchExecution(resource),
            _ => CliError::Aws {
                action: op.action.into(),
                code: code.clone(),
                message: message.clone(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str, message: &str) -> Failure {
        Failure::Service {
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn access_denied_names_the_action_aws_named() {
        let op = Op::new(
            "states:StartExecution",
            "arn:aws:states:eu-west-1:1:stateMachine:m",
        );
        let m = "User: arn:aws:sts::1:assumed-role/dev/me is not authorized to perform: \
                 states:StartExecution on resource: arn:aws:states:eu-west-1:1:stateMachine:m \
                 because no identity-based policy allows the states:StartExecution action";
        let e = classify(&op, &service("AccessDeniedException", m)).to_string();
        assert!(
            e.starts_with("access denied: the AWS identity in use may not call states:StartExecution on arn:aws:states:eu-west-1:1:stateMachine:m\n"),
            "{e}"
        );
        assert!(
            e.contains("allow states:StartExecution in its IAM policy"),
            "{e}"
        );
        // EC2 says it in its own words; the action is still found.
        let ec2 = "You are not authorized to perform this operation. User: u is not authorized \
                   to perform: ec2:TerminateInstances on resource: arn:aws:ec2:r:1:instance/i-1.";
        assert_eq!(
            denied_action(ec2),
            Some((
                "ec2:TerminateInstances".into(),
                Some("arn:aws:ec2:r:1:instance/i-1".into())
            ))
        );
        // Without the usual wording, the call made is named.
        let e = classify(&op, &service("AccessDenied", "Access Denied")).to_string();
        assert!(
            e.contains("may not call states:StartExecution on arn:aws:states"),
            "{e}"
        );
    }

    #[test]
    fn each_failure_says_what_to_do() {
        let op = Op::new(
            "states:StartExecution",
            "arn:aws:states:r:1:stateMachine:gone",
        );
        let e = classify(&op, &Failure::NoCredentials).to_string();
        assert!(
            e.starts_with("no AWS credentials found: set AWS_PROFILE"),
            "{e}"
        );
        assert!(
            e.contains("aws sso login") && e.contains("aws configure"),
            "{e}"
        );
        let e = classify(
            &op,
            &service("StateMachineDoesNotExist", "State Machine Does Not Exist"),
        )
        .to_string();
        assert!(
            e.starts_with("no such state machine: arn:aws:states:r:1:stateMachine:gone"),
            "{e}"
        );
        assert!(e.contains("output StateMachineArn"), "{e}");
        let e = classify(&op, &service("ExpiredTokenException", "expired")).to_string();
        assert!(e.contains("aws sso login"), "{e}");
        let e = classify(&op, &Failure::Unreachable("Connection refused".into())).to_string();
        assert!(
            e.contains("Connection refused") && e.contains("--endpoint-url"),
            "{e}"
        );
        let e = classify(&op, &service("ThrottlingException", "Rate exceeded")).to_string();
        assert_eq!(
            e,
            "states:StartExecution failed: ThrottlingException: Rate exceeded"
        );
        let e = classify(&op, &service("InvalidArn", "Invalid Arn: 'x'")).to_string();
        assert!(
            e.contains("not a valid ARN for states:StartExecution"),
            "{e}"
        );
    }
}

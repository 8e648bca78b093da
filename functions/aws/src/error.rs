//! What the adapters return when a call fails. They say what AWS answered; which Step Functions
//! error that becomes is the handlers' choice (`ephemera_functions::error`), so that the CLI,
//! which calls the same adapters, does not carry the state machine's taxonomy.

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
    /// Not AWS's answer but ephemera's own fault: a request the SDK refused to build, an item
    /// of ours we cannot read back, a caller that asked for what it never recorded.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AwsError {
    /// An SDK error with its service error code when there is one.
    pub fn sdk<E>(service: &'static str, operation: &'static str, err: E) -> AwsError
    where
        E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    {
        AwsError::Call {
            service,
            operation,
            code: err.code().unwrap_or("Unknown").to_string(),
            message: err.message().map(str::to_string).unwrap_or_else(|| {
                aws_smithy_types::error::display::DisplayErrorContext(&err).to_string()
            }),
        }
    }
}

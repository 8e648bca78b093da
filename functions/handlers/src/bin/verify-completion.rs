//! The verify-completion Lambda.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::dispatch::serve("verify-completion").await
}

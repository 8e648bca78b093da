//! The terminate-with-cost-report Lambda.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::dispatch::serve("terminate-with-cost-report").await
}

//! The quota-check Lambda.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::dispatch::serve("quota-check").await
}

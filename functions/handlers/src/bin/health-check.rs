//! The health-check Lambda.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::dispatch::serve("health-check").await
}

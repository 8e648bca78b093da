//! The launch-worker Lambda.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::dispatch::serve("launch-worker").await
}

//! The spot-interruption Lambda (EventBridge): a Spot notice fails the waiting task at once.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::dispatch::serve("spot-interruption").await
}

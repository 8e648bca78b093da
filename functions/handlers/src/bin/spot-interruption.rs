//! The spot-interruption Lambda (EventBridge): a Spot notice fails the waiting task at once.
//! It links its own handler and the clients it calls, nothing else (`wiring::spot_interruption`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::wiring::spot_interruption::serve().await
}

//! The terminate-with-cost-report Lambda.
//! It links its own handler and the clients it calls, nothing else (`wiring::terminate_with_cost_report`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::wiring::terminate_with_cost_report::serve().await
}

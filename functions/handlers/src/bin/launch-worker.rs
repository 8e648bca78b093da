//! The launch-worker Lambda.
//! It links its own handler and the clients it calls, nothing else (`wiring::launch_worker`).
// The handler's futures nest deeper than rustc's default layout depth (128).
#![recursion_limit = "256"]

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::wiring::launch_worker::serve().await
}

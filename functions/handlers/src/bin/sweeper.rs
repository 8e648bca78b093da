//! The sweeper Lambda (scheduled): terminates instances that outlived their run.
//! It links its own handler and the clients it calls, nothing else (`wiring::sweeper`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::wiring::sweeper::serve().await
}

//! The snapshot-database Lambda.
//! It links its own handler and the clients it calls, nothing else (`wiring::snapshot_database`).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::wiring::snapshot_database::serve().await
}

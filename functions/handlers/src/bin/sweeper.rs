//! The sweeper Lambda (scheduled): terminates instances that outlived their run.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ephemera_functions::dispatch::serve("sweeper").await
}

//! `ephemera-worker`: the heavy job, on the instance or locally.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use ephemera_worker::{db, queue, run, seed};

#[derive(Parser)]
#[command(
    name = "ephemera-worker",
    version,
    about = "FX bars in PostgreSQL to feature tables"
)]
struct Cli {
    /// postgres://user@host:port/db (the password belongs in a secret, not here).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// The source table of 1-minute bars.
    #[arg(long, default_value = "bars_1m", global = true)]
    source: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the source table (if absent), the queue and the output tables.
    Init,
    /// Load CSV files of bars (one per pair, named after it) into the source table.
    Seed { files: Vec<PathBuf> },
    /// Partitions by stage and state.
    Status,
    /// Compute stages for every (pair, month) not done yet.
    Run {
        /// Comma-separated: indicators, regression.
        #[arg(long, default_value = "indicators,regression", value_delimiter = ',')]
        stages: Vec<String>,
        /// Parallel partitions; defaults to the number of cores.
        #[arg(long)]
        concurrency: Option<usize>,
        #[arg(long, default_value = "local")]
        run_id: String,
        /// This worker's name in the queue's leases.
        #[arg(long)]
        worker_id: Option<String>,
        #[arg(long, default_value_t = 600)]
        lease_seconds: i64,
        #[arg(long, default_value_t = 3)]
        max_attempts: i32,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match main_inner(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn main_inner(cli: Cli) -> Result<()> {
    let url = cli
        .database_url
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--database-url (or DATABASE_URL) is required"))?;
    match cli.command {
        Command::Init => {
            let client = db::connect(&url).await?;
            db::init(&client, &cli.source).await?;
            println!("schema ready");
        }
        Command::Seed { files } => {
            let client = db::connect(&url).await?;
            db::init(&client, &cli.source).await?;
            for f in files {
                let s = seed::seed_file(&client, &cli.source, &f).await?;
                println!("{}", serde_json::to_string(&s)?);
            }
        }
        Command::Status => {
            let client = db::connect(&url).await?;
            for (stage, state, n) in queue::status(&client).await? {
                println!("{stage:<12} {state:<8} {n}");
            }
        }
        Command::Run {
            stages,
            concurrency,
            run_id,
            worker_id,
            lease_seconds,
            max_attempts,
        } => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let summary = run::run(run::Options {
                database_url: url,
                source: cli.source.clone(),
                stages,
                concurrency: concurrency.unwrap_or(cores),
                worker_id: worker_id.unwrap_or_else(|| format!("worker-{}", std::process::id())),
                run_id,
                lease_seconds,
                max_attempts,
            })
            .await?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
    }
    Ok(())
}

//! `ephemera-worker`: the heavy job, on the instance or locally. Here the command line is parsed
//! and handed to its path: a database tool, the feature run or a job, each either alone or as
//! the run's worker (the agent's session around it).

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

use ephemera_worker::agent::{self, logship, LinkArgs};
use ephemera_worker::exec::{self, ExecArgs};
use ephemera_worker::run::{self, RunArgs};
use ephemera_worker::{progress, tools};

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
    /// PEM CA bundle the server's certificate must chain to, instead of the system's roots and
    /// RDS's CAs (built in). Same as sslrootcert= in the URL.
    #[arg(long, env = "DATABASE_CA_FILE", global = true)]
    database_ca_file: Option<PathBuf>,
    /// The source table of 1-minute bars.
    #[arg(long, default_value = "bars_1m", global = true)]
    source: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Tool(tools::Tool),
    /// Compute stages for every (pair, month) not done yet.
    Run(RunArgs),
    /// Run any command as the run's worker: say "started", take the task token, heartbeat
    /// while it runs, and report how it ended (success when it exits 0; otherwise
    /// Worker.Failed with its exit status and the last lines of its stderr). On a Spot notice
    /// or SIGTERM the command gets SIGTERM, --grace seconds, then SIGKILL, and the run
    /// relaunches it (EPHEMERA_ATTEMPT and EPHEMERA_RESUMED tell it so).
    Exec(ExecArgs),
}

impl Command {
    /// The link to the run, for the commands that may be a run's worker.
    fn link(&self) -> Option<&LinkArgs> {
        match self {
            Command::Run(r) => Some(&r.link),
            Command::Exec(e) => Some(&e.link),
            Command::Tool(_) => None,
        }
    }
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(main_async());
    // An interrupted partition's computation may still be running on a blocking thread; its
    // result is not wanted, and the instance is going away: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

async fn main_async() -> ExitCode {
    let cli = Cli::parse();
    // A bar on a terminal (log lines printed above it); JSON log lines only otherwise. The
    // server's NOTICEs (schema already exists, ...) are not worth a line each.
    let progress = progress::bar(matches!(cli.command, Command::Run(_)));
    // Lines are buffered from the start; they are shipped once the instance id names the stream.
    let shipping = cli
        .command
        .link()
        .filter(|l| l.ships_logs())
        .map(|_| logship::Buffer::new(logship::CAPACITY));
    tracing_subscriber::fmt()
        .json()
        .with_writer(logship::Tee::new(
            progress::LogWriter(progress.clone()),
            shipping.clone(),
        ))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn")),
        )
        .init();
    match dispatch(cli, progress, shipping).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Each command to its path; `run` and `exec` alone, or as the run's worker with `--ssm-prefix`.
async fn dispatch(
    cli: Cli,
    progress: indicatif::ProgressBar,
    shipping: Option<Arc<logship::Buffer>>,
) -> Result<()> {
    match cli.command {
        // A job needs no database.
        Command::Exec(args) => {
            let plan = args.plan()?;
            match &args.link.ssm_prefix {
                None => exec::alone(&plan).await,
                Some(prefix) => agent::attend(&plan, prefix, &args.link, shipping).await,
            }
        }
        Command::Run(args) => {
            let url = tools::database_url(
                args.database_secret.as_deref(),
                cli.database_url,
                cli.database_ca_file.as_deref(),
            )
            .await?;
            let opts = args.options(url, cli.source, progress)?;
            match &args.link.ssm_prefix {
                None => run::alone(opts).await,
                Some(prefix) => agent::attend(&opts, prefix, &args.link, shipping).await,
            }
        }
        Command::Tool(tool) => {
            let url = tools::database_url(None, cli.database_url, cli.database_ca_file.as_deref())
                .await?;
            tools::run(tool, &url, &cli.source).await
        }
    }
}

//! `ephemera-worker`: the heavy job, on the instance or locally.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use ephemera_contract::names;
use ephemera_worker::agent::{link, logship};
use ephemera_worker::exec::{fetch, job, supervise};
use ephemera_worker::features::{arbitrage, Params};
use ephemera_worker::run::Ran;
use ephemera_worker::stage::Stage;
use ephemera_worker::{db, outputs, progress, queue, run, seed, store, validate};

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
    /// PEM CA bundle the server's certificate must chain to (RDS: global-bundle.pem); with
    /// sslmode=verify-full (host name checked) or verify-ca in the URL. Same as sslrootcert=.
    #[arg(long, env = "DATABASE_CA_FILE", global = true)]
    database_ca_file: Option<PathBuf>,
    /// The source table of 1-minute bars.
    #[arg(long, default_value = "bars_1m", global = true)]
    source: String,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the `run` variant costs nothing worth boxing it for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Create the source table (if absent), the queue and the registry of runs (each run creates
    /// its own output tables, in a schema of its own).
    Init,
    /// Load CSV files of bars (one per pair, named after it) into the source table.
    Seed { files: Vec<PathBuf> },
    /// Partitions by run, stage and state.
    Status {
        /// Only this run.
        #[arg(long)]
        run_id: Option<String>,
    },
    /// The validate stage's findings for a run, as JSON (every column with a problem).
    Report {
        #[arg(long)]
        run_id: String,
    },
    /// Remove a run's output tables, queue rows and validation findings.
    ///
    /// The run's schema (every feature table in it), its queue rows and its validation findings
    /// go in one transaction; other runs are not touched, and exported Parquet files are left
    /// where they are. Prints what was removed, as JSON.
    ///
    /// Exits non-zero, removing nothing, when the database holds nothing of the run (a typo
    /// should not pass for a drop; the message lists the runs there are), and when partitions
    /// of the run are under live leases (its workers are still on it) unless --force.
    Drop {
        /// The run to remove, as given to `run --run-id`.
        #[arg(long)]
        run_id: String,
        /// Drop even while workers hold leases on the run; their partitions then fail.
        #[arg(long)]
        force: bool,
    },
    /// Compute stages for every (pair, month) not done yet.
    Run {
        /// Comma-separated, from: indicators, regression, regime, currency-index, arbitrage,
        /// causality, validate, export.
        #[arg(long, default_value = "indicators,regression", value_delimiter = ',')]
        stages: Vec<Stage>,
        /// arbitrage: an event is |deviation| above this many basis points…
        #[arg(long, default_value_t = 2.0)]
        arbitrage_threshold_bp: f64,
        /// …for at least this many consecutive minutes.
        #[arg(long, default_value_t = 3)]
        arbitrage_min_minutes: usize,
        /// Where `export` writes Parquet and the manifest: s3://bucket/prefix/ or a directory.
        #[arg(long)]
        export: Option<String>,
        /// Parallel partitions; defaults to the number of cores.
        #[arg(long)]
        concurrency: Option<usize>,
        /// Names the run's queue rows and the schema of its output tables
        /// (`ephemera_run_<id>_<hash>`): the same id resumes, another one computes afresh.
        #[arg(long, default_value = "local")]
        run_id: String,
        /// This worker's name in the queue's leases.
        #[arg(long)]
        worker_id: Option<String>,
        #[arg(long, default_value_t = 600)]
        lease_seconds: i64,
        #[arg(long, default_value_t = 3)]
        max_attempts: i32,
        /// Secrets Manager secret holding the database URL (instead of --database-url).
        #[arg(long)]
        database_secret: Option<String>,
        /// On an ephemera instance: the run's SSM path (signals and task token live there).
        #[arg(long)]
        ssm_prefix: Option<String>,
        #[arg(long, default_value_t = 1)]
        attempt: u32,
        #[arg(long, default_value_t = 300)]
        heartbeat_seconds: u64,
        /// How long to wait for the task token after saying "started".
        #[arg(long, default_value_t = 3600)]
        token_timeout_seconds: u64,
        /// On an ephemera instance: the CloudWatch Logs group the log lines are also shipped
        /// to, stream `<run id>/<attempt>/<instance id>`; empty ships nothing.
        #[arg(long, default_value = ephemera_contract::logs::WORKER_LOG_GROUP)]
        log_group: String,
    },
    /// Run any command as the run's worker: say "started", take the task token, heartbeat
    /// while it runs, and report how it ended (success when it exits 0; otherwise
    /// Worker.Failed with its exit status and the last lines of its stderr). On a Spot notice
    /// or SIGTERM the command gets SIGTERM, --grace seconds, then SIGKILL, and the run
    /// relaunches it (EPHEMERA_ATTEMPT and EPHEMERA_RESUMED tell it so).
    Exec {
        /// Seconds between SIGTERM and SIGKILL; within the Spot notice's two minutes.
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=110))]
        grace: u64,
        /// The run's id, told to the command (EPHEMERA_RUN_ID).
        #[arg(long, default_value = "local")]
        run_id: String,
        /// Which of the run's workers this is (EPHEMERA_WORKER), of how many (EPHEMERA_WORKERS).
        #[arg(long, default_value_t = 1)]
        worker: u32,
        #[arg(long, default_value_t = 1)]
        workers: u32,
        /// On an ephemera instance: the run's SSM path (signals and task token live there).
        #[arg(long)]
        ssm_prefix: Option<String>,
        #[arg(long, default_value_t = 1)]
        attempt: u32,
        #[arg(long, default_value_t = 300)]
        heartbeat_seconds: u64,
        /// How long to wait for the task token after saying "started".
        #[arg(long, default_value_t = 3600)]
        token_timeout_seconds: u64,
        /// The CloudWatch Logs group the command's lines are shipped to; empty ships nothing.
        #[arg(long, default_value = ephemera_contract::logs::WORKER_LOG_GROUP)]
        log_group: String,
        /// After the command exits 0: every file under this directory is stored under --to with
        /// a manifest (key, bytes, SHA-256) that verify-completion checks.
        #[arg(long, requires = "to")]
        outputs: Option<PathBuf>,
        /// Where --outputs go: s3://bucket/prefix/ (the RunSpec's expect.export_prefix) or a
        /// directory.
        #[arg(long, requires = "outputs")]
        to: Option<String>,
        /// Where the command runs; --fetch, --checkpoint and --outputs are relative to it.
        #[arg(long, default_value = ".")]
        workdir: PathBuf,
        /// Before the command starts: an archive (s3://bucket/job.tar.gz, .tgz, .tar) unpacked
        /// into --workdir, or every object under a prefix (s3://bucket/inputs/) copied there.
        /// May be given more than once.
        #[arg(long)]
        fetch: Vec<String>,
        /// A directory the command keeps its checkpoints in (EPHEMERA_CHECKPOINT): saved under
        /// --checkpoint-to every --checkpoint-every seconds and when the instance is going away,
        /// and put back before the command starts on the next attempt.
        #[arg(long, requires = "checkpoint_to")]
        checkpoint: Option<PathBuf>,
        /// Where checkpoints are saved: s3://bucket/prefix/ (the export bucket), under
        /// <run id>/worker-<n>/; or a directory.
        #[arg(long, requires = "checkpoint")]
        checkpoint_to: Option<String>,
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=86_400))]
        checkpoint_every: u64,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
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
    let progress = progress::bar(matches!(cli.command, Command::Run { .. }));
    // Lines are buffered from the start; they are shipped once the instance id names the stream.
    let shipping = match &cli.command {
        Command::Run {
            ssm_prefix: Some(_),
            log_group,
            ..
        }
        | Command::Exec {
            ssm_prefix: Some(_),
            log_group,
            ..
        } if !log_group.is_empty() => Some(logship::Buffer::new(logship::CAPACITY)),
        _ => None,
    };
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
    match main_inner(cli, progress, shipping).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn main_inner(
    cli: Cli,
    progress: indicatif::ProgressBar,
    shipping: Option<Arc<logship::Buffer>>,
) -> Result<()> {
    if let Command::Exec { .. } = cli.command {
        return exec(cli.command, shipping).await;
    }
    let url = database_url(&cli).await?;
    match cli.command {
        run @ Command::Run { .. } => run_stages(run, url, cli.source, progress, shipping).await,
        tool => database_tool(tool, &url, &cli.source).await,
    }
}

/// The database's URL: from the run's secret, the flag or the environment, with the CA bundle.
async fn database_url(cli: &Cli) -> Result<String> {
    let secret = match &cli.command {
        Command::Run {
            database_secret: Some(id),
            ..
        } => Some(link::database_url_from_secret(id).await?),
        _ => None,
    };
    let url = secret.or_else(|| cli.database_url.clone()).ok_or_else(|| {
        anyhow::anyhow!("--database-url (or DATABASE_URL, or --database-secret) is required")
    })?;
    Ok(match &cli.database_ca_file {
        Some(ca) => db::with_root_cert(&url, ca),
        None => url,
    })
}

/// init, seed, status, report, drop: one call each on the database, the answer on stdout.
async fn database_tool(command: Command, url: &str, source: &str) -> Result<()> {
    match command {
        Command::Init => {
            let client = db::connect(url).await?;
            db::init(&client, source).await?;
            println!("schema ready");
        }
        Command::Seed { files } => {
            let client = db::connect(url).await?;
            db::init(&client, source).await?;
            for f in files {
                let s = seed::seed_file(&client, source, &f).await?;
                println!("{}", serde_json::to_string(&s)?);
            }
        }
        Command::Status { run_id } => {
            let client = db::connect(url).await?;
            for (run, stage, state, n) in queue::status(&client, run_id.as_deref()).await? {
                println!("{run:<24} {stage:<12} {state:<8} {n}");
            }
        }
        Command::Report { run_id } => {
            let client = db::connect(url).await?;
            let report = validate::findings(&client, &run_id).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Drop { run_id, force } => {
            let mut client = db::connect(url).await?;
            db::init(&client, source).await?;
            let dropped = outputs::drop(&mut client, &run_id, force).await?;
            println!("{}", serde_json::to_string_pretty(&dropped)?);
        }
        // Handled by their own paths: a job needs no database, a run more than one call.
        Command::Exec { .. } | Command::Run { .. } => {}
    }
    Ok(())
}

/// `run`: the stages over every partition not done yet, on every core; on an ephemera instance
/// linked to the run (started, task token, heartbeats, Spot notice) with its lines shipped.
async fn run_stages(
    command: Command,
    url: String,
    source: String,
    progress: indicatif::ProgressBar,
    shipping: Option<Arc<logship::Buffer>>,
) -> Result<()> {
    let Command::Run {
        stages,
        arbitrage_threshold_bp,
        arbitrage_min_minutes,
        export,
        concurrency,
        run_id,
        worker_id,
        lease_seconds,
        max_attempts,
        database_secret: _,
        ssm_prefix,
        attempt,
        heartbeat_seconds,
        token_timeout_seconds,
        log_group,
    } = command
    else {
        anyhow::bail!("run_stages is given the run command only");
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let opts = run::Options {
        database_url: url,
        source,
        stages,
        concurrency: concurrency.unwrap_or(cores),
        worker_id: worker_id.unwrap_or_else(|| format!("worker-{}", std::process::id())),
        run_id,
        lease_seconds,
        max_attempts,
        export: export.as_deref().map(store::Target::parse).transpose()?,
        stop: CancellationToken::new(),
        progress,
        params: Params {
            arbitrage: arbitrage::Params {
                threshold_bp: arbitrage_threshold_bp,
                min_minutes: arbitrage_min_minutes,
            },
        },
    };
    let Some(prefix) = ssm_prefix else {
        let summary = run::run(opts).await?;
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    };
    let link = link::Link::new(&prefix, attempt, heartbeat_seconds).await?;
    let stream =
        ephemera_contract::logs::worker_log_stream(&opts.run_id, attempt, &link.instance_id);
    let shipper = start_shipper(shipping, &log_group, &stream).await;
    let outcome = orchestrated(opts, &link, token_timeout_seconds).await;
    if let Err(e) = &outcome {
        // Said here too, so that the shipped lines tell why the worker stopped.
        tracing::error!(error = %format!("{e:#}"), "the worker stops");
    }
    if let Some(s) = shipper {
        s.finish(LOG_FLUSH_PATIENCE).await;
    }
    outcome
}

/// `exec`'s link to the run: none locally.
struct Linked {
    ssm_prefix: Option<String>,
    attempt: u32,
    heartbeat_seconds: u64,
    token_timeout_seconds: u64,
    log_group: String,
}

/// `exec`'s command line as the job's plan and its link to the run.
fn exec_plan(command: Command) -> Result<(job::Plan, Linked)> {
    let Command::Exec {
        grace,
        run_id,
        worker,
        workers,
        ssm_prefix,
        attempt,
        heartbeat_seconds,
        token_timeout_seconds,
        log_group,
        outputs,
        to,
        workdir,
        fetch,
        checkpoint,
        checkpoint_to,
        checkpoint_every,
        command,
    } = command
    else {
        anyhow::bail!("not an exec command");
    };
    let outputs = match (outputs, to) {
        (Some(dir), Some(to)) => Some((dir, store::Target::parse(&to)?)),
        _ => None,
    };
    let checkpoint = match (checkpoint, checkpoint_to) {
        (Some(dir), Some(to)) => Some(job::Checkpointing {
            dir,
            to: store::Target::parse(&to).context("--checkpoint-to")?,
            every: Duration::from_secs(checkpoint_every),
        }),
        _ => None,
    };
    let plan = job::Plan {
        job: supervise::Job {
            command,
            grace: Duration::from_secs(grace),
            env: supervise::run_env(&supervise::Place {
                run_id: &run_id,
                attempt,
                worker,
                workers,
            }),
            workdir,
        },
        fetch: fetch
            .iter()
            .map(|f| fetch::Source::parse(f))
            .collect::<Result<_>>()?,
        checkpoint,
        outputs,
        run_id,
        worker,
    };
    let linked = Linked {
        ssm_prefix,
        attempt,
        heartbeat_seconds,
        token_timeout_seconds,
        log_group,
    };
    Ok((plan, linked))
}

/// A job: locally, the command's own exit status; on an instance, supervised with the link.
async fn exec(command: Command, shipping: Option<Arc<logship::Buffer>>) -> Result<()> {
    let (plan, linked) = exec_plan(command)?;
    let Some(prefix) = &linked.ssm_prefix else {
        let ready = job::prepare(&plan).await?;
        let stop = CancellationToken::new();
        let sigterm = on_sigterm(stop.clone(), "SIGTERM: stopping the job");
        let o = job::run(&ready, &stop).await?;
        sigterm.abort();
        anyhow::ensure!(
            o.ended.succeeded(),
            "{}",
            supervise::failure_cause(&supervise::command_line(&plan.job.command), &o)
        );
        if let Some(manifest) = job::publish(&plan).await? {
            println!("{manifest}");
        }
        return Ok(());
    };
    let link = link::Link::new(prefix, linked.attempt, linked.heartbeat_seconds).await?;
    let stream =
        ephemera_contract::logs::worker_log_stream(&plan.run_id, linked.attempt, &link.instance_id);
    let shipper = start_shipper(shipping, &linked.log_group, &stream).await;
    let outcome = supervised(&plan, &link, linked.token_timeout_seconds).await;
    if let Err(e) = &outcome {
        tracing::error!(error = %format!("{e:#}"), "the worker stops");
    }
    if let Some(s) = shipper {
        s.finish(LOG_FLUSH_PATIENCE).await;
    }
    outcome
}

/// Ships the buffered log lines to `stream` of `group`, when there is a buffer.
async fn start_shipper(
    shipping: Option<Arc<logship::Buffer>>,
    group: &str,
    stream: &str,
) -> Option<logship::Shipper> {
    let buffer = shipping?;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&link::sdk_config().await);
    Some(logship::Shipper::start(logs, group, stream, buffer))
}

/// Cancels `stop` on SIGTERM (the instance shutting down, usually a Spot reclaim).
fn on_sigterm(stop: CancellationToken, what: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            tracing::warn!("{what}");
            stop.cancel();
        }
    })
}

/// How long the last log lines may take to reach CloudWatch Logs at exit.
const LOG_FLUSH_PATIENCE: Duration = Duration::from_secs(10);

/// On an ephemera instance: started → work (while the token arrives) → heartbeat → report.
async fn orchestrated(
    opts: run::Options,
    link: &link::Link,
    token_timeout_seconds: u64,
) -> Result<()> {
    let attempt = link.attempt;
    link.started(Duration::from_secs(token_timeout_seconds))
        .await?;
    let stop = opts.stop.clone();
    let notice = Arc::new(AtomicBool::new(false));
    let spot = link.watch_spot(notice.clone(), stop.clone());
    let sigterm = on_sigterm(stop.clone(), "SIGTERM: aborting the partitions in hand");
    let work = tokio::spawn(run::run_and_hand_back(opts));
    let token = link
        .wait_for_token(Duration::from_secs(token_timeout_seconds))
        .await?;
    let heartbeat = link.heartbeat(&token);
    let outcome = work.await;
    spot.abort();
    sigterm.abort();
    // SIGTERM on a Spot instance is usually the reclaim itself: resume elsewhere if so.
    if stop.is_cancelled() && !notice.load(Ordering::SeqCst) {
        if let Some(action) = link.spot_notice().await {
            tracing::warn!(%action, "the Spot interruption notice is posted");
            notice.store(true, Ordering::SeqCst);
        }
    }
    // Heartbeats go on while the report is sent (and tried again if throttled).
    let reported = report(link, &token, outcome, &notice, &stop, attempt).await;
    heartbeat.abort();
    reported
}

/// On an ephemera instance, a job: started → token → inputs and checkpoint → the command,
/// heartbeating → its outputs → its report.
async fn supervised(plan: &job::Plan, link: &link::Link, token_timeout_seconds: u64) -> Result<()> {
    link.started(Duration::from_secs(token_timeout_seconds))
        .await?;
    let token = link
        .wait_for_token(Duration::from_secs(token_timeout_seconds))
        .await?;
    let heartbeat = link.heartbeat(&token);
    let stop = CancellationToken::new();
    let notice = Arc::new(AtomicBool::new(false));
    let spot = link.watch_spot(notice.clone(), stop.clone());
    let sigterm = on_sigterm(stop.clone(), "SIGTERM: stopping the job");
    let outcome = match job::prepare(plan).await {
        Ok(ready) => job::run(&ready, &stop).await,
        Err(e) => Err(e.context("before the command started")),
    };
    spot.abort();
    sigterm.abort();
    if stop.is_cancelled() && !notice.load(Ordering::SeqCst) && link.spot_notice().await.is_some() {
        notice.store(true, Ordering::SeqCst);
    }
    let reported = report_job(plan, link, &token, outcome, notice.load(Ordering::SeqCst)).await;
    heartbeat.abort();
    reported
}

/// A job's report: SpotInterrupted (it runs again), success with its summary once its outputs
/// are stored, or Worker.Failed with how it ended.
async fn report_job(
    plan: &job::Plan,
    link: &link::Link,
    token: &link::Token,
    outcome: Result<supervise::Outcome>,
    notice: bool,
) -> Result<()> {
    let command = supervise::command_line(&plan.job.command);
    let o = match outcome {
        Ok(o) => o,
        Err(e) => {
            return link
                .fail(token, names::WORKER_FAILED, &format!("{e:#}"))
                .await
        }
    };
    if notice {
        let cause = format!(
            "Spot interruption notice on {} (attempt {}): the job was stopped ({}) and runs again on the next attempt",
            link.instance_id, link.attempt, o.ended
        );
        return link.fail(token, names::SPOT_INTERRUPTED, &cause).await;
    }
    if !o.ended.succeeded() || o.stopped {
        let cause = supervise::failure_cause(&command, &o);
        tracing::error!(%cause, "the job failed");
        return link.fail(token, names::WORKER_FAILED, &cause).await;
    }
    let manifest = match job::publish(plan).await {
        Ok(m) => m,
        Err(e) => {
            let cause = format!("`{command}` exited 0, but its outputs could not be stored: {e:#}");
            return link.fail(token, names::WORKER_FAILED, &cause).await;
        }
    };
    let summary = ephemera_contract::Summary {
        run_id: plan.run_id.clone(),
        partitions_done: 0,
        partitions_failed: 0,
        rows_in: 0,
        rows_out: 0,
        processed_here: 0,
        stages: vec![],
        seconds: o.seconds,
        manifest,
        validation: None,
        job: Some(ephemera_contract::summary::Job {
            command: command
                .chars()
                .take(ephemera_contract::summary::JOB_COMMAND_KEPT)
                .collect(),
            exit_code: 0,
            seconds: o.seconds,
        }),
    };
    println!("{}", serde_json::to_string_pretty(&summary)?);
    link.succeed(token, &summary).await
}

/// Sends the run's outcome: SpotInterrupted, Failed, or success with the summary.
async fn report(
    link: &link::Link,
    token: &link::Token,
    outcome: Result<Result<run::Ran>, tokio::task::JoinError>,
    notice: &AtomicBool,
    stop: &CancellationToken,
    attempt: u32,
) -> Result<()> {
    match outcome {
        Ok(Ok(ran)) if notice.load(Ordering::SeqCst) => {
            let cause = format!(
                "Spot interruption notice on {} (attempt {attempt}); {} partitions done so far, {} in hand rolled back and handed back, the rest resume on the next attempt",
                link.instance_id, ran.summary.partitions_done, ran.interrupted
            );
            link.fail(token, names::SPOT_INTERRUPTED, &cause).await?;
            tracing::warn!(error = names::SPOT_INTERRUPTED, "reported the interruption");
            Ok(())
        }
        Ok(Ok(_)) if stop.is_cancelled() => {
            link.fail(
                token,
                names::WORKER_FAILED,
                "stopped by SIGTERM before the work was done",
            )
            .await
        }
        Ok(Ok(Ran { summary, .. })) => {
            println!("{}", serde_json::to_string_pretty(&summary)?);
            link.succeed(token, &summary).await
        }
        Ok(Err(e)) => {
            tracing::error!(error = %format!("{e:#}"), "the run failed");
            link.fail(token, names::WORKER_FAILED, &format!("{e:#}"))
                .await
        }
        Err(e) => {
            link.fail(
                token,
                names::WORKER_FAILED,
                &format!("the worker crashed: {e}"),
            )
            .await
        }
    }
}

//! `run`: enqueue the run's partitions, then work them off with one connection per task until
//! none is left, and summarise from the queue (so a resumed run reports the whole job).
//!
//! An interruption (Spot notice, SIGTERM) aborts the partitions in hand at once: their
//! transactions never commit (the sessions are cancelled and closed, so the server rolls them
//! back), their leases are handed back for any worker to claim, and `run` returns within moments
//! however long a partition would have taken.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use ephemera_contract::manifest::MANIFEST_FILE;
use ephemera_contract::{Manifest, ManifestObject, Summary, Validation};
use indicatif::ProgressBar;
use ta_lib::Core;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::agent::{LinkArgs, Worked, Workload};
use crate::features::{arbitrage, Params};
use crate::partition::{self, SharedReads, Work};
use crate::quality::{self, Exported, Validated};
use crate::queue::Claim;
use crate::stage::Stage;
use crate::store::{Store, Target};
use crate::{db, outputs, queue};

/// How long an idle task waits before looking again while other partitions are in progress.
const IDLE: Duration = Duration::from_millis(500);
/// How long handing back an interrupted partition may take (it waits for the aborted session to
/// let go of the queue row); past it the lease simply expires.
const RELEASE_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Options {
    pub database_url: String,
    pub source: String,
    pub stages: Vec<Stage>,
    pub concurrency: usize,
    pub worker_id: String,
    pub run_id: String,
    pub lease_seconds: i64,
    pub max_attempts: i32,
    /// Where `export` writes (`s3://bucket/prefix/` or a directory).
    pub export: Option<Target>,
    /// Cancelled on a Spot notice or SIGTERM: stop claiming, abort the partitions in hand
    /// (rolled back, leases handed back) and return.
    pub stop: CancellationToken,
    /// Drawn on a terminal; hidden otherwise.
    pub progress: ProgressBar,
    /// The stages' settings (arbitrage threshold, …).
    pub params: Params,
}

/// What [`run_and_hand_back`] returns: the summary it sends, and what only the worker needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Ran {
    pub summary: Summary,
    /// Partitions this process had in hand when it was interrupted, rolled back and handed back
    /// (said in the Spot interruption's cause, not in the summary).
    pub interrupted: u64,
}

pub async fn run(opts: Options) -> Result<Summary> {
    Ok(run_and_hand_back(opts).await?.summary)
}

/// [`run`], also counting the partitions an interruption handed back.
pub async fn run_and_hand_back(opts: Options) -> Result<Ran> {
    let started = Instant::now();
    if opts.stages.contains(&Stage::Export) && opts.export.is_none() {
        anyhow::bail!("stage 'export' needs --export s3://bucket/prefix/ or a directory");
    }
    let mut client = db::connect(&opts.database_url).await?;
    db::init(&client, &opts.source).await?;
    let schema = outputs::create(&mut client, &opts.run_id).await?;
    tracing::info!(run_id = %opts.run_id, schema, "the run's outputs");
    let queued = queue::enqueue(&client, &opts.run_id, &opts.source, &opts.stages).await?;
    tracing::info!(queued, run_id = %opts.run_id, stages = ?opts.stages, "partitions enqueued");
    let store = match &opts.export {
        Some(t) => Some(Store::new(t.clone()).await),
        None => None,
    };

    let progress = tokio::spawn(show_progress(
        db::connect(&opts.database_url).await?,
        opts.run_id.clone(),
        opts.progress.clone(),
    ));
    let (processed_here, interrupted) = run_tasks(&opts, store.as_ref()).await?;
    progress.abort();
    hand_back(&client, &interrupted).await;

    // Partitions commit asynchronously (partition::ASYNC_COMMIT): none is counted before it is
    // on disk.
    db::flush(&client).await?;
    let mut summary = summarise(&client, &opts).await?;
    summary.processed_here = processed_here;
    if let (Some(store), false) = (&store, opts.stop.is_cancelled()) {
        summary.manifest = write_manifest(&client, &opts.run_id, store).await?;
    }
    summary.seconds = started.elapsed().as_secs_f64();
    opts.progress.finish_with_message(format!(
        "{} done, {} failed",
        summary.partitions_done, summary.partitions_failed
    ));
    Ok(Ran {
        summary,
        interrupted: interrupted.len() as u64,
    })
}

/// The run's tasks, one per partition at a time (`concurrency`), sharing their reads: the
/// partitions they did, and each interrupted task's claim with its owner (to hand back).
async fn run_tasks(opts: &Options, store: Option<&Store>) -> Result<(u64, Vec<(String, Claim)>)> {
    let core = Arc::new(Core::new());
    let reads = Arc::new(SharedReads::new(opts.concurrency.max(1)));
    let mut tasks = vec![];
    for t in 0..opts.concurrency.max(1) {
        let (opts, core, store, reads) =
            (opts.clone(), core.clone(), store.cloned(), reads.clone());
        tasks.push(tokio::spawn(async move {
            let owner = format!("{}/{t}", opts.worker_id);
            let client = db::connect(&opts.database_url).await?;
            let cx = Work {
                core: &core,
                source: &opts.source,
                owner: &owner,
                store: store.as_ref(),
                params: &opts.params,
                reads: &reads,
            };
            let (done, aborted) = work(client, &cx, &opts).await?;
            Ok::<_, anyhow::Error>((done, aborted.map(|c| (owner.clone(), c))))
        }));
    }
    let owners = (0..opts.concurrency.max(1))
        .map(|t| format!("{}/{t}", opts.worker_id))
        .collect();
    // Stopped when this returns, before the hand-back: a partition that cannot be handed back
    // must be left to expire.
    let _keeper = AbortOnDrop(tokio::spawn(keep_leases(
        opts.database_url.clone(),
        opts.run_id.clone(),
        owners,
        opts.lease_seconds,
    )));
    let mut processed = 0;
    let mut interrupted = vec![];
    for t in tasks {
        let (done, aborted) = t.await??;
        processed += done;
        interrupted.extend(aborted);
    }
    Ok((processed, interrupted))
}

/// A task that ends with its handle's owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps the leases this worker holds from expiring while it lives: every third of
/// `lease_seconds`, on a connection of its own (the tasks' are inside their partitions'
/// transactions). A lease then expires only when its worker is gone (killed, its instance
/// reclaimed without a hand-back, its database connection lost), and a partition slower than the
/// lease is not taken over while its worker is still at it (which, done again by another worker
/// up to `max_attempts` times, failed the partition). The queue's idea, as SQS's
/// ChangeMessageVisibility or a Kubernetes Lease's renewal.
/// Never returns: it ends when its task is aborted.
pub async fn keep_leases(
    database_url: String,
    run_id: String,
    owners: Vec<String>,
    lease_seconds: i64,
) {
    let every = Duration::from_secs_f64((lease_seconds as f64 / 3.0).max(1.0));
    let mut client = None;
    loop {
        tokio::time::sleep(every).await;
        if client.is_none() {
            client = db::connect(&database_url).await.ok();
        }
        let Some(c) = &client else {
            tracing::warn!("the leases in hand could not be extended: no database connection");
            continue;
        };
        if let Err(e) = queue::extend(c, &run_id, &owners, lease_seconds).await {
            tracing::warn!(error = %format!("{e:#}"), "the leases in hand could not be extended; trying again");
            client = None;
        }
    }
}

/// The default owner name of this worker's leases: its PID alone repeats across instances
/// booted from one image (two workers named alike would complete, hand back and extend each
/// other's partitions), so 64 random bits follow it.
fn default_worker_id() -> String {
    let nonce = getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness: the time's nanoseconds still tell two instances apart.
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as u64
    });
    format!("worker-{}-{nonce:016x}", std::process::id())
}

/// Hands the interrupted tasks' partitions back to the queue, each within [`RELEASE_WITHIN`];
/// one that cannot be is left to its lease's expiry, and said so.
async fn hand_back(client: &Client, interrupted: &[(String, Claim)]) {
    for (owner, c) in interrupted {
        match tokio::time::timeout(RELEASE_WITHIN, queue::release(client, owner, c)).await {
            Ok(Ok(_)) => {
                tracing::warn!(stage = %c.stage, pair = %c.pair, month = %c.month, "interrupted: partition rolled back and handed back");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), stage = %c.stage, pair = %c.pair, month = %c.month, "interrupted partition not handed back: its lease will expire");
            }
            Err(_) => {
                tracing::error!(stage = %c.stage, pair = %c.pair, month = %c.month, "interrupted partition not handed back in time: its lease will expire");
            }
        }
    }
}

/// One task: claim, process, repeat; wait while others hold partitions this run still needs.
/// Returns the partitions it did, and the claim it was interrupted in (to hand back).
async fn work(mut client: Client, cx: &Work<'_>, opts: &Options) -> Result<(u64, Option<Claim>)> {
    let mut done = 0u64;
    while !opts.stop.is_cancelled() {
        // Not raced against the interruption: a claim that commits must be known to be handed back.
        let claim = queue::claim(
            &client,
            &opts.run_id,
            cx.owner,
            opts.lease_seconds,
            opts.max_attempts,
        )
        .await?;
        let Some(c) = claim else {
            if !queue::open_work(&client, &opts.run_id).await? {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(IDLE) => {}
                () = opts.stop.cancelled() => {}
            }
            continue;
        };
        if opts.stop.is_cancelled() {
            return Ok((done, Some(c)));
        }
        let cancel = client.cancel_token();
        let outcome = tokio::select! {
            biased;
            r = partition::process(&mut client, cx, &c) => Some(r),
            () = opts.stop.cancelled() => None,
        };
        let Some(outcome) = outcome else {
            // The partition's work was dropped before its commit. Close the session and cancel
            // whatever statement it is still running (a COPY, a DELETE): the server rolls the
            // transaction back now rather than when that statement would have ended.
            drop(client);
            if let Err(e) = db::cancel(&opts.database_url, &cancel).await {
                tracing::warn!(error = %e, "could not cancel the interrupted partition's statement; the server rolls it back when it ends");
            }
            return Ok((done, Some(c)));
        };
        match outcome {
            Ok(d) => {
                done += 1;
                tracing::info!(stage = %c.stage, pair = %c.pair, month = %c.month, rows_out = d.rows_out, "partition done");
            }
            Err(e) if e.downcast_ref::<queue::LeaseLost>().is_some() => {
                tracing::warn!(error = %e, "partition taken over; its work was rolled back");
            }
            Err(e) => {
                tracing::error!(stage = %c.stage, pair = %c.pair, month = %c.month, error = %format!("{e:#}"), "partition failed");
                queue::fail(&client, cx.owner, &c, &format!("{e:#}"), opts.max_attempts).await?;
            }
        }
    }
    Ok((done, None))
}

/// Keeps the bar at the run's done/total, whoever does the work.
async fn show_progress(client: Client, run_id: String, bar: ProgressBar) {
    loop {
        if let Ok(r) = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE state IN ('done', 'failed'))
                   FROM ephemera.partitions WHERE run_id = $1",
                &[&run_id],
            )
            .await
        {
            bar.set_length(r.get::<_, i64>(0) as u64);
            bar.set_position(r.get::<_, i64>(1) as u64);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn summarise(client: &Client, opts: &Options) -> Result<Summary> {
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'failed'),
                    coalesce(sum(rows_in) FILTER (WHERE state = 'done' AND rank = 0), 0)::bigint,
                    coalesce(sum(rows_out) FILTER (WHERE state = 'done' AND rank = 0), 0)::bigint
               FROM ephemera.partitions WHERE run_id = $1",
            &[&opts.run_id],
        )
        .await?;
    let validation = if opts.stages.contains(&Stage::Validate) {
        // Each validate partition's report, read through the type validate wrote it with.
        let rows = client
            .query(
                "SELECT quality FROM ephemera.partitions
                  WHERE run_id = $1 AND stage = 'validate' AND state = 'done'",
                &[&opts.run_id],
            )
            .await?;
        let mut v = Validation {
            partitions: rows.len() as u64,
            ..Validation::default()
        };
        for r in &rows {
            let report: Validated = quality::read(r.get(0))?.unwrap_or_default();
            v.problems += report.problems;
            v.nulls_beyond_warm_up += report.nulls_beyond_warm_up;
            v.non_finite += report.non_finite;
            v.out_of_range += report.out_of_range;
            v.unexpected_gaps += report.gaps.unexpected;
        }
        Some(v)
    } else {
        None
    };
    Ok(Summary {
        run_id: opts.run_id.clone(),
        partitions_done: row.get::<_, i64>(0) as u64,
        partitions_failed: row.get::<_, i64>(1) as u64,
        rows_in: row.get::<_, i64>(2) as u64,
        rows_out: row.get::<_, i64>(3) as u64,
        processed_here: 0,
        stages: opts.stages.iter().map(|s| s.name().to_string()).collect(),
        seconds: 0.0,
        manifest: None,
        validation,
        job: None,
    })
}

/// Writes the manifest once every export partition of the run is done; returns where it is.
async fn write_manifest(client: &Client, run_id: &str, store: &Store) -> Result<Option<String>> {
    let rows = client
        .query(
            "SELECT state, quality FROM ephemera.partitions
              WHERE run_id = $1 AND stage = 'export'",
            &[&run_id],
        )
        .await?;
    if rows.is_empty() || rows.iter().any(|r| r.get::<_, String>(0) != "done") {
        tracing::warn!(run_id, "export incomplete: no manifest written");
        return Ok(None);
    }
    let mut objects: Vec<ManifestObject> = vec![];
    for r in &rows {
        let exported: Option<Exported> = quality::read(r.get(1))?;
        objects.extend(exported.map(|e| e.objects).unwrap_or_default());
    }
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    let manifest = Manifest {
        run_id: run_id.to_string(),
        objects,
    };
    let key = store.target.key(MANIFEST_FILE);
    store
        .put(
            &key,
            serde_json::to_vec_pretty(&manifest)?,
            "application/json",
        )
        .await?;
    let url = store.target.url(&key);
    tracing::info!(manifest = %url, objects = manifest.objects.len(), "manifest written");
    Ok(Some(url))
}

/// `run`'s command line (the database and the source table are the worker's global flags).
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Comma-separated, from: indicators, regression, regime, currency-index, arbitrage,
    /// causality, validate, export.
    #[arg(long, default_value = "indicators,regression", value_delimiter = ',')]
    pub stages: Vec<Stage>,
    /// arbitrage: an event is |deviation| above this many basis points…
    #[arg(long, default_value_t = 2.0)]
    pub arbitrage_threshold_bp: f64,
    /// …for at least this many consecutive minutes.
    #[arg(long, default_value_t = 3)]
    pub arbitrage_min_minutes: usize,
    /// Where `export` writes Parquet and the manifest: s3://bucket/prefix/ or a directory.
    #[arg(long)]
    pub export: Option<String>,
    /// Parallel partitions; defaults to the number of cores.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Names the run's queue rows and the schema of its output tables
    /// (`ephemera_run_<id>_<hash>`): the same id resumes, another one computes afresh.
    #[arg(long, default_value = "local")]
    pub run_id: String,
    /// This worker's name in the queue's leases.
    #[arg(long)]
    pub worker_id: Option<String>,
    #[arg(long, default_value_t = 600)]
    pub lease_seconds: i64,
    #[arg(long, default_value_t = 3)]
    pub max_attempts: i32,
    /// Secrets Manager secret holding the database URL (instead of --database-url).
    #[arg(long)]
    pub database_secret: Option<String>,
    #[command(flatten)]
    pub link: LinkArgs,
}

impl RunArgs {
    /// The run's options, on every core unless told otherwise.
    pub fn options(
        &self,
        database_url: String,
        source: String,
        progress: ProgressBar,
    ) -> Result<Options> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Options {
            database_url,
            source,
            stages: self.stages.clone(),
            concurrency: self.concurrency.unwrap_or(cores),
            worker_id: self.worker_id.clone().unwrap_or_else(default_worker_id),
            run_id: self.run_id.clone(),
            lease_seconds: self.lease_seconds,
            max_attempts: self.max_attempts,
            export: self.export.as_deref().map(Target::parse).transpose()?,
            stop: CancellationToken::new(),
            progress,
            params: Params {
                arbitrage: arbitrage::Params {
                    threshold_bp: self.arbitrage_threshold_bp,
                    min_minutes: self.arbitrage_min_minutes,
                },
            },
        })
    }
}

/// The run alone (no run's worker): its summary printed.
pub async fn alone(opts: Options) -> Result<()> {
    let summary = run(opts).await?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// The feature run as the run's worker: it works while the token is on its way, and a stop
/// aborts the partitions in hand (rolled back, handed back) and returns what was done.
impl Workload for Options {
    const STARTS_BEFORE_TOKEN: bool = true;
    const ON_SIGTERM: &'static str = "SIGTERM: aborting the partitions in hand";

    fn run_id(&self) -> &str {
        &self.run_id
    }

    fn work(&self, stop: CancellationToken) -> impl Future<Output = Worked> + Send + 'static {
        let opts = Options {
            stop,
            ..self.clone()
        };
        async move {
            match run_and_hand_back(opts).await {
                Ok(ran) => Worked::Returned {
                    spot: format!(
                        "; {} partitions done so far, {} in hand rolled back and handed back, the rest resume on the next attempt",
                        ran.summary.partitions_done, ran.interrupted
                    ),
                    summary: ran.summary,
                },
                Err(e) => Worked::Failed {
                    cause: format!("{e:#}"),
                },
            }
        }
    }
}

//! `make demo`: one whole run on this machine, with no AWS account.
//!
//! moto behind the front door plays AWS (the template's IAM enforced, a fresh account's ways), a
//! private PostgreSQL holds the FX bars of `data/fx-1m`, the deployed ASL runs with the real
//! Lambda handlers, and EC2 is played here (`ec2`): each instance the run launches is the real
//! worker binary, started with that instance's user data. Everything started ends with the demo
//! (moto, PostgreSQL and the workers die with this process), so the next demo starts clean.

pub mod container;
pub mod ec2;
pub mod follow;
pub mod workers;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ephemera_tests::e2e::State;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use ephemera_tests::e2e::{self, Finished};
use ephemera_tests::{clients, fixtures, harness, postgres};

/// The quota codes of the standard (A, C, D, H, I, M, R, T, Z) families.
const SPOT_QUOTA: &str = "L-34B43A08";
use ephemera_tests::iam::EXPORT_BUCKET;
const SECRET: &str = "ephemera/demo-database";
const STAGES: &str =
    "indicators,regression,regime,currency-index,arbitrage,causality,validate,export";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Spot launch, the worker computes every partition, verification, report.
    Happy,
    /// Spot takes the first instance back mid-run; the run relaunches and the worker resumes.
    SpotInterruption,
    /// The vCPU quota is short: an increase is requested and waited for, then the run goes on.
    QuotaWait,
    /// The estimate exceeds the budget: nothing is launched, the report says why.
    OverBudget,
    /// Three workers on one queue: Spot takes one back (relaunched, it resumes), another is
    /// killed for good (its partitions are taken over); each partition is done exactly once.
    ThreeWorkers,
    /// Any job: `examples/resumable-job/job.py` under `ephemera-worker exec`, its inputs fetched
    /// from S3; Spot takes the first instance back mid-job, and the relaunch resumes from the
    /// checkpoint the notice saved; its outputs are stored and verified.
    Exec,
    /// The same job as a container image (`job.image`): built from this machine's files,
    /// served by a registry on the loopback address playing ECR, pulled and run by the worker
    /// under podman; Spot takes the first instance back mid-job and the relaunch's container
    /// resumes from the checkpoint.
    Container,
    /// The same job cancelled mid-job with `ephemera cancel --reason …`: the execution stops at
    /// once, the stack's rule on the stopped execution terminates the instance (the job gets
    /// SIGTERM and its grace, and saves its checkpoint), and the report and the email say
    /// CANCELLED with the bill and the reason.
    Cancel,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Happy => "happy",
            Scenario::SpotInterruption => "spot-interruption",
            Scenario::QuotaWait => "quota-wait",
            Scenario::OverBudget => "over-budget",
            Scenario::ThreeWorkers => "three-workers",
            Scenario::Exec => "exec",
            Scenario::Container => "container",
            Scenario::Cancel => "cancel",
        }
    }

    /// Whether the run ended as this scenario shows it should; the reason when not.
    pub fn judge(self, f: &Finished) -> std::result::Result<(), String> {
        let attempts = f.report["attempts"].as_array().map_or(0, Vec::len);
        match self {
            Scenario::OverBudget => {
                if f.status == "FAILED"
                    && f.error.as_deref() == Some(ephemera_core::names::OVER_BUDGET)
                    && attempts == 0
                {
                    return Ok(());
                }
                Err(format!(
                    "expected a refusal ({}) with nothing launched, got {} {:?} with {attempts} \
                     attempt(s)",
                    ephemera_core::names::OVER_BUDGET,
                    f.status,
                    f.error
                ))
            }
            Scenario::Cancel => {
                let outcome = f.report["outcome"].as_str().unwrap_or("no report");
                if f.status == "ABORTED"
                    && f.error.as_deref() == Some(ephemera_core::names::CANCELLED)
                    && outcome == "CANCELLED"
                    && f.report["error"]["Cause"] == CANCEL_REASON
                    && attempts >= 1
                {
                    return Ok(());
                }
                Err(format!(
                    "expected a cancelled run (ABORTED, {}, report CANCELLED with the reason), got {} {:?}, report {outcome} with {attempts} attempt(s)",
                    ephemera_core::names::CANCELLED,
                    f.status,
                    f.error
                ))
            }
            _ if f.status != "SUCCEEDED" => Err(format!(
                "the run ended {}: {} - {}",
                f.status,
                f.error.as_deref().unwrap_or("no error"),
                f.cause.as_deref().unwrap_or("no cause")
            )),
            Scenario::SpotInterruption | Scenario::Exec | Scenario::Container
                if f.visited(State::Relaunch) == 0 || attempts < 2 =>
            {
                Err(format!(
                    "Spot's reclaim did not relaunch the worker ({attempts} attempt(s))"
                ))
            }
            Scenario::QuotaWait if f.visited(State::WaitQuota) == 0 => {
                Err("the run did not wait for the quota increase".into())
            }
            Scenario::ThreeWorkers => judge_workers(&f.report),
            _ => Ok(()),
        }
    }
}

/// The three-workers report: three workers, worker 1 relaunched and reported, worker 2
/// reported, worker 3 lost to its heartbeat timeout; every instance costed, and the run's
/// cost their sum.
fn judge_workers(report: &Value) -> std::result::Result<(), String> {
    let workers = report["workers"].as_array().cloned().unwrap_or_default();
    let line = |slot: u64| workers.iter().find(|w| w["slot"] == slot).cloned();
    let mut problems = vec![];
    if workers.len() != workers::WORKERS as usize {
        problems.push(format!("{} workers in the report", workers.len()));
    }
    match line(1) {
        Some(w) if w["attempts"].as_u64() >= Some(2) && w["reported"] == true => {}
        w => problems.push(format!("worker 1 was not relaunched and reported: {w:?}")),
    }
    match line(2) {
        Some(w) if w["reported"] == true => {}
        w => problems.push(format!("worker 2 did not report: {w:?}")),
    }
    match line(3) {
        Some(w) if w["error"]["Error"] == ephemera_core::names::WORKER_TIMED_OUT => {}
        w => problems.push(format!("worker 3 was not lost to its silence: {w:?}")),
    }
    let attempts = report["attempts"].as_array().cloned().unwrap_or_default();
    for slot in 1..=u64::from(workers::WORKERS) {
        if !attempts.iter().any(|a| a["worker"] == slot) {
            problems.push(format!("worker {slot}'s instance is not costed"));
        }
    }
    let sum = |k: &str| attempts.iter().filter_map(|a| a[k].as_f64()).sum::<f64>();
    let parts = sum("compute_usd")
        + sum("ebs_usd")
        + report["orchestration"]["usd"].as_f64().unwrap_or(0.0);
    let actual = report["actual_usd"].as_f64().unwrap_or(-1.0);
    if (parts - actual).abs() > 1e-4 * attempts.len().max(1) as f64 {
        problems.push(format!(
            "the run's ${actual} is not its instances' sum ${parts}"
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(problems.join("; "))
}

#[derive(Debug, clap::Parser)]
#[command(
    name = "ephemera-demo",
    about = "A whole ephemera run on this machine: moto plays AWS, the worker plays the instance"
)]
pub struct Options {
    #[arg(long, env = "SCENARIO", value_enum, default_value = "happy")]
    pub scenario: Scenario,
    /// The worker binary each launched instance runs.
    #[arg(long)]
    pub worker: PathBuf,
    /// Where the report, the email, the worker logs and the export are written.
    #[arg(long, default_value = "demo-output")]
    pub out: PathBuf,
    /// Pairs loaded from data/fx-1m (each about two months of 1-minute bars).
    #[arg(long, value_delimiter = ',', default_value = "EURUSD,GBPUSD,EURGBP")]
    pub pairs: Vec<String>,
}

/// Lines above a progress bar on a terminal; plain lines elsewhere (CI logs).
#[derive(Clone)]
pub struct Console {
    bar: Option<ProgressBar>,
    last: Arc<Mutex<Option<(u64, u64)>>>,
}

impl Console {
    pub fn new() -> Console {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "  worker [{wide_bar}] {pos}/{len} partitions done, {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Console {
            bar,
            last: Arc::default(),
        }
    }

    pub fn line(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None => println!("{s}"),
        }
    }

    pub fn progress(&self, done: u64, all: u64) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == Some((done, all)) {
            return;
        }
        *last = Some((done, all));
        match &self.bar {
            Some(b) => {
                b.set_length(all);
                b.set_position(done);
            }
            None => println!("          worker: {done}/{all} partitions done"),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fx-1m")
}

/// The worker's own subcommands (init, seed) on the demo's database.
async fn worker_tool(worker: &Path, db_url: &str, args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new(worker)
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .with_context(|| format!("starting {}", worker.display()))?;
    if !out.status.success() {
        bail!(
            "ephemera-worker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The demo's RunSpec: the fixture network of this region, Spot first, the demo's secret and
/// export, and short waits so the emulated run takes seconds, not minutes.
fn runspec(scenario: Scenario, run_id: &str, net: &fixtures::Network, topic: &str) -> Value {
    let export = format!("s3://{EXPORT_BUCKET}/runs/{run_id}/");
    let mut spec = fixtures::runspec(run_id, net, Some(topic));
    spec["worker"]["args"] = json!([
        "run",
        "--stages",
        STAGES,
        "--export",
        export,
        "--database-secret",
        SECRET
    ]);
    spec["expect"] = json!({"min_rows": 100000, "export_prefix": export});
    spec["limits"]["heartbeat_seconds"] = json!(30);
    spec["limits"]["boot_timeout_seconds"] = json!(120);
    match scenario {
        Scenario::QuotaWait => spec["worker"]["market"] = json!("spot"),
        Scenario::OverBudget => spec["limits"]["budget_usd"] = json!(0.05),
        Scenario::ThreeWorkers => {
            spec["worker"]["count"] = json!(workers::WORKERS);
            // Leases short enough that the killed worker's partition is taken over in
            // seconds (a live worker extends its leases every third of this).
            if let Some(args) = spec["worker"]["args"].as_array_mut() {
                args.extend([json!("--lease-seconds"), json!("15")]);
            }
        }
        Scenario::Exec | Scenario::Container | Scenario::Cancel => {
            // The script fetched with its bars, or the image's own (the bars fetched alone).
            let command = match scenario {
                Scenario::Container => container::COMMAND,
                _ => ["python3", "job.py"],
            };
            spec["worker"]["args"] = json!([
                "exec",
                "--fetch",
                format!("s3://{EXPORT_BUCKET}/{}", job_archive_key(run_id)),
                "--checkpoint",
                "ckpt",
                "--checkpoint-to",
                // Under the run's own prefix: the run's session lists and writes nowhere else.
                format!("s3://{EXPORT_BUCKET}/runs/{run_id}/checkpoints/"),
                "--checkpoint-every",
                "10",
                "--outputs",
                "out",
                "--to",
                export,
                "--grace",
                "20",
                "--",
                command[0],
                command[1]
            ]);
            spec["expect"] = json!({"export_prefix": export, "min_objects": 2});
        }
        Scenario::Happy | Scenario::SpotInterruption => {}
    }
    spec
}

/// Where the exec scenario's job (the script and its bars) is stored for `--fetch`.
fn job_archive_key(run_id: &str) -> String {
    format!("jobs/{run_id}/job.tar.gz")
}

/// `examples/resumable-job/job.py` and the pairs' bars under `bars/`, as one gzip'd tar.
fn job_archive(pairs: &[String]) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    tar.append_path_with_name(root.join("examples/resumable-job/job.py"), "job.py")?;
    for p in pairs {
        tar.append_path_with_name(
            data_dir().join(format!("{p}.csv.gz")),
            format!("bars/{p}.csv.gz"),
        )?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// Runs the demo; Ok(true) when the run ended as the scenario should.
pub async fn run(o: Options, console: Console) -> Result<bool> {
    let region = "us-east-1";
    let run_id = format!("demo-{}", o.scenario.name());
    let out = fresh_dir(&o.out.join(&run_id))?;
    let worker = std::fs::canonicalize(&o.worker)
        .with_context(|| format!("the worker binary {}", o.worker.display()))?;
    console.line(&format!(
        "ephemera demo, scenario {}: AWS is moto behind the front door, EC2 is this machine",
        o.scenario.name()
    ));
    let h = tokio::task::spawn_blocking(harness).await?;
    console.line(&format!(
        "  moto {} behind the front door {} (the template's IAM enforced)",
        h.moto, h.endpoint
    ));
    let db_url = database(&worker, &o.pairs, &console).await?;
    let account = Account::provide(region, &db_url).await?;
    let image = match o.scenario {
        Scenario::Container => {
            let image = container::build(&out, &run_id)?;
            console.line(&format!(
                "  the job's image {}: Python and job.py from this machine, served by docker-registry on the loopback address as ECR",
                image.reference
            ));
            Some(image)
        }
        _ => None,
    };
    let demo = Demo {
        scenario: o.scenario,
        region,
        run_id,
        out,
        worker,
        db_url,
        console,
        image,
    };
    demo.stage(&account, &o.pairs).await?;
    let execution = demo.start(&account).await?;
    let finished = demo.play(&execution).await?;
    let verdict = demo.judge(&finished, &account).await;
    present(&finished, &account.inbox, &demo.out).await?;
    let verdict = verdict.and_then(|()| written_for_a_reader(&demo.out));
    match &verdict {
        Ok(()) => demo.console.line(&format!(
            "\ndemo {}: the run ended as it should ({}).",
            demo.scenario.name(),
            finished.status
        )),
        Err(why) => demo
            .console
            .line(&format!("\ndemo {} FAILED: {why}", demo.scenario.name())),
    }
    Ok(verdict.is_ok())
}

/// `dir`, emptied (the previous demo of the scenario is cleared).
fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

/// A private PostgreSQL with the queue and the pairs' bars of `data/fx-1m`; its URL.
async fn database(worker: &Path, pairs: &[String], console: &Console) -> Result<String> {
    let pg = tokio::task::spawn_blocking(postgres::postgres).await?;
    let db_url = pg.database("demo");
    worker_tool(worker, &db_url, &["init"]).await?;
    let mut files = vec!["seed".to_string()];
    for p in pairs {
        let f = data_dir().join(format!("{p}.csv.gz"));
        if !f.exists() {
            bail!("--pairs: no bars for {p} ({} is absent)", f.display());
        }
        files.push(f.display().to_string());
    }
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    worker_tool(worker, &db_url, &files).await?;
    console.line(&format!(
        "  PostgreSQL on port {}: 1-minute bars of {} loaded",
        pg.port,
        pairs.join(", ")
    ));
    Ok(db_url)
}

/// What the stack and the operator provide on AWS: network, topic, buckets, the secret, the
/// workers' log group.
struct Account {
    s3: aws_sdk_s3::Client,
    net: fixtures::Network,
    inbox: fixtures::Inbox,
}

impl Account {
    async fn provide(region: &str, db_url: &str) -> Result<Account> {
        let aws = clients(region);
        let net = fixtures::network(&aws).await;
        let inbox = fixtures::inbox(region, "ephemera-reports").await;
        // The operator's buckets, as the template names them: the export (outputs, reports) and
        // the artifact (the worker, each month's page).
        for bucket in ephemera_tests::iam::BUCKETS {
            aws.s3
                .create_bucket()
                .bucket(bucket)
                .send()
                .await
                .with_context(|| format!("creating the bucket {bucket}"))?;
        }
        let sm = aws_sdk_secretsmanager::Client::new(&ephemera_tests::sdk_config(region));
        sm.create_secret()
            .name(SECRET)
            .secret_string(db_url)
            .send()
            .await
            .context("storing the database URL as a secret")?;
        // The stack's log group, where each worker ships its lines (`ephemera logs` reads them).
        aws_sdk_cloudwatchlogs::Client::new(&ephemera_tests::sdk_config(region))
            .create_log_group()
            .log_group_name(ephemera_tests::iam::worker_log_group())
            .send()
            .await
            .context("creating the workers' log group")?;
        Ok(Account {
            s3: aws.s3.clone(),
            net,
            inbox,
        })
    }
}

/// One demo run: its scenario, where it writes, the worker that plays each instance.
struct Demo {
    scenario: Scenario,
    region: &'static str,
    run_id: String,
    out: PathBuf,
    worker: PathBuf,
    db_url: String,
    console: Console,
    /// The container scenario's image and the registry serving it (stopped with the demo).
    image: Option<container::JobImage>,
}

impl Demo {
    /// What the scenario needs before the run starts: the job's archive, a short quota.
    async fn stage(&self, account: &Account, pairs: &[String]) -> Result<()> {
        if matches!(
            self.scenario,
            Scenario::Exec | Scenario::Container | Scenario::Cancel
        ) {
            account
                .s3
                .put_object()
                .bucket(EXPORT_BUCKET)
                .key(job_archive_key(&self.run_id))
                .body(job_archive(pairs)?.into())
                .send()
                .await
                .context("storing the job's archive")?;
            self.console.line(&format!(
                "  the job: examples/resumable-job/job.py with the bars of {}, as s3://{EXPORT_BUCKET}/{}",
                pairs.join(", "),
                job_archive_key(&self.run_id)
            ));
        }
        if self.scenario == Scenario::Cancel {
            // The stack's rule on stopped executions (AWS's EventBridge), played by the door.
            harness().door.deliver_stops(self.region);
        }
        if self.scenario == Scenario::QuotaWait {
            harness().door.with_quotas(self.region, |q| {
                q.applied.insert(SPOT_QUOTA.into(), 8.0);
                q.next_script = vec!["PENDING".into(), "CASE_OPENED".into(), "APPROVED".into()];
            });
            self.console
                .line("  the Spot vCPU quota is 8: a 16-vCPU worker needs an increase");
        }
        Ok(())
    }

    /// The deployed state machine started on the scenario's RunSpec; the execution's ARN.
    async fn start(&self, account: &Account) -> Result<String> {
        let mut spec = runspec(
            self.scenario,
            &self.run_id,
            &account.net,
            &account.inbox.topic_arn,
        );
        if let Some(image) = &self.image {
            spec["job"] = json!({"image": image.reference});
        }
        let spec_path = self.out.join("runspec.json");
        std::fs::write(&spec_path, serde_json::to_string_pretty(&spec)?)?;
        let machine = e2e::create_state_machine(self.region).await;
        let execution =
            e2e::start(self.region, &machine, &format!("{}-1", self.run_id), &spec).await;
        self.console.line(&format!(
            "  started {execution}\n  RunSpec: {}\n",
            spec_path.display()
        ));
        Ok(execution)
    }

    /// EC2 played (each instance the worker binary), Spot played as the scenario wants, the
    /// execution followed to its end.
    async fn play(&self, execution: &str) -> Result<Finished> {
        let player = ec2::Player::start(
            ec2::Setup {
                region: self.region,
                run_id: self.run_id.clone(),
                worker_bin: self.worker.clone(),
                logs: self.out.clone(),
            },
            self.console.clone(),
        );
        let spot = self.spot(&player, execution);
        let sfn = aws_sdk_sfn::Client::new(&ephemera_tests::sdk_config(self.region));
        let followed =
            follow::follow(&sfn, execution, &self.db_url, &self.run_id, &self.console).await;
        if let Some(t) = spot {
            t.abort();
        }
        let mut followed = followed;
        if self.scenario == Scenario::Cancel {
            // A stopped execution has no output: its report is what the stack's rule's target
            // (terminate-with-cost-report) made of the stop.
            if let Ok(f) = followed.as_mut() {
                f.report = stopped_report(execution, &self.console).await?;
            }
        }
        player.stop().await;
        followed
    }

    /// The scenario's hand on the instances: Spot's reclaim, or a worker killed for good.
    fn spot(
        &self,
        player: &ec2::Player,
        execution: &str,
    ) -> Option<tokio::task::JoinHandle<Result<()>>> {
        let (region, seen, console) = (self.region, player.seen.clone(), self.console.clone());
        let (db_url, run_id) = (self.db_url.clone(), self.run_id.clone());
        match self.scenario {
            Scenario::SpotInterruption => Some(tokio::spawn(reclaim_first_instance(
                region, db_url, run_id, seen, console,
            ))),
            Scenario::Exec | Scenario::Container => Some(tokio::spawn(reclaim_the_job(
                region,
                self.out.clone(),
                seen,
                console,
            ))),
            Scenario::Cancel => Some(tokio::spawn(cancel_mid_job(
                region,
                self.out.clone(),
                execution.to_string(),
                seen,
                console,
            ))),
            Scenario::ThreeWorkers => Some(tokio::spawn(workers::reclaim_one_and_kill_one(
                region, db_url, run_id, seen, console,
            ))),
            _ => None,
        }
    }

    /// Whether the run ended as the scenario should, with the scenario's own evidence.
    async fn judge(
        &self,
        finished: &Finished,
        account: &Account,
    ) -> std::result::Result<(), String> {
        self.scenario.judge(finished)?;
        match self.scenario {
            Scenario::ThreeWorkers => {
                workers::exactly_once(&self.db_url, &self.run_id, &self.out).await
            }
            Scenario::Cancel => stopped_with_its_checkpoint(&self.out),
            Scenario::Exec | Scenario::Container => {
                // The one worker's share, in its own folder of the job's outputs.
                let key = format!("runs/{}/worker-1/result.json", self.run_id);
                resumed(&account.s3, &key, &self.console).await
            }
            _ => Ok(()),
        }
    }
}

/// The report's page and the email as the user gets them, refused if they show a Rust debug
/// form (`Some(…)`, `None`, `Name { field: … }`) anywhere, or quote an AWS error: no scenario
/// stages one (a reclaim, a short quota, a lost worker reach the report as what happened), so
/// a quoted one is the demo's account lacking what a deployment has, shown to a newcomer as if
/// the run had met it.
fn written_for_a_reader(out: &Path) -> std::result::Result<(), String> {
    let mut problems = vec![];
    for name in ["report.html", "email.txt"] {
        let text = std::fs::read_to_string(out.join(name)).map_err(|e| format!("{name}: {e}"))?;
        let found = ephemera_core::plain_text::debug_forms(&text);
        if !found.is_empty() {
            problems.push(format!("{name} shows debug forms: {found:?}"));
        }
        let aws = ephemera_core::plain_text::aws_errors(&text);
        if !aws.is_empty() {
            problems.push(format!(
                "{name} quotes AWS errors the scenario did not stage: {}",
                aws.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(problems.join("; "))
}

/// Spot's reclaim of attempt 1 once its worker has finished a few partitions: the notice
/// first, then the termination after the (scaled) two minutes.
async fn reclaim_first_instance(
    region: &'static str,
    db_url: String,
    run_id: String,
    mut seen: tokio::sync::watch::Receiver<ec2::Seen>,
    console: Console,
) -> Result<()> {
    let instance = loop {
        if let Some(id) = seen.borrow().instances.get(&(1, 1)) {
            break id.clone();
        }
        seen.changed().await?;
    };
    let (db, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    loop {
        let done: i64 = db
            .query_one(
                "SELECT count(*) FROM ephemera.partitions WHERE run_id = $1 AND state = 'done'",
                &[&run_id],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if done >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    console.line(&format!(
        "EC2: Spot interruption notice for {instance}; it is terminated in 10 s (2 min on AWS)"
    ));
    harness()
        .door
        .reclaim_spot(region, &instance, Duration::from_secs(10));
    Ok(())
}

/// Spot's reclaim of the job's first instance once the job has saved a few checkpoints of its
/// own (its lines in the worker's log).
async fn reclaim_the_job(
    region: &'static str,
    out: PathBuf,
    mut seen: tokio::sync::watch::Receiver<ec2::Seen>,
    console: Console,
) -> Result<()> {
    let instance = loop {
        if let Some(id) = seen.borrow().instances.get(&(1, 1)) {
            break id.clone();
        }
        seen.changed().await?;
    };
    let log = ec2::log_path(&out, 1, 1);
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("checkpoint saved")
        .count()
        < 5
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    console.line(&format!(
        "EC2: Spot interruption notice for {instance} mid-job; it is terminated in 10 s (2 min on AWS)"
    ));
    harness()
        .door
        .reclaim_spot(region, &instance, Duration::from_secs(10));
    Ok(())
}

/// What the cancel scenario gives as `ephemera cancel --reason`.
const CANCEL_REASON: &str = "demo: the input data was wrong";

/// `ephemera cancel` (the CLI built beside this demo) once the job has saved a few checkpoints:
/// what an operator types when a running job must stop.
async fn cancel_mid_job(
    region: &'static str,
    out: PathBuf,
    execution: String,
    mut seen: tokio::sync::watch::Receiver<ec2::Seen>,
    console: Console,
) -> Result<()> {
    while !seen.borrow().instances.contains_key(&(1, 1)) {
        seen.changed().await?;
    }
    let log = ec2::log_path(&out, 1, 1);
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("checkpoint saved")
        .count()
        < 3
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cli = std::env::current_exe()?.with_file_name("ephemera");
    console.line(&format!(
        "$ ephemera cancel {execution} --reason \"{CANCEL_REASON}\""
    ));
    let done = tokio::process::Command::new(&cli)
        .args(["cancel", &execution, "--reason", CANCEL_REASON])
        .env("AWS_ENDPOINT_URL", &harness().endpoint)
        .env("AWS_REGION", region)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .env_remove("RUST_LOG")
        .output()
        .await
        .with_context(|| format!("running {}", cli.display()))?;
    for line in String::from_utf8_lossy(&done.stdout).lines() {
        console.line(&format!("  {line}"));
    }
    if !done.status.success() {
        bail!(
            "ephemera cancel failed: {}",
            String::from_utf8_lossy(&done.stderr)
        );
    }
    Ok(())
}

/// The report the stack's rule on the stopped execution made (within a minute on AWS).
async fn stopped_report(execution: &str, console: &Console) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match harness().door.stop_report(execution) {
            Some(Ok(report)) => {
                console.line(
                    "EventBridge: the stopped execution's status change reached terminate-with-cost-report",
                );
                return Ok(report);
            }
            Some(Err(e)) => bail!("the teardown of the stopped run failed: {e}"),
            None if tokio::time::Instant::now() > deadline => {
                bail!("no teardown of the stopped run within 120 s")
            }
            None => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The agent's log: the job was stopped with SIGTERM, and its checkpoint saved after that.
fn stopped_with_its_checkpoint(out: &Path) -> std::result::Result<(), String> {
    let log = std::fs::read_to_string(ec2::log_path(out, 1, 1)).map_err(|e| e.to_string())?;
    match log.rsplit_once("stopping the job: SIGTERM") {
        Some((_, after)) if after.contains("checkpoint saved") => Ok(()),
        Some(_) => Err("the job was stopped but saved no checkpoint after its SIGTERM".into()),
        None => Err("the job was never stopped with SIGTERM".into()),
    }
}

/// The job's own word that the relaunch resumed from its checkpoint rather than starting over.
async fn resumed(
    s3: &aws_sdk_s3::Client,
    key: &str,
    console: &Console,
) -> std::result::Result<(), String> {
    let got = s3
        .get_object()
        .bucket(EXPORT_BUCKET)
        .key(key)
        .send()
        .await
        .map_err(|e| format!("the job's result s3://{EXPORT_BUCKET}/{key}: {e}"))?;
    let bytes = got
        .body
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .into_bytes();
    let result: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let from = result["resumed_from_bar"].as_u64().unwrap_or(0);
    if result["attempt"] != 2 || from == 0 {
        return Err(format!(
            "the relaunch did not resume from the checkpoint: {result}"
        ));
    }
    console.line(&format!(
        "  the job resumed on attempt 2 from bar {from} of {} (its checkpoint), not from the start",
        result["bars"]
    ));
    Ok(())
}

/// The report, the email, and the export, where a user finds them.
async fn present(f: &Finished, inbox: &fixtures::Inbox, out: &Path) -> Result<()> {
    let report = &f.report;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    let typed: ephemera_core::report::CostReport =
        serde_json::from_value(report.clone()).context("the execution's report")?;
    std::fs::write(
        out.join("report.html"),
        ephemera_core::report_html::render(&typed),
    )?;

    let mut emails = inbox.read().await;
    if emails.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        emails = inbox.read().await;
    }
    println!("\n──── the email SNS sent ────");
    match emails.first() {
        Some(e) => {
            let body = e
                .body
                .split("\n--- report (JSON) ---")
                .next()
                .unwrap_or_default();
            println!("Subject: {}\n\n{}", e.subject, body.trim_end());
            std::fs::write(
                out.join("email.txt"),
                format!("Subject: {}\n\n{}", e.subject, e.body),
            )?;
        }
        None => println!("(no email arrived)"),
    }
    println!("────────────────────────────");

    let downloaded = download_export(f, out).await?;
    println!("\nWritten to {}:", out.display());
    println!(
        "  report.json           the cost report ({}: ${:.4} actual, ${:.4} estimated)",
        report["outcome"].as_str().unwrap_or("?"),
        report["actual_usd"].as_f64().unwrap_or(0.0),
        report["estimate_usd"].as_f64().unwrap_or(0.0)
    );
    println!("  report.html           the same as a page: timeline, cost split, attempts, checks");
    println!("  email.txt             the email, with the JSON report");
    println!("  runspec.json          the RunSpec the run started with");
    for entry in std::fs::read_dir(out)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("worker-") && name.ends_with(".log") {
            println!("  {name:<21} a worker's log (JSON lines)");
        }
    }
    if downloaded > 0 {
        println!(
            "  export/               {downloaded} files beside {}: what the manifest lists (Parquet \
             per stage and month, or a job's outputs), the manifest, and the report as \
             terminate-with-cost-report stored it",
            manifest_of(f).unwrap_or("the manifest")
        );
    }
    Ok(())
}

/// The run's manifest, as a worker's report names it.
fn manifest_of(f: &Finished) -> Option<&str> {
    f.workers
        .as_array()?
        .iter()
        .find_map(|w| w["result"]["manifest"].as_str())
}

/// Copies the run's export (Parquet files and manifest) out of the emulated S3.
async fn download_export(f: &Finished, out: &Path) -> Result<usize> {
    let Some(manifest) = manifest_of(f) else {
        return Ok(0);
    };
    let Some((bucket, key)) = ephemera_core::runspec::parse_s3_url(manifest) else {
        return Ok(0);
    };
    let folder = key.trim_end_matches(ephemera_core::contract::manifest::MANIFEST_FILE);
    // A job's manifest is in its worker's folder (`worker-1/`): the export is the folder above,
    // with every worker's share and the report.
    let prefix = match folder.trim_end_matches('/').rsplit_once('/') {
        Some((above, last)) if last.starts_with("worker-") => &folder[..=above.len()],
        _ => folder,
    };
    let s3 = clients("us-east-1").s3;
    let mut n = 0;
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for o in page.context("listing the export")?.contents() {
            let Some(k) = o.key() else { continue };
            let body = s3
                .get_object()
                .bucket(bucket)
                .key(k)
                .send()
                .await
                .context("reading the export")?
                .body
                .collect()
                .await?
                .into_bytes();
            let path = out.join("export").join(k.trim_start_matches(prefix));
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, body)?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every scenario the front page lists is one the demo plays, every scenario is listed
    /// there, and CI runs each: what a newcomer is told to try works.
    #[test]
    fn every_scenario_is_on_the_front_page_and_run_by_ci() {
        use clap::ValueEnum as _;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
        let named = |text: &str| -> Vec<String> {
            text.split("SCENARIO=")
                .skip(1)
                .map(|rest| {
                    rest.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                        .collect::<String>()
                })
                .filter(|n| !n.is_empty())
                .collect()
        };
        let known: Vec<&str> = Scenario::value_variants()
            .iter()
            .map(|s| s.name())
            .collect();
        for n in named(&readme) {
            assert!(
                known.contains(&n.as_str()),
                "README names SCENARIO={n}: no such scenario"
            );
        }
        let (listed, run) = (named(&readme), named(&ci));
        for s in known {
            let shown = s == "happy" || listed.iter().any(|n| n == s);
            assert!(shown, "the README does not list SCENARIO={s}");
            let ran = (s == "happy" && ci.lines().any(|l| l.trim() == "make demo"))
                || run.iter().any(|n| n == s);
            assert!(ran, ".ci/run does not run SCENARIO={s}");
        }
    }

    fn written(email: &str) -> std::result::Result<(), String> {
        let out = std::env::temp_dir().join(format!("ephemera-demo-page-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("email.txt"), email).unwrap();
        std::fs::write(out.join("report.html"), "<p>Run demo-happy SUCCEEDED.</p>").unwrap();
        let verdict = written_for_a_reader(&out);
        std::fs::remove_dir_all(&out).unwrap();
        verdict
    }

    #[test]
    fn a_demo_whose_email_quotes_an_aws_error_it_did_not_stage_fails() {
        assert_eq!(written("Run demo-happy SUCCEEDED.\n"), Ok(()));
        let note = "Note: the month's page was not written to s3://ephemera-artifacts/months/2026-12/index.html: s3 PutObject failed: NoSuchBucket: The specified bucket does not exist\n";
        let verdict = written(note).unwrap_err();
        assert!(
            verdict
                .contains("email.txt quotes AWS errors the scenario did not stage: NoSuchBucket"),
            "{verdict}"
        );
    }
}

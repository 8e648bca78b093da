//! Scale: 1, 2 and 4 worker processes (the real `ephemera-worker run`, one run id each time) on
//! the bench's bars, against 1 process in the same run; and the queue's own ceiling, claims/s of
//! claim + complete on partitions with no work, with N sessions. Fails loudly unless every
//! partition was done exactly once and the outputs equal the single-process run's.

use std::process::{Command, Stdio};
use std::time::Instant;

use ephemera_contract::Summary;
use ephemera_worker::{db, outputs, queue};

/// What the processes run: the stages of the bench's main figure.
const STAGES: &str = "indicators,regression";
const PROCESSES: [usize; 3] = [1, 2, 4];
const SESSIONS: [usize; 4] = [1, 2, 4, 8];
/// Partitions per claim-rate measurement: enough for a few seconds at the rates seen here.
const CLAIM_PARTITIONS: i64 = 2000;

/// Per output table: rows and a digest of every row's text (order-free).
async fn digests(client: &tokio_postgres::Client, run_id: &str) -> Vec<(String, i64, String)> {
    let mut out = vec![];
    for table in STAGES.split(',') {
        let r = client
            .query_one(
                &format!(
                    "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text
                       FROM {} t",
                    outputs::table(run_id, table).unwrap()
                ),
                &[],
            )
            .await
            .unwrap();
        out.push((table.to_string(), r.get(0), r.get(1)));
    }
    out
}

/// One measurement: `n` processes of `per_process` tasks on run `scale-<n>`, started together.
/// Returns the wall time and the number of partitions.
async fn processes(
    client: &tokio_postgres::Client,
    url: &str,
    n: usize,
    per_process: usize,
    reference: Option<&[(String, i64, String)]>,
) -> (f64, i64, Vec<(String, i64, String)>) {
    let run_id = format!("scale-{n}");
    let t = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_ephemera-worker"))
                .args(["run", "--run-id", &run_id, "--stages", STAGES])
                .args(["--concurrency", &per_process.to_string()])
                .args(["--worker-id", &format!("process-{i}")])
                .env("DATABASE_URL", url)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start ephemera-worker")
        })
        .collect();
    let mut here = 0u64;
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "process {i} of {n} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s: Summary = serde_json::from_slice(&out.stdout).unwrap();
        here += s.processed_here;
    }
    let wall = t.elapsed().as_secs_f64();
    let r = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE state = 'done'),
                    count(*) FILTER (WHERE attempts <> 1)
               FROM ephemera.partitions WHERE run_id = $1",
            &[&run_id],
        )
        .await
        .unwrap();
    let (total, done, redone): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert!(
        total > 0 && done == total && redone == 0 && here == total as u64,
        "{n} processes: {total} partitions, {done} done, {redone} claimed more than once, \
         {here} processed by the processes together: not every partition done exactly once"
    );
    let d = digests(client, &run_id).await;
    if let Some(r) = reference {
        assert_eq!(
            d, r,
            "{n} processes: output rows differ from the single process's"
        );
    }
    (wall, total, d)
}

/// Claims/s of `sessions` sessions each looping claim + complete (in a transaction, as the
/// worker's) over partitions that have no work, until the run's queue is empty. `sweep_first`:
/// as the queue was, marking stuck partitions failed before every claim.
async fn claim_rate(
    client: &tokio_postgres::Client,
    url: &str,
    sessions: usize,
    sweep_first: bool,
) -> f64 {
    let run_id = format!("claims-{sessions}-{sweep_first}");
    client
        .execute(
            "INSERT INTO ephemera.partitions (run_id, stage, rank, pair, month)
             SELECT $1, 'indicators', 0, 'P' || lpad(i::text, 5, '0'), date '2023-01-01'
               FROM generate_series(1, $2::bigint) AS i",
            &[&run_id, &CLAIM_PARTITIONS],
        )
        .await
        .unwrap();
    let t = Instant::now();
    let mut tasks = vec![];
    for s in 0..sessions {
        let (url, run_id) = (url.to_string(), run_id.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = db::connect(&url).await.unwrap();
            let owner = format!("claimer-{s}");
            let mut n = 0u64;
            let nothing = serde_json::json!({});
            loop {
                if sweep_first {
                    queue::fail_stuck(&c, &run_id, 3).await.unwrap();
                }
                let Some(claim) = queue::claim(&c, &run_id, &owner, 600, 3).await.unwrap() else {
                    break;
                };
                let tx = c.transaction().await.unwrap();
                queue::complete(&tx, &owner, &claim, 0, 0, &nothing)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut claims = 0;
    for t in tasks {
        claims += t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(
        claims, CLAIM_PARTITIONS as u64,
        "{sessions} sessions: claims"
    );
    claims as f64 / secs
}

pub async fn run(client: &tokio_postgres::Client, url: &str) {
    let per_process: usize = std::env::var("BENCH_SCALE_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    println!(
        "\nscale: the queue's ceiling, claim + complete of {CLAIM_PARTITIONS} empty partitions \
         (the queue holds every other run of this bench too)"
    );
    let mut best = 0.0f64;
    let mut one = 0.0;
    for s in SESSIONS {
        let rate = claim_rate(client, url, s, false).await;
        let before = claim_rate(client, url, s, true).await;
        if s == 1 {
            one = rate;
        }
        best = best.max(rate);
        println!(
            "  {s:>2} sessions: {rate:>7.0} claims/s ({:.2}x one session); with the stuck \
             partitions swept before every claim, as before: {before:.0} claims/s ({:.2}x slower)",
            rate / one,
            rate / before
        );
    }
    println!(
        "scale: {STAGES} on the same bars by 1, 2 and 4 `ephemera-worker run` processes of \
         {per_process} task(s) each (BENCH_SCALE_TASKS), one run id per line"
    );
    let mut reference = None;
    let mut base = 0.0;
    for n in PROCESSES {
        let (wall, parts, d) = processes(client, url, n, per_process, reference.as_deref()).await;
        if n == 1 {
            base = wall;
            reference = Some(d);
        }
        let rate = parts as f64 / wall;
        println!(
            "  {n} process(es), {} sessions: {wall:.1} s, {parts} partitions, {rate:.1} partitions/s \
             ({:.2}% of the queue's best {best:.0} claims/s), speed-up {:.2}x against 1 process",
            n * per_process,
            100.0 * rate / best,
            base / wall
        );
    }
    if let Some(d) = reference {
        let rows: Vec<String> = d.iter().map(|(t, n, _)| format!("{n} {t}")).collect();
        println!(
            "  every partition done exactly once on every line; outputs equal row for row ({})",
            rows.join(", ")
        );
    }
}

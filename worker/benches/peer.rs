//! Against a team's Python: the worker's two per-pair stages and `peer.py` (TA-Lib C, pandas
//! rolling windows, COPY in and out) on the same bars, the same PostgreSQL and as many processes
//! as the worker has tasks, each writing tables of the same shape.

use std::process::{Command, Stdio};
use std::time::Instant;

use ephemera_worker::features::{indicators, regression};
use ephemera_worker::{db, run};

use crate::{options, rate, year};

const SOURCE: &str = "bars_peer";
const SCHEMA: &str = "bench_peer";
/// Pairs of the year the two jobs share: enough for a steady figure, few enough that the Python
/// side ends within a minute or so.
const PAIRS: usize = 4;

/// Rows of one of the peer's tables.
async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {SCHEMA}.{table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// The two jobs on the first `PAIRS` pairs of the year (`year::SOURCE`, which must be loaded).
pub async fn run(url: &str, cores: usize) {
    let client = db::connect(url).await.unwrap();
    let pairs: Vec<String> = year::pairs()
        .into_iter()
        .take(PAIRS)
        .map(|p| format!("'{p}'"))
        .collect();
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {SOURCE}"))
        .await
        .unwrap();
    db::init(&client, SOURCE).await.unwrap();
    let bars = client
        .execute(
            &format!(
                "INSERT INTO {SOURCE} SELECT * FROM {} WHERE pair IN ({})",
                year::SOURCE,
                pairs.join(", ")
            ),
            &[],
        )
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "ANALYZE {SOURCE}; DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}; {}{}",
            indicators::INDICATORS.ddl(SCHEMA),
            regression::REGRESSION.ddl(SCHEMA)
        ))
        .await
        .unwrap();

    let mut o = options(url, &["indicators", "regression"], "peer", cores);
    o.source = SOURCE.into();
    let t = Instant::now();
    let summary = run::run(o).await.unwrap();
    let worker = t.elapsed().as_secs_f64();
    assert_eq!(summary.partitions_failed, 0);

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    let t = Instant::now();
    let children: Vec<_> = (0..cores)
        .map(|part| {
            Command::new(&python)
                .arg(root.join("worker/benches/peer.py"))
                .args([url, SOURCE, SCHEMA, &part.to_string(), &cores.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("{}: {e}; run `make setup`", python.display()))
        })
        .collect();
    let mut written = 0u64;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "peer.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        written += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap();
    }
    let peer = t.elapsed().as_secs_f64();
    // Both wrote every bar's row to both tables.
    for table in ["indicators", "regression"] {
        assert_eq!(count(&client, table).await, bars as i64, "{SCHEMA}.{table}");
    }
    assert_eq!(written, summary.rows_out);
    println!(
        "\nagainst a team's Python (indicators + regression, {bars} bars of {PAIRS} pairs, {cores} \
         processes or tasks, one PostgreSQL): the worker {worker:.1} s ({}), peer.py (TA-Lib C, \
         pandas rolling, COPY CSV) {peer:.1} s ({}): the worker {:.1}x faster",
        rate(summary.rows_out, worker),
        rate(written, peer),
        peer / worker
    );
}

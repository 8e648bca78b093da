//! `make bench` (ephemera-worker-bench): the worker's end-to-end time against the COPY ceiling, measured in one run on
//! one private PostgreSQL server. The ceiling is the same I/O without the computation: every
//! partition's bars copied out (binary) once per stage, and as many rows copied in (binary) to
//! tables as wide as the stages' outputs. Also the regression kernel against the textbook fit.
//!
//! Then the seeds' year, every stage against its own ceiling (`year`), the same work by 1, 2 and 4
//! worker processes and the queue's claim rate (`scale`), and the ways of writing a partition's
//! rows on a durable server (`write_path`).
//!
//! `BENCH_ROWS` (default 5,000,000) sets the volume; `BENCH_ONLY=year` runs the year and the
//! Python peer alone.

mod peer;
mod scale;
mod write_path;
mod year;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use chrono::{DateTime, Utc};
use ephemera_pg::postgres;
use ephemera_worker::bars::Bars;
use ephemera_worker::features::{causality, indicators, regression};
use ephemera_worker::table::{self, Kind, Values};
use ephemera_worker::{db, outputs, partition, run};
use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::types::{ToSql, Type};

/// Real currency pairs, so the cross-pair stages find currencies and triangles (EURGBP, EURJPY,
/// GBPJPY, EURCHF and AUDJPY each close one over USD or another vehicle).
const NAMES: [&str; 10] = [
    "AUDJPY", "AUDUSD", "EURCHF", "EURGBP", "EURJPY", "EURUSD", "GBPJPY", "GBPUSD", "USDCHF",
    "USDJPY",
];
const PAIRS: usize = NAMES.len();

/// The pairs `p % of == part` as a SQL list, for splitting the work over connections.
fn pairs_of(part: usize, of: usize) -> String {
    let names: Vec<String> = (0..PAIRS)
        .filter(|p| p % of == part)
        .map(|p| format!("'{}'", NAMES[p]))
        .collect();
    names.join(", ")
}

fn rate(rows: u64, secs: f64) -> String {
    format!("{:.2} M rows/s", rows as f64 / secs / 1e6)
}

/// A random walk per pair, one bar a minute from 2023-01-01, loaded with binary COPY.
async fn generate(client: &tokio_postgres::Client, rows: usize) -> u64 {
    let per_pair = rows / PAIRS;
    let sink = client
        .copy_in(
            "COPY bars_1m (pair, ts, open, high, low, close, volume) FROM STDIN (FORMAT binary)",
        )
        .await
        .unwrap();
    let w = BinaryCopyInWriter::new(sink, &db::SOURCE_TYPES);
    pin_mut!(w);
    let start = DateTime::parse_from_rfc3339("2023-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut n = 0u64;
    for (p, pair) in NAMES.iter().enumerate() {
        let mut price = 1.0 + p as f64 * 0.1;
        for i in 0..per_pair {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let r = (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            let open = price;
            price *= 1.0 + r * 0.0004;
            let (hi, lo) = (open.max(price) * 1.0001, open.min(price) * 0.9999);
            let ts = start + chrono::Duration::minutes(i as i64);
            let vol = 100.0 + (seed % 1000) as f64;
            let row: [&(dyn ToSql + Sync); 7] = [&pair, &ts, &open, &hi, &lo, &price, &vol];
            w.as_mut().write(&row).await.unwrap();
            n += 1;
        }
    }
    w.finish().await.unwrap();
    client.batch_execute("ANALYZE bars_1m").await.unwrap();
    n
}

/// Copies out the bars of the pairs `p` with `p % of == part` (all of them with 0, 1).
async fn copy_out_all(client: &tokio_postgres::Client, part: usize, of: usize) -> u64 {
    copy_out_pairs(client, "bars_1m", &pairs_of(part, of)).await
}

/// Copies out every bar of `source`'s pairs in `names` (a SQL list), as a stage's reads would.
async fn copy_out_pairs(client: &tokio_postgres::Client, source: &str, names: &str) -> u64 {
    let s = client
        .copy_out(&format!(
            "COPY (SELECT ts, open, high, low, close, volume FROM {source}
                    WHERE pair IN ({names}) ORDER BY pair, ts)
             TO STDOUT (FORMAT binary)"
        ))
        .await
        .unwrap();
    let rows = BinaryCopyOutStream::new(s, &db::BAR_TYPES);
    pin_mut!(rows);
    let mut n = 0u64;
    let mut sum = 0.0;
    while let Some(r) = rows.try_next().await.unwrap() {
        sum += r.get::<f64>(4);
        n += 1;
    }
    assert!(sum > 0.0);
    n
}

/// A table as wide as a stage's output, with the same primary key.
async fn create_wide(client: &tokio_postgres::Client, table: &str, cols: usize) {
    let defs: Vec<String> = (0..cols)
        .map(|i| format!("c{i} double precision"))
        .collect();
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (pair text NOT NULL, ts timestamptz NOT NULL, {}, PRIMARY KEY (pair, ts))",
            defs.join(", ")
        ))
        .await
        .unwrap();
}

/// Copies in `rows` rows spread over the pairs `p % of == part`.
async fn copy_in_wide(
    client: &tokio_postgres::Client,
    table: &str,
    cols: usize,
    rows: u64,
    part: usize,
    of: usize,
) {
    let names: Vec<String> = (0..cols).map(|i| format!("c{i}")).collect();
    let sink = client
        .copy_in(&format!(
            "COPY {table} (pair, ts, {}) FROM STDIN (FORMAT binary)",
            names.join(", ")
        ))
        .await
        .unwrap();
    let mut types = vec![Type::TEXT, Type::TIMESTAMPTZ];
    types.extend(indicators::COLUMNS[..cols].iter().map(|c| c.kind.pg()));
    let w = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(w);
    let start = DateTime::parse_from_rfc3339("2023-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let per_pair = rows / PAIRS as u64;
    let values: Vec<Option<f64>> = (0..cols).map(|i| Some(i as f64 * 0.5)).collect();
    for p in (0..PAIRS).filter(|p| p % of == part) {
        let pair = NAMES[p];
        for i in 0..per_pair {
            let ts = start + chrono::Duration::minutes(i as i64);
            let mut row: Vec<&(dyn ToSql + Sync)> = vec![&pair, &ts];
            for v in &values {
                row.push(v);
            }
            w.as_mut().write(&row).await.unwrap();
        }
    }
    w.finish().await.unwrap();
}

/// TA-Lib's C library on the same bars and the same 17 columns, best of 3, through the PyPI
/// wheel `make setup` installs (numpy arrays in, so Python adds only a call per column).
fn talib_c_seconds(b: &Bars) -> Result<f64, String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    let path = std::env::temp_dir().join(format!("ephemera-bench-{}.bars", std::process::id()));
    let mut bytes = Vec::with_capacity(b.len() * 40);
    for col in [&b.open, &b.high, &b.low, &b.close, &b.volume] {
        for x in col.iter() {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(&python)
        .arg(root.join("worker/tests/reference/talib_bench.py"))
        .arg(&path)
        .output()
        .map_err(|e| format!("{}: {e}; run `make setup`", python.display()))?;
    let _ = std::fs::remove_file(&path);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("{e}"))
}

fn kernels() {
    let n = 1_000_000;
    let mut b = Bars::default();
    let mut price = 1.1;
    for i in 0..n {
        price *= 1.0 + ((i as f64 * 0.37).sin() * 0.0003);
        b.push(
            i as i64 * 60_000_000,
            price,
            price * 1.0001,
            price * 0.9999,
            price,
            100.0,
        );
    }
    let core = ta_lib::Core::new();
    let mut ind = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let cols = indicators::compute(&core, &b).unwrap();
        ind = ind.min(t.elapsed().as_secs_f64());
        assert_eq!(cols.values.len(), indicators::COLUMNS.len());
    }
    let talib_c = talib_c_seconds(&b);
    let t = Instant::now();
    let r = regression::rolling_ols(&b.close, 1440);
    let fast = t.elapsed().as_secs_f64();
    assert!(r[0][n - 1].is_finite());
    // The textbook O(w) fit per row, on a tenth of the array (it is that slow).
    let m = n / 10;
    let t = Instant::now();
    let mut acc = 0.0;
    for i in 1439..m {
        let y = &b.close[i - 1439..=i];
        let (mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0);
        for (k, v) in y.iter().enumerate() {
            let x = k as f64;
            sx += x;
            sy += v;
            sxx += x * x;
            sxy += x * v;
        }
        let w = y.len() as f64;
        acc += (w * sxy - sx * sy) / (w * sxx - sx * sx);
    }
    let naive = t.elapsed().as_secs_f64() * 10.0;
    assert!(acc.is_finite());
    println!("kernels on {n} bars:");
    println!(
        "  indicators (17 columns, ta-lib crate): {:.3} s, {}",
        ind,
        rate(n as u64, ind)
    );
    match talib_c {
        Ok(c) => println!(
            "  indicators, TA-Lib C (PyPI wheel): {c:.3} s, {}; ratio TA-Lib C / ours {:.2}",
            rate(n as u64, c),
            c / ind
        ),
        Err(e) => println!("  indicators, TA-Lib C: not measured ({e})"),
    }
    println!(
        "  rolling OLS w=1440, O(1)/row:    {:.3} s, {}",
        fast,
        rate(n as u64, fast)
    );
    println!(
        "  rolling OLS w=1440, textbook:    {:.3} s (extrapolated), ratio {:.0}x",
        naive,
        naive / fast
    );
}

/// `n` rows of placeholder values shaped as `def`, each with a key of its own.
fn placeholder_rows(def: &'static table::Def, n: usize, offset: usize) -> table::Rows {
    let start = DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let columns = def
        .columns
        .iter()
        .map(|c| match c.kind {
            Kind::Text => Values::Text((offset..offset + n).map(|i| format!("k{i}")).collect()),
            Kind::Ts => Values::Ts(
                (offset..offset + n)
                    .map(|i| start + chrono::Duration::minutes(i as i64))
                    .collect(),
            ),
            Kind::OptText => Values::OptText(vec![Some("normal"); n]),
            Kind::Date => Values::Date(vec![start.date_naive(); n]),
            Kind::Int => Values::Int(vec![1; n]),
            Kind::F64 => Values::F64(vec![Some(0.5); n]),
        })
        .collect();
    table::Rows::new(def, columns).unwrap()
}

/// The worker's run of `stages` over the bench's bars, on `cores` tasks.
fn options(url: &str, stages: &[&str], run_id: &str, cores: usize) -> run::Options {
    run::Options {
        database_url: url.to_string(),
        source: "bars_1m".into(),
        stages: stages.iter().map(|s| s.parse().unwrap()).collect(),
        concurrency: cores,
        worker_id: "bench".into(),
        run_id: run_id.into(),
        lease_seconds: 3600,
        max_attempts: 3,
        export: None,
        stop: Default::default(),
        progress: indicatif::ProgressBar::hidden(),
        params: Default::default(),
    }
}

#[tokio::main]
async fn main() {
    let rows: usize = std::env::var("BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    kernels();
    // DATABASE_URL: measure against that server instead of a private one.
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| postgres().database("bench"));
    let client = db::connect(&url).await.unwrap();
    client
        .batch_execute(&format!(
            "DO $$ DECLARE s text; BEGIN
               FOR s IN SELECT nspname FROM pg_namespace WHERE starts_with(nspname, '{}') LOOP
                 EXECUTE format('DROP SCHEMA %I CASCADE', s);
               END LOOP;
             END $$;
             DROP SCHEMA IF EXISTS ephemera CASCADE; DROP TABLE IF EXISTS bars_1m;",
            outputs::PREFIX
        ))
        .await
        .unwrap();
    db::init(&client, "bars_1m").await.unwrap();
    // BENCH_ONLY=year: the seeds' year and the Python peer alone (minutes, not a quarter hour).
    if std::env::var("BENCH_ONLY").as_deref() == Ok("year") {
        year::run(&url, cores).await;
        peer::run(&url, cores).await;
        return;
    }
    let t = Instant::now();
    let n = generate(&client, rows).await;
    println!(
        "\ngenerated {n} bars ({PAIRS} pairs) in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The ceiling: the worker's I/O for two stages, without computing anything. First on one
    // connection, then split over one connection per core as the worker is.
    let wide = [
        ("bench_in_17", indicators::COLUMNS.len()),
        ("bench_in_12", regression::COLUMNS.len()),
    ];
    let t = Instant::now();
    let out1 = copy_out_all(&client, 0, 1).await;
    let out2 = copy_out_all(&client, 0, 1).await;
    let t_out = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for (table, cols) in wide {
        create_wide(&client, table, cols).await;
        copy_in_wide(&client, table, cols, n, 0, 1).await;
    }
    let t_in = t.elapsed().as_secs_f64();
    let ceiling = t_out + t_in;
    println!("COPY ceiling (one connection): out {} rows in {t_out:.1} s ({}), in {} rows in {t_in:.1} s ({}), total {ceiling:.1} s",
        out1 + out2, rate(out1 + out2, t_out), 2 * n, rate(2 * n, t_in));
    for (table, cols) in wide {
        create_wide(&client, table, cols).await;
    }
    let t = Instant::now();
    let mut tasks = vec![];
    for part in 0..cores {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = db::connect(&url).await.unwrap();
            let out = copy_out_all(&c, part, cores).await + copy_out_all(&c, part, cores).await;
            for (table, cols) in wide {
                copy_in_wide(&c, table, cols, n, part, cores).await;
            }
            out
        }));
    }
    let mut out_par = 0;
    for t in tasks {
        out_par += t.await.unwrap();
    }
    let ceiling_par = t.elapsed().as_secs_f64();
    assert_eq!(out_par, out1 + out2);
    println!(
        "COPY ceiling ({cores} connections, as the worker): same volume in {ceiling_par:.1} s"
    );

    let t = Instant::now();
    let summary = run::run(options(&url, &["indicators", "regression"], "bench", cores))
        .await
        .unwrap();
    let worker = t.elapsed().as_secs_f64();
    assert_eq!(summary.partitions_failed, 0);
    println!(
        "worker indicators,regression ({cores} tasks): {} partitions, {} rows out in {worker:.1} s ({})",
        summary.partitions_done,
        summary.rows_out,
        rate(summary.rows_out, worker)
    );
    println!(
        "ratio worker / COPY ceiling: {:.2} against one connection, {:.2} against {cores} (target <= 1.5)",
        worker / ceiling,
        worker / ceiling_par
    );
    println!();
    causality_growth(&client).await;
    year::run(&url, cores).await;
    peer::run(&url, cores).await;
    scale::run(&client, &url).await;
    write_path::run(rows.min(2_000_000), cores).await;
}

/// Causality's computation on one month of bars for half the pairs and for all of them: its cost
/// is one regression per ordered pair and lag, so it grows with pairs · (pairs − 1).
async fn causality_growth(client: &tokio_postgres::Client) {
    let month = chrono::NaiveDate::from_ymd_opt(2023, 1, 1).unwrap();
    let pairs = partition::read_month(client, "bars_1m", month)
        .await
        .unwrap()
        .pairs;
    let mut line = vec![];
    for n in [pairs.len() / 2, pairs.len()] {
        let t = Instant::now();
        let rows = causality::compute(month, &pairs[..n]).unwrap();
        let secs = t.elapsed().as_secs_f64();
        line.push(format!(
            "{n} pairs ({} ordered, {} tests) {:.3} s, {:.2} ms per ordered pair",
            n * (n - 1),
            rows.len(),
            secs,
            secs * 1e3 / (n * (n - 1)).max(1) as f64
        ));
    }
    println!(
        "causality on one month, computation only: {}; grows with pairs² (pairs · (pairs − 1) \
         ordered pairs, 5 regressions each)",
        line.join("; ")
    );
}

//! Write path: one partition's feature rows written in one transaction that ends by marking a
//! queue row done, as the worker does, in several ways, on a private server that is durable
//! (fsync, synchronous commit and full-page writes on, as a production server; the tests' server
//! has them off). Each variant writes the same rows over as many connections as the worker.

use std::time::Instant;

use chrono::{DateTime, Utc};
use ephemera_pg::{start, Setup};
use ephemera_worker::db;
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

/// Rows of one partition: a 30-day month of minutes.
const PARTITION_ROWS: usize = 30 * 24 * 60;
/// As wide as `indicators`.
const COLUMNS: usize = 17;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    /// Delete the partition's rows, COPY into the run's table with its primary key.
    Today,
    /// The same with `SET LOCAL synchronous_commit = off` in each partition's transaction: what
    /// the worker does (`partition::ASYNC_COMMIT`).
    AsyncCommit,
    /// A table of the partition's own, created in the transaction, `COPY … FREEZE`, the key
    /// built once after the load.
    Freeze,
    /// Today without the primary key: what maintaining the index costs.
    NoKey,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Today => "(a) COPY into the table with its key",
            Variant::AsyncCommit => "(c) (a) + SET LOCAL synchronous_commit = off (the worker)",
            Variant::Freeze => "(b) new table per partition, COPY FREEZE, key built after",
            Variant::NoKey => "(-) (a) without the key (the index's share)",
        }
    }
}

fn columns_sql() -> String {
    let cols: Vec<String> = (0..COLUMNS)
        .map(|i| format!("c{i} double precision"))
        .collect();
    format!(
        "pair text NOT NULL, ts timestamptz NOT NULL, {}",
        cols.join(", ")
    )
}

fn column_names() -> String {
    let cols: Vec<String> = (0..COLUMNS).map(|i| format!("c{i}")).collect();
    format!("pair, ts, {}", cols.join(", "))
}

/// Fresh tables for a variant and the queue rows it marks done.
async fn prepare(client: &tokio_postgres::Client, v: Variant, partitions: usize) {
    let mut sql = String::from(
        "DROP TABLE IF EXISTS wp_queue, wp_table;
         DO $$ DECLARE t text; BEGIN
           FOR t IN SELECT relname FROM pg_class WHERE relname LIKE 'wp\\_p\\_%' AND relkind = 'r'
           LOOP EXECUTE format('DROP TABLE %I', t); END LOOP; END $$;
         CREATE TABLE wp_queue (part integer PRIMARY KEY, state text NOT NULL);",
    );
    sql.push_str(&format!(
        "INSERT INTO wp_queue SELECT i, 'running' FROM generate_series(0, {}) i;",
        partitions - 1
    ));
    match v {
        Variant::Today | Variant::AsyncCommit => sql.push_str(&format!(
            "CREATE TABLE wp_table ({}, PRIMARY KEY (pair, ts));",
            columns_sql()
        )),
        Variant::NoKey => sql.push_str(&format!("CREATE TABLE wp_table ({});", columns_sql())),
        Variant::Freeze => {}
    }
    sql.push_str("CHECKPOINT;");
    client.batch_execute(&sql).await.unwrap();
}

/// Writes partition `k` the variant's way, in one transaction ending with its queue row.
async fn write_partition(c: &mut tokio_postgres::Client, v: Variant, k: usize) -> u64 {
    let pair = format!("P{k:04}");
    let start = DateTime::parse_from_rfc3339("2023-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let tx = c.transaction().await.unwrap();
    let (table, freeze) = match v {
        Variant::Freeze => {
            let t = format!("wp_p_{k}");
            tx.batch_execute(&format!(
                "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} ({});",
                columns_sql()
            ))
            .await
            .unwrap();
            (t, ", FREEZE")
        }
        _ => {
            if v == Variant::AsyncCommit {
                tx.batch_execute(ephemera_worker::partition::ASYNC_COMMIT)
                    .await
                    .unwrap();
            }
            tx.execute("DELETE FROM wp_table WHERE pair = $1", &[&pair])
                .await
                .unwrap();
            ("wp_table".to_string(), "")
        }
    };
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary{freeze})",
            column_names()
        ))
        .await
        .unwrap();
    let mut types = vec![Type::TEXT, Type::TIMESTAMPTZ];
    types.extend([Type::FLOAT8; COLUMNS]);
    let w = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(w);
    let mut values = [Some(0.0f64); COLUMNS];
    for i in 0..PARTITION_ROWS {
        let ts = start + chrono::Duration::minutes(i as i64);
        for (j, x) in values.iter_mut().enumerate() {
            *x = Some(1.0 + (i * COLUMNS + j) as f64 * 1e-6);
        }
        let mut row: Vec<&(dyn ToSql + Sync)> = vec![&pair, &ts];
        row.extend(values.iter().map(|x| x as &(dyn ToSql + Sync)));
        w.as_mut().write(&row).await.unwrap();
    }
    let n = w.finish().await.unwrap();
    if v == Variant::Freeze {
        tx.batch_execute(&format!("ALTER TABLE {table} ADD PRIMARY KEY (pair, ts)"))
            .await
            .unwrap();
    }
    let done = tx
        .execute(
            "UPDATE wp_queue SET state = 'done' WHERE part = $1 AND state = 'running'",
            &[&(k as i32)],
        )
        .await
        .unwrap();
    assert_eq!(done, 1);
    tx.commit().await.unwrap();
    n
}

/// Seconds to write `partitions` partitions over `connections` connections.
async fn measure(url: &str, v: Variant, partitions: usize, connections: usize) -> f64 {
    let client = db::connect(url).await.unwrap();
    prepare(&client, v, partitions).await;
    let t = Instant::now();
    let mut tasks = vec![];
    for part in 0..connections {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = db::connect(&url).await.unwrap();
            let mut n = 0;
            for k in (0..partitions).filter(|k| k % connections == part) {
                n += write_partition(&mut c, v, k).await;
            }
            n
        }));
    }
    let mut rows = 0;
    for t in tasks {
        rows += t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(rows as usize, partitions * PARTITION_ROWS);
    let done: i64 = client
        .query_one("SELECT count(*) FROM wp_queue WHERE state = 'done'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(done as usize, partitions, "{}", v.name());
    secs
}

pub async fn run(rows: usize, connections: usize) {
    let partitions = (rows / PARTITION_ROWS).max(connections);
    let durable = [("fsync", "on"), ("synchronous_commit", "on")]
        .into_iter()
        .chain([("full_page_writes", "on")])
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let server = start(&Setup {
        settings: durable,
        ..Setup::default()
    });
    let url = server.database("write_path");
    let client = db::connect(&url).await.unwrap();
    let settings: Vec<String> = client
        .query(
            "SELECT name || '=' || setting FROM pg_settings
              WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_level')
              ORDER BY name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(settings.contains(&"fsync=on".to_string()), "{settings:?}");
    println!(
        "\nwrite path: {partitions} partitions of {PARTITION_ROWS} rows × {COLUMNS} doubles over \
         {connections} connections, each partition one transaction ending with its queue row; \
         durable server ({}); best of 2 rounds",
        settings.join(", ")
    );
    let variants = [
        Variant::Today,
        Variant::Freeze,
        Variant::AsyncCommit,
        Variant::NoKey,
    ];
    let mut best = [f64::INFINITY; 4];
    for _ in 0..2 {
        for (i, v) in variants.iter().enumerate() {
            best[i] = best[i].min(measure(&url, *v, partitions, connections).await);
        }
    }
    let total = (partitions * PARTITION_ROWS) as f64;
    for (i, v) in variants.iter().enumerate() {
        println!(
            "  {:<62} {:>6.2} s, {:.2} M rows/s, {:.2}x (a)",
            v.name(),
            best[i],
            total / best[i] / 1e6,
            best[0] / best[i]
        );
    }
}

//! What the stage tests on the real bars share: the repository's six pairs seeded into a fresh
//! database, the run options they use, and reading a run's outputs by their table names.

// Each test file compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::path::PathBuf;

use ephemera_tests::postgres::postgres;
use ephemera_worker::{db, outputs, run, seed, store};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The six pairs' CSV files of `data/fx-1m`, in name order.
pub fn csv_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("data/fx-1m"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".csv.gz"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 6);
    files
}

/// A fresh database `name` holding every pair's bars: its URL and a client.
pub async fn seeded(name: &str) -> (String, tokio_postgres::Client) {
    let url = postgres().database(name);
    let client = db::connect(&url).await.unwrap();
    db::init(&client, "bars_1m").await.unwrap();
    for f in &csv_files() {
        seed::seed_file(&client, "bars_1m", f).await.unwrap();
    }
    (url, client)
}

/// A run of `stages` named `name` (run and worker id), two tasks, exporting to `export`.
pub fn options(url: &str, name: &str, stages: &[&str], export: Option<&PathBuf>) -> run::Options {
    run::Options {
        database_url: url.to_string(),
        source: "bars_1m".into(),
        stages: stages.iter().map(|s| s.parse().unwrap()).collect(),
        concurrency: 2,
        worker_id: name.into(),
        run_id: name.into(),
        lease_seconds: 600,
        max_attempts: 3,
        export: export.map(|p| store::Target::Dir(p.clone())),
        stop: Default::default(),
        progress: indicatif::ProgressBar::hidden(),
        params: Default::default(),
    }
}

/// Points the client's unqualified table names at run `run_id`'s outputs: its schema first, then
/// `public` for the bars (the queue stays `ephemera.partitions`).
pub async fn read_run(client: &tokio_postgres::Client, run_id: &str) {
    let schema = outputs::schema(run_id).unwrap();
    client
        .batch_execute(&format!("SET search_path = {schema}, public"))
        .await
        .unwrap();
}

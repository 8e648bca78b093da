//! `run`: enqueue the partitions, then work them off with one connection per task until none is
//! left, and summarise from the queue (so a resumed run reports the whole job).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use ta_lib::Core;

use crate::{db, partition, queue};

#[derive(Debug, Clone)]
pub struct Options {
    pub database_url: String,
    pub source: String,
    pub stages: Vec<String>,
    pub concurrency: usize,
    pub worker_id: String,
    pub run_id: String,
    pub lease_seconds: i64,
    pub max_attempts: i32,
    /// Set to stop claiming (Spot notice, SIGTERM); partitions in hand are finished.
    pub stop: Arc<AtomicBool>,
}

/// The report the worker sends with its completion signal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub run_id: String,
    pub partitions_done: u64,
    pub partitions_failed: u64,
    pub rows_in: u64,
    pub rows_out: u64,
    /// Partitions this process computed (the rest were done before, or by other workers).
    pub processed_here: u64,
    pub stages: Vec<String>,
    pub seconds: f64,
}

pub async fn run(opts: Options) -> Result<Summary> {
    let started = Instant::now();
    for s in &opts.stages {
        db::stage_columns(s)?;
    }
    let client = db::connect(&opts.database_url).await?;
    db::init(&client, &opts.source).await?;
    let queued = queue::enqueue(&client, &opts.source, &opts.stages).await?;
    tracing::info!(queued, stages = ?opts.stages, "partitions enqueued");

    let core = Arc::new(Core::new());
    let mut tasks = vec![];
    for t in 0..opts.concurrency.max(1) {
        let opts = opts.clone();
        let core = core.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("{}/{t}", opts.worker_id);
            let mut client = db::connect(&opts.database_url).await?;
            let mut done = 0u64;
            while !opts.stop.load(Ordering::SeqCst) {
                let Some(c) =
                    queue::claim(&client, &owner, &opts.stages, opts.lease_seconds, opts.max_attempts).await?
                else {
                    break;
                };
                match partition::process(&mut client, &core, &opts.source, &owner, &c).await {
                    Ok(d) => {
                        done += 1;
                        tracing::info!(stage = %c.stage, pair = %c.pair, month = %c.month, rows_out = d.rows_out, "partition done");
                    }
                    Err(e) if e.downcast_ref::<queue::LeaseLost>().is_some() => {
                        tracing::warn!(error = %e, "partition taken over; its work was rolled back");
                    }
                    Err(e) => {
                        tracing::error!(stage = %c.stage, pair = %c.pair, month = %c.month, error = %format!("{e:#}"), "partition failed");
                        queue::fail(&client, &owner, &c, &format!("{e:#}"), opts.max_attempts).await?;
                    }
                }
            }
            anyhow::Ok(done)
        }));
    }
    let mut processed_here = 0;
    for t in tasks {
        processed_here += t.await??;
    }

    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'failed'),
                    coalesce(sum(rows_in) FILTER (WHERE state = 'done'), 0)::bigint,
                    coalesce(sum(rows_out) FILTER (WHERE state = 'done'), 0)::bigint
               FROM ephemera.partitions WHERE stage = ANY($1)",
            &[&opts.stages],
        )
        .await?;
    Ok(Summary {
        run_id: opts.run_id.clone(),
        partitions_done: row.get::<_, i64>(0) as u64,
        partitions_failed: row.get::<_, i64>(1) as u64,
        rows_in: row.get::<_, i64>(2) as u64,
        rows_out: row.get::<_, i64>(3) as u64,
        processed_here,
        stages: opts.stages.clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

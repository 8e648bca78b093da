//! The work queue: one row per (run, stage, pair, month). Workers claim with `FOR UPDATE SKIP
//! LOCKED` and a lease; an expired lease is taken over; completion is checked against the lease.
//! A stage waits for the lower-ranked stages of its partition (features → validate → export).

use anyhow::{Context, Result};
use chrono::NaiveDate;
use tokio_postgres::{Client, GenericClient};

use std::collections::BTreeMap;

use crate::db::checked_ident;
use crate::inputs;
use crate::month::Month;
use crate::quality::{self, Computed};
use crate::stage::{Scope, Stage, ALL_PAIRS};

/// A claimed partition, read from the queue's row once: its stage a value, its month's range
/// computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub run_id: String,
    pub stage: Stage,
    /// A pair, or [`ALL_PAIRS`] for a cross-pair stage's partition.
    pub pair: String,
    pub month: Month,
    pub attempts: i32,
}

impl Claim {
    /// The pair a per-pair partition covers; None for a cross-pair one.
    pub fn one_pair(&self) -> Option<&str> {
        (self.pair != ALL_PAIRS).then_some(self.pair.as_str())
    }
}

/// Adds a pending row for every partition of the run's stages: (stage, pair, month) for per-pair
/// stages, (stage, all pairs, month) for cross-pair stages, and validate/export for both kinds.
/// Existing rows are kept, so done partitions stay done (a relaunched worker of the same run
/// resumes) — except a cross-pair partition whose inputs (any pair's bars of its month) changed
/// since it was done: that one is redone as a whole, with its validate and export.
pub async fn enqueue(client: &Client, run_id: &str, source: &str, stages: &[Stage]) -> Result<u64> {
    let source = checked_ident(source)?;
    let has = |scope| stages.iter().any(|s| s.scope() == scope);
    let (per_pair, cross) = (has(Scope::Pair), has(Scope::AllPairs));
    let of = |wanted: bool, scope| -> (Vec<String>, Vec<i32>) {
        stages
            .iter()
            .filter(|s| s.scope() == scope || (wanted && s.scope() == Scope::Follows))
            .map(|s| (s.name().to_string(), s.rank()))
            .unzip()
    };
    // validate/export alone (a rerun of them) follow the per-pair partitions.
    let (pair_stages, pair_ranks) = of(per_pair || !cross, Scope::Pair);
    let (cross_stages, cross_ranks) = of(cross, Scope::AllPairs);
    let n = client
        .execute(
            &format!(
                "WITH p AS MATERIALIZED ({})
                 INSERT INTO ephemera.partitions (run_id, stage, rank, pair, month)
                 SELECT $1, s.stage, s.rank, p.pair, p.month
                   FROM unnest($2::text[], $3::int[]) AS s (stage, rank), p
                 UNION ALL
                 SELECT $1, s.stage, s.rank, $6, m.month
                   FROM unnest($4::text[], $5::int[]) AS s (stage, rank),
                        (SELECT DISTINCT month FROM p) AS m
                 ON CONFLICT DO NOTHING",
                crate::db::pair_months_sql(source)?
            ),
            &[
                &run_id,
                &pair_stages,
                &pair_ranks,
                &cross_stages,
                &cross_ranks,
                &ALL_PAIRS,
            ],
        )
        .await
        .context("enqueueing partitions")?;
    if cross {
        redo_changed(client, run_id, source).await?;
    }
    Ok(n)
}

/// Every month's cross-pair inputs, as the source holds them now (`inputs`).
pub async fn inputs(
    client: &Client,
    source: &str,
) -> Result<BTreeMap<NaiveDate, serde_json::Value>> {
    let source = checked_ident(source)?;
    let rows = client
        .query(
            &format!(
                "SELECT month, jsonb_object_agg(pair, fp) FROM (
                   SELECT date_trunc('month', ts AT TIME ZONE 'UTC')::date AS month, pair,
                          {} AS fp
                     FROM {source} GROUP BY 1, 2) f
                 GROUP BY month",
                inputs::aggregate()
            ),
            &[],
        )
        .await
        .context("reading the cross-pair partitions' inputs")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Sends back to pending, as a whole, each done cross-pair partition whose inputs changed, and
/// the validate and export of its month (a partition someone holds under a live lease is left
/// to finish; its recorded inputs are then the old ones, and the next run redoes it).
async fn redo_changed(client: &Client, run_id: &str, source: &str) -> Result<()> {
    let done = client
        .query(
            "SELECT stage, month, quality FROM ephemera.partitions
              WHERE run_id = $1 AND pair = $2 AND rank = 0 AND state = 'done'",
            &[&run_id, &ALL_PAIRS],
        )
        .await?;
    // A new run has nothing done: no need to read every bar of the source.
    if done.is_empty() {
        return Ok(());
    }
    let now = inputs(client, source).await?;
    for r in &done {
        let (stage, month): (String, NaiveDate) = (r.get(0), r.get(1));
        let done: Option<Computed> = quality::read(r.get(2))?;
        if done.and_then(|d| d.inputs).as_ref() == now.get(&month) {
            continue;
        }
        let n = client
            .execute(
                "UPDATE ephemera.partitions
                    SET state = 'pending', attempts = 0, rows_in = NULL, rows_out = NULL,
                        quality = NULL, lease_owner = NULL, lease_until = NULL,
                        error = 'its inputs changed since it was done: redone as a whole',
                        updated_at = now()
                  WHERE run_id = $1 AND pair = $2 AND month = $3 AND (stage = $4 OR rank > 0)
                    AND NOT (state = 'running' AND lease_until > now())",
                &[&run_id, &ALL_PAIRS, &month, &stage],
            )
            .await?;
        tracing::info!(stage, %month, partitions = n, "inputs changed: cross-pair partition redone");
    }
    Ok(())
}

/// The claim of one partition of run $1 for owner $2, leased for $3 seconds, if it has been tried
/// fewer than $4 times. It stays on the queue's indexes whatever other runs the queue holds
/// (`partitions_open` for the candidates in order, `partitions_by_month` for their earlier
/// stages; the worker's tests EXPLAIN it).
// The candidate is picked once (a materialised CTE): a subquery in FROM may be rescanned per
// outer row, and with SKIP LOCKED each rescan can pick another row.
pub const CLAIM: &str = "WITH c AS MATERIALIZED (
         SELECT stage, pair, month FROM ephemera.partitions c
          WHERE c.run_id = $1
            AND (c.state = 'pending' OR (c.state = 'running' AND c.lease_until < now()))
            AND c.attempts < $4
            AND NOT EXISTS (SELECT 1 FROM ephemera.partitions q
                             WHERE q.run_id = c.run_id AND q.pair = c.pair
                               AND q.month = c.month AND q.rank < c.rank
                               AND q.state <> 'done')
          ORDER BY rank, pair, month, stage
          LIMIT 1 FOR UPDATE SKIP LOCKED)
     UPDATE ephemera.partitions p
        SET state = 'running', lease_owner = $2,
            lease_until = now() + make_interval(secs => $3),
            attempts = p.attempts + 1, updated_at = now()
       FROM c
      WHERE p.run_id = $1 AND p.stage = c.stage AND p.pair = c.pair AND p.month = c.month
     RETURNING p.stage, p.pair, p.month, p.attempts";

/// Claims one partition: pending, or running with an expired lease, whose earlier stages are
/// done. When there is none, partitions that have used up their attempts, or wait on a stage
/// that failed, are marked failed (so the run can end).
// The marking scans the run's open partitions; before every claim it cost 3.3 ms of server time
// at 3,000 open against 0.04 ms for the claim (docs/figures.md). It is done only when nothing
// can be claimed, which changes nothing claimed: neither kind of partition is claimable, and
// failing a partition never makes another one claimable.
pub async fn claim(
    client: &Client,
    run_id: &str,
    owner: &str,
    lease_seconds: i64,
    max_attempts: i32,
) -> Result<Option<Claim>> {
    let row = client
        .query_opt(
            CLAIM,
            &[&run_id, &owner, &(lease_seconds as f64), &max_attempts],
        )
        .await
        .context("claiming a partition")?;
    if let Some(r) = row {
        return Ok(Some(Claim {
            run_id: run_id.to_string(),
            stage: Stage::parse(r.get(0))?,
            pair: r.get(1),
            month: Month::of(r.get(2)),
            attempts: r.get(3),
        }));
    }
    fail_stuck(client, run_id, max_attempts).await?;
    Ok(None)
}

/// Marks failed the run's partitions that can never be claimed: leases expired `max_attempts`
/// times, or an earlier stage failed.
pub async fn fail_stuck(client: &Client, run_id: &str, max_attempts: i32) -> Result<()> {
    client
        .batch_execute(&format!(
            "UPDATE ephemera.partitions
                SET state = 'failed', error = coalesce(error, 'lease expired ' || attempts || ' times'),
                    lease_owner = NULL, lease_until = NULL, updated_at = now()
              WHERE run_id = {r} AND state = 'running' AND lease_until < now()
                AND attempts >= {max_attempts};
             UPDATE ephemera.partitions p
                SET state = 'failed', error = 'an earlier stage of this partition failed',
                    updated_at = now()
              WHERE p.run_id = {r} AND p.state = 'pending'
                AND EXISTS (SELECT 1 FROM ephemera.partitions q
                             WHERE q.run_id = p.run_id AND q.pair = p.pair AND q.month = p.month
                               AND q.rank < p.rank AND q.state = 'failed');",
            r = quote_literal(run_id)
        ))
        .await?;
    Ok(())
}

/// A string as a SQL literal (for the one batch above, which cannot take parameters).
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Whether this run still has partitions someone may work on (pending, or running under a
/// live lease), so an idle task should wait rather than leave.
pub async fn open_work(client: &Client, run_id: &str) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM ephemera.partitions
                             WHERE run_id = $1 AND state IN ('pending', 'running'))",
            &[&run_id],
        )
        .await?;
    Ok(row.get(0))
}

/// Pushes back the expiry of every partition of run $1 that the owners $2 hold, to $3 seconds
/// from now: a lease held by a live worker never expires, however long its partition takes.
pub const EXTEND: &str = "UPDATE ephemera.partitions
        SET lease_until = now() + make_interval(secs => $3)
      WHERE run_id = $1 AND state = 'running' AND lease_owner = ANY($2)";

/// [`EXTEND`]: how many leases were pushed back.
pub async fn extend(
    client: &Client,
    run_id: &str,
    owners: &[String],
    lease_seconds: i64,
) -> Result<u64> {
    client
        .execute(EXTEND, &[&run_id, &owners, &(lease_seconds as f64)])
        .await
        .context("extending the leases in hand")
}

#[derive(Debug, thiserror::Error)]
#[error("the lease on {stage} {pair} {month} was lost to another worker")]
pub struct LeaseLost {
    pub stage: String,
    pub pair: String,
    pub month: NaiveDate,
}

/// Marks the claim done inside the caller's transaction, only if this worker still holds it.
pub async fn complete(
    tx: &impl GenericClient,
    owner: &str,
    c: &Claim,
    rows_in: i64,
    rows_out: i64,
    quality: &serde_json::Value,
) -> Result<()> {
    let n = tx
        .execute(
            "UPDATE ephemera.partitions
                SET state = 'done', rows_in = $6, rows_out = $7, quality = $8, error = NULL,
                    lease_owner = NULL, lease_until = NULL, updated_at = now()
              WHERE run_id = $1 AND stage = $2 AND pair = $3 AND month = $4 AND lease_owner = $5
                AND state = 'running'",
            &[
                &c.run_id,
                &c.stage.name(),
                &c.pair,
                &c.month.first,
                &owner,
                &rows_in,
                &rows_out,
                &quality,
            ],
        )
        .await?;
    if n != 1 {
        return Err(LeaseLost {
            stage: c.stage.name().to_string(),
            pair: c.pair.clone(),
            month: c.month.first,
        }
        .into());
    }
    Ok(())
}

/// Gives a claim back after an error: pending again, or failed once attempts are used up.
pub async fn fail(
    client: &Client,
    owner: &str,
    c: &Claim,
    error: &str,
    max_attempts: i32,
) -> Result<()> {
    client
        .execute(
            "UPDATE ephemera.partitions
                SET state = CASE WHEN attempts >= $6 THEN 'failed' ELSE 'pending' END,
                    error = $7, lease_owner = NULL, lease_until = NULL, updated_at = now()
              WHERE run_id = $1 AND stage = $2 AND pair = $3 AND month = $4 AND lease_owner = $5",
            &[
                &c.run_id,
                &c.stage.name(),
                &c.pair,
                &c.month.first,
                &owner,
                &max_attempts,
                &error,
            ],
        )
        .await?;
    Ok(())
}

/// Hands a claim back after an interruption (Spot notice, SIGTERM): pending again at once, for
/// any worker, and the attempt does not count (the partition did not fail). Only if this worker
/// still holds it: one whose commit went through is done and stays done.
pub async fn release(client: &Client, owner: &str, c: &Claim) -> Result<bool> {
    let n = client
        .execute(
            "UPDATE ephemera.partitions
                SET state = 'pending', attempts = greatest(attempts - 1, 0),
                    error = 'interrupted (Spot notice or SIGTERM) and handed back',
                    lease_owner = NULL, lease_until = NULL, updated_at = now()
              WHERE run_id = $1 AND stage = $2 AND pair = $3 AND month = $4 AND lease_owner = $5
                AND state = 'running'",
            &[&c.run_id, &c.stage.name(), &c.pair, &c.month.first, &owner],
        )
        .await
        .context("handing an interrupted partition back")?;
    Ok(n == 1)
}

/// Partitions by run, stage and state (one run, or every run).
pub async fn status(
    client: &Client,
    run_id: Option<&str>,
) -> Result<Vec<(String, String, String, i64)>> {
    let rows = client
        .query(
            "SELECT run_id, stage, state, count(*) FROM ephemera.partitions
              WHERE $1::text IS NULL OR run_id = $1
              GROUP BY run_id, rank, stage, state ORDER BY run_id, rank, stage, state",
            &[&run_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

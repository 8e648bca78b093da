//! The work queue: one row per (stage, pair, month). Workers claim with `FOR UPDATE SKIP LOCKED`
//! and a lease; an expired lease is taken over; completion is checked against the lease.

use anyhow::{Context, Result};
use chrono::NaiveDate;
use tokio_postgres::{Client, GenericClient};

use crate::db::checked_ident;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub stage: String,
    pub pair: String,
    pub month: NaiveDate,
    pub attempts: i32,
}

/// Adds a pending row for every (stage, pair, month) in the source; existing rows are kept, so
/// done partitions stay done (a rerun resumes).
pub async fn enqueue(client: &Client, source: &str, stages: &[String]) -> Result<u64> {
    let source = checked_ident(source)?;
    let n = client
        .execute(
            &format!(
                "INSERT INTO ephemera.partitions (stage, pair, month)
                 SELECT s, pair, month FROM unnest($1::text[]) AS s,
                   (SELECT DISTINCT pair, date_trunc('month', ts AT TIME ZONE 'UTC')::date AS month
                      FROM {source}) AS p
                 ON CONFLICT DO NOTHING"
            ),
            &[&stages],
        )
        .await
        .context("enqueueing partitions")?;
    Ok(n)
}

/// Claims one partition: pending, or running with an expired lease. Partitions that have used
/// up their attempts are marked failed instead.
pub async fn claim(
    client: &Client,
    owner: &str,
    stages: &[String],
    lease_seconds: i64,
    max_attempts: i32,
) -> Result<Option<Claim>> {
    client
        .execute(
            "UPDATE ephemera.partitions
                SET state = 'failed', error = coalesce(error, 'lease expired ' || attempts || ' times'),
                    lease_owner = NULL, lease_until = NULL, updated_at = now()
              WHERE state = 'running' AND lease_until < now() AND attempts >= $1
                AND stage = ANY($2)",
            &[&max_attempts, &stages],
        )
        .await?;
    let row = client
        .query_opt(
            "UPDATE ephemera.partitions p
                SET state = 'running', lease_owner = $1,
                    lease_until = now() + make_interval(secs => $2),
                    attempts = p.attempts + 1, updated_at = now()
              FROM (SELECT stage, pair, month FROM ephemera.partitions
                     WHERE stage = ANY($3)
                       AND (state = 'pending' OR (state = 'running' AND lease_until < now()))
                       AND attempts < $4
                     ORDER BY pair, month, stage
                     LIMIT 1 FOR UPDATE SKIP LOCKED) c
             WHERE p.stage = c.stage AND p.pair = c.pair AND p.month = c.month
             RETURNING p.stage, p.pair, p.month, p.attempts",
            &[&owner, &(lease_seconds as f64), &stages, &max_attempts],
        )
        .await
        .context("claiming a partition")?;
    Ok(row.map(|r| Claim {
        stage: r.get(0),
        pair: r.get(1),
        month: r.get(2),
        attempts: r.get(3),
    }))
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
                SET state = 'done', rows_in = $5, rows_out = $6, quality = $7, error = NULL,
                    lease_owner = NULL, lease_until = NULL, updated_at = now()
              WHERE stage = $1 AND pair = $2 AND month = $3 AND lease_owner = $4
                AND state = 'running'",
            &[
                &c.stage, &c.pair, &c.month, &owner, &rows_in, &rows_out, &quality,
            ],
        )
        .await?;
    if n != 1 {
        return Err(LeaseLost {
            stage: c.stage.clone(),
            pair: c.pair.clone(),
            month: c.month,
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
                SET state = CASE WHEN attempts >= $5 THEN 'failed' ELSE 'pending' END,
                    error = $6, lease_owner = NULL, lease_until = NULL, updated_at = now()
              WHERE stage = $1 AND pair = $2 AND month = $3 AND lease_owner = $4",
            &[&c.stage, &c.pair, &c.month, &owner, &max_attempts, &error],
        )
        .await?;
    Ok(())
}

/// Partitions by stage and state.
pub async fn status(client: &Client) -> Result<Vec<(String, String, i64)>> {
    let rows = client
        .query(
            "SELECT stage, state, count(*) FROM ephemera.partitions
              GROUP BY stage, state ORDER BY stage, state",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

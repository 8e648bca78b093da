//! Outputs per run: each run's feature tables live in a schema of its own, named after the run
//! id, so two runs on one database, concurrent or not, never touch each other's rows, and
//! `drop` removes a run as one `DROP SCHEMA`.
//!
//! A schema per run rather than a run column in shared tables (or LIST partitions by run): the
//! binary COPY writes exactly the rows it wrote before, with no run value per row to send,
//! store and index, and no lock on a parent table that a second run's create or drop would
//! have to wait for (docs/worker.md, "Outputs per run", has the figures).

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use tokio_postgres::{Client, GenericClient};

use crate::stage;

/// Every run's schema starts with this, next to the shared `ephemera` schema.
pub const PREFIX: &str = "ephemera_run_";

/// The schema of a run's outputs, derived from the run id alone so that every worker of the run
/// finds it without asking: `ephemera_run_<id, lower-cased, other characters as _>_<hash>`. The
/// hash keeps apart ids that read alike once lower-cased (`a-b`, `a_b`, `A_B`), and the name
/// stays within PostgreSQL's 63 bytes whatever the id's length.
pub fn schema(run_id: &str) -> Result<String> {
    if run_id.is_empty() {
        bail!("a run id must not be empty");
    }
    let readable: String = run_id
        .chars()
        .take(32)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    // 64 bits: two ids that read alike meet with odds of one in 2^32 after 2^32 such ids,
    // where 32 bits met after 65,536 (and a meeting would drop another run's tables).
    let hash = hex::encode(&Sha256::digest(run_id.as_bytes())[..8]);
    Ok(format!("{PREFIX}{readable}_{hash}"))
}

/// `schema.table` of one of a run's output tables.
pub fn table(run_id: &str, name: &str) -> Result<String> {
    Ok(format!("{}.{name}", schema(run_id)?))
}

/// The statements that create a run's schema and its tables (those absent).
fn ddl(schema: &str) -> Result<String> {
    let mut sql = format!("CREATE SCHEMA IF NOT EXISTS {schema};");
    for def in stage::TABLES {
        sql.push_str(&def.ddl(schema));
    }
    Ok(sql)
}

/// Serialises the creation and the drop of one run's outputs (two workers of a run starting at
/// once, or a drop while a worker starts), and nothing else.
const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('ephemera.run'), hashtext($1))";

/// Creates the run's schema and tables if absent, and registers the run. Returns the schema.
///
/// The queue is the run's resume record: done partitions are not redone. If the outputs are
/// missing while the queue says partitions are done (the schema was dropped by hand), those
/// partitions are sent back to pending, so the record never claims rows that are not there.
pub async fn create(client: &mut Client, run_id: &str) -> Result<String> {
    let schema = schema(run_id)?;
    let tx = client.transaction().await?;
    tx.execute(LOCK, &[&run_id]).await?;
    let existed: bool = tx
        .query_one("SELECT to_regnamespace($1::text) IS NOT NULL", &[&schema])
        .await?
        .get(0);
    tx.batch_execute(&ddl(&schema)?)
        .await
        .with_context(|| format!("creating the run's outputs in schema {schema}"))?;
    tx.execute(
        "INSERT INTO ephemera.runs (run_id, schema_name) VALUES ($1, $2)
         ON CONFLICT (run_id) DO NOTHING",
        &[&run_id, &schema],
    )
    .await?;
    if !existed {
        let n = tx
            .execute(
                "UPDATE ephemera.partitions
                    SET state = 'pending', attempts = 0, rows_in = NULL, rows_out = NULL,
                        quality = NULL, lease_owner = NULL, lease_until = NULL,
                        error = 'the run''s outputs were missing: redone', updated_at = now()
                  WHERE run_id = $1 AND state <> 'pending'",
                &[&run_id],
            )
            .await?;
        if n > 0 {
            tracing::warn!(
                run_id,
                schema,
                partitions = n,
                "the run's outputs were missing: its partitions are redone"
            );
        }
    }
    tx.commit().await?;
    Ok(schema)
}

/// A run known to this database: its id, its schema, when it was first run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Run {
    pub run_id: String,
    pub schema: String,
    pub created_at: String,
}

/// Every registered run, oldest first.
pub async fn list(client: &impl GenericClient) -> Result<Vec<Run>> {
    let rows = client
        .query(
            "SELECT run_id, schema_name, to_char(created_at AT TIME ZONE 'UTC',
                    'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
               FROM ephemera.runs ORDER BY created_at, run_id",
            &[],
        )
        .await
        .context("listing the runs")?;
    Ok(rows
        .iter()
        .map(|r| Run {
            run_id: r.get(0),
            schema: r.get(1),
            created_at: r.get(2),
        })
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("no run '{run_id}' in this database: no outputs, no queue rows, nothing dropped{}",
        runs_here(.known))]
    UnknownRun { run_id: String, known: Vec<String> },
    #[error(
        "run '{run_id}' is being worked on: {live} partitions under live leases (the last until \
             {until}); nothing dropped. Stop its workers or wait for the leases to expire, or pass \
             --force (its workers' partitions then fail)"
    )]
    Busy {
        run_id: String,
        live: i64,
        until: String,
    },
}

fn runs_here(known: &[String]) -> String {
    if known.is_empty() {
        " (it holds no runs)".into()
    } else {
        format!(" (runs here: {})", known.join(", "))
    }
}

/// What a drop removed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Dropped {
    pub run_id: String,
    /// The run's schema, if it existed, with its tables and their size on disk.
    pub schema: Option<String>,
    pub tables: i64,
    pub bytes: i64,
    pub queue_rows: u64,
    pub validation_rows: u64,
}

/// Removes a run's outputs (its schema, with every table in it), its queue rows and its
/// validation findings, in one transaction. Refuses a run whose partitions are under live
/// leases unless `force`, and says so when the run is unknown.
pub async fn drop(client: &mut Client, run_id: &str, force: bool) -> Result<Dropped> {
    let schema = schema(run_id)?;
    let tx = client.transaction().await?;
    tx.execute(LOCK, &[&run_id]).await?;
    let r = tx
        .query_one(
            "SELECT to_regnamespace($1::text) IS NOT NULL,
                    EXISTS (SELECT 1 FROM ephemera.runs WHERE run_id = $2),
                    (SELECT count(*) FROM ephemera.partitions WHERE run_id = $2),
                    (SELECT count(*) FROM ephemera.validation WHERE run_id = $2),
                    (SELECT count(*) FROM ephemera.partitions
                      WHERE run_id = $2 AND state = 'running' AND lease_until > now()),
                    (SELECT max(lease_until)::text FROM ephemera.partitions
                      WHERE run_id = $2 AND state = 'running' AND lease_until > now())",
            &[&schema, &run_id],
        )
        .await
        .context("looking the run up")?;
    let (exists, registered, queued, validated, live): (bool, bool, i64, i64, i64) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    if !exists && !registered && queued == 0 && validated == 0 {
        let known = list(&tx).await?;
        return Err(DropError::UnknownRun {
            run_id: run_id.to_string(),
            known: known.into_iter().map(|r| r.run_id).collect(),
        }
        .into());
    }
    if live > 0 && !force {
        return Err(DropError::Busy {
            run_id: run_id.to_string(),
            live,
            until: r.get::<_, Option<String>>(5).unwrap_or_default(),
        }
        .into());
    }
    let (tables, bytes): (i64, i64) = if exists {
        let s = tx
            .query_one(
                "SELECT count(*), coalesce(sum(pg_total_relation_size(oid)), 0)::bigint
                   FROM pg_class WHERE relnamespace = to_regnamespace($1::text) AND relkind = 'r'",
                &[&schema],
            )
            .await?;
        (s.get(0), s.get(1))
    } else {
        (0, 0)
    };
    // The tables the run created, by name, then the schema: without CASCADE, so anything else
    // someone put there (a view over a run's table, a table of their own) stops the drop with
    // PostgreSQL's word for it instead of going with it.
    let mut sql = String::new();
    for def in stage::TABLES {
        sql.push_str(&format!("DROP TABLE IF EXISTS {schema}.{};", def.name));
    }
    sql.push_str(&format!("DROP SCHEMA IF EXISTS {schema};"));
    tx.batch_execute(&sql).await.with_context(|| {
        format!("dropping schema {schema} and the run's tables (nothing was dropped: the schema holds something the run did not create, or depends on it)")
    })?;
    let queue_rows = tx
        .execute(
            "DELETE FROM ephemera.partitions WHERE run_id = $1",
            &[&run_id],
        )
        .await?;
    let validation_rows = tx
        .execute(
            "DELETE FROM ephemera.validation WHERE run_id = $1",
            &[&run_id],
        )
        .await?;
    tx.execute("DELETE FROM ephemera.runs WHERE run_id = $1", &[&run_id])
        .await?;
    tx.commit().await?;
    Ok(Dropped {
        run_id: run_id.to_string(),
        schema: exists.then_some(schema),
        tables,
        bytes,
        queue_rows,
        validation_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_distinct_and_short() {
        let a = schema("fx-2023-04").unwrap();
        assert!(a.starts_with("ephemera_run_fx_2023_04_"), "{a}");
        assert_eq!(a.len(), "ephemera_run_fx_2023_04_".len() + 16);
        // Ids that read alike once sanitised still get their own schema.
        let names = ["a-b", "a_b", "A_B", "a.b"].map(|id| schema(id).unwrap());
        for (i, x) in names.iter().enumerate() {
            assert!(names[i + 1..].iter().all(|y| y != x), "{names:?}");
        }
        let long = schema(&"x".repeat(200)).unwrap();
        assert!(long.len() <= 63, "{long}");
        for n in names.iter().chain([&a, &long]) {
            assert!(crate::db::checked_ident(n).is_ok(), "{n}");
        }
        assert!(schema("").is_err());
        assert_eq!(
            table("fx", "regime").unwrap(),
            format!("{}.regime", schema("fx").unwrap())
        );
    }
}

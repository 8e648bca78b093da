//! Step 3 of a stage's partition: its tables' rows replaced and the partition marked done, in
//! one transaction.

use anyhow::Result;
use tokio_postgres::Client;

use crate::copy;
use crate::outputs;
use crate::queue::{self, Claim};
use crate::table::Rows;

/// A partition's rows and its done-marker commit together without waiting for the log to
/// reach disk (1.0–1.4× on the write path of a durable server, docs/figures.md). A server
/// crash can lose the last such commits, each whole: rows and marker go together and the queue
/// redoes the partition when its lease expires, so no rows are lost or doubled. Whatever `run`
/// reports it has made durable first (`db::flush`).
pub const ASYNC_COMMIT: &str = "SET LOCAL synchronous_commit = off";

/// Writes a stage's typed tables of one partition and marks it done, in one transaction.
pub async fn tables(
    client: &mut Client,
    owner: &str,
    c: &Claim,
    tables: &[Rows],
    rows_in: u64,
    quality: serde_json::Value,
) -> Result<u64> {
    let part = copy::Partition {
        month: c.month,
        pair: c.one_pair(),
    };
    let schema = outputs::schema(&c.run_id)?;
    let tx = client.transaction().await?;
    tx.batch_execute(ASYNC_COMMIT).await?;
    let mut rows_out = 0;
    for rows in tables {
        rows_out += copy::replace(&tx, &schema, &part, rows).await?;
    }
    queue::complete(&tx, owner, c, rows_in as i64, rows_out as i64, &quality).await?;
    tx.commit().await?;
    Ok(rows_out)
}

//! A partition of `export`: every table its stages wrote, read back, encoded as Parquet
//! (`crate::export`) and stored, listed in the partition's record for the run's manifest.

use anyhow::Result;
use ephemera_contract::ManifestObject;
use tokio_postgres::Client;

use super::check::{feature_stages, read_table};
use super::{Done, Work};
use crate::quality::Exported;
use crate::queue::{self, Claim};
use crate::stage::Scope;
use crate::store::Store;

pub async fn partition(
    client: &mut Client,
    cx: &Work<'_>,
    store: &Store,
    c: &Claim,
) -> Result<Done> {
    let mut objects = vec![];
    for (stage, _) in feature_stages(client, c).await? {
        for def in stage.tables() {
            let rows = read_table(client, def, c).await?;
            let n = rows.len() as u64;
            // Encoding is CPU work: off the async threads.
            let bytes =
                tokio::task::spawn_blocking(move || crate::export::parquet(&rows)).await??;
            let name = match stage.scope() {
                Scope::AllPairs => crate::export::month_object_name(def.name, c.month.first),
                _ => crate::export::object_name(def.name, &c.pair, c.month.first),
            };
            let key = store.target.key(&name);
            let stored = store
                .put(&key, bytes, "application/vnd.apache.parquet")
                .await?;
            objects.push(ManifestObject {
                key,
                rows: n,
                bytes: stored.bytes,
                sha256: Some(stored.sha256),
                checksum_sha256: Some(stored.checksum_sha256),
            });
        }
    }
    let rows: u64 = objects.iter().map(|o| o.rows).sum();
    let tx = client.transaction().await?;
    let json = serde_json::to_value(Exported { objects })?;
    queue::complete(&tx, cx.owner, c, rows as i64, rows as i64, &json).await?;
    tx.commit().await?;
    Ok(Done { rows_out: rows })
}

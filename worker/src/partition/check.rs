//! A partition of `validate`: every table its stages wrote, read back and checked
//! (`crate::validate`), the findings stored and the partition marked done.

use anyhow::Result;
use tokio_postgres::Client;

use super::{Done, Work};
use crate::copy;
use crate::outputs;
use crate::quality::{self, Computed};
use crate::queue::{self, Claim};
use crate::stage::Stage;
use crate::table::{self, Rows};
use crate::validate;

/// The feature stages of this run that a partition's validate or export covers.
pub(super) async fn feature_stages(
    client: &Client,
    c: &Claim,
) -> Result<Vec<(Stage, Option<u64>)>> {
    let rows = client
        .query(
            "SELECT stage, quality FROM ephemera.partitions
              WHERE run_id = $1 AND pair = $2 AND month = $3 AND rank = 0 ORDER BY stage",
            &[&c.run_id, &c.pair, &c.month.first],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let q: Option<Computed> = quality::read(r.get(1))?;
            Ok((Stage::parse(r.get(0))?, q.and_then(|q| q.history_bars)))
        })
        .collect()
}

/// A partition's rows of one table of its run, read back.
pub(super) async fn read_table(
    client: &Client,
    def: &'static table::Def,
    c: &Claim,
) -> Result<Rows> {
    let part = copy::Partition {
        month: c.month,
        pair: c.one_pair(),
    };
    copy::read(client, &outputs::schema(&c.run_id)?, def, &part).await
}

pub async fn partition(client: &mut Client, cx: &Work<'_>, c: &Claim) -> Result<Done> {
    let mut checks = vec![];
    let mut gaps = None;
    let mut rows_in = 0u64;
    for (stage, history) in feature_stages(client, c).await? {
        for def in stage.tables() {
            let rows = read_table(client, def, c).await?;
            rows_in += rows.len() as u64;
            checks.extend(validate::check_table(&rows, history.unwrap_or(0) as usize));
            if let (Some(_), Some(table::Values::Ts(ts))) = (def.pair_column, rows.column("ts")) {
                let ts: Vec<i64> = ts.iter().map(|t| t.timestamp_micros()).collect();
                gaps.get_or_insert_with(|| validate::gaps(&ts));
            }
        }
    }
    let report = validate::report(&checks, gaps.unwrap_or_default());
    let tx = client.transaction().await?;
    tx.execute(
        "DELETE FROM ephemera.validation WHERE run_id = $1 AND pair = $2 AND month = $3",
        &[&c.run_id, &c.pair, &c.month.first],
    )
    .await?;
    let insert = tx
        .prepare(
            "INSERT INTO ephemera.validation (run_id, pair, month, stage, column_name, rows, nulls,
                 nulls_beyond_warm_up, non_finite, out_of_range, min, max)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .await?;
    for k in &checks {
        tx.execute(
            &insert,
            &[
                &c.run_id,
                &c.pair,
                &c.month.first,
                &k.stage,
                &k.column,
                &(k.rows as i64),
                &(k.nulls as i64),
                &(k.nulls_beyond_warm_up as i64),
                &(k.non_finite as i64),
                &(k.out_of_range as i64),
                &k.min,
                &k.max,
            ],
        )
        .await?;
    }
    let json = serde_json::to_value(&report)?;
    queue::complete(&tx, cx.owner, c, rows_in as i64, 0, &json).await?;
    tx.commit().await?;
    if report.problems > 0 {
        tracing::warn!(pair = %c.pair, month = %c.month, problems = report.problems, findings = ?report.findings, "validation found problems");
    }
    Ok(Done { rows_out: 0 })
}

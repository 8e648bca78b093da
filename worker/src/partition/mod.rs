//! One partition, start to finish, as its steps: read its bars (and the history its windows
//! need) with binary COPY out and clean them (`read`), compute the stage's tables (`compute`),
//! then in one transaction replace its rows with binary COPY in and mark it done (`write`). A
//! partition of `validate` or `export` reads the tables back instead (`check`, `export`). A
//! crash leaves nothing half-written; a rerun replaces, never duplicates. Every output is the
//! claim's run's (`outputs`): other runs' rows are never read or written.

mod check;
mod compute;
mod export;
mod read;
mod shared;
mod write;

use anyhow::{bail, Result};
use ta_lib::Core;
use tokio_postgres::Client;

use crate::features::Params;
use crate::queue::Claim;
use crate::stage::Stage;
use crate::store::Store;

pub use compute::{compute, compute_cross};
pub use read::{read, read_month, MonthBars, Shape, WARM_UP_BARS};
pub use shared::SharedReads;
pub use write::ASYNC_COMMIT;

#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub rows_out: u64,
}

/// What a partition's work needs besides the claim.
pub struct Work<'a> {
    pub core: &'a Core,
    pub source: &'a str,
    pub owner: &'a str,
    /// Where `export` writes; None when the run exports nothing.
    pub store: Option<&'a Store>,
    pub params: &'a Params,
    /// The run's reads, shared by its tasks.
    pub reads: &'a SharedReads,
}

/// Processes one claimed partition of any stage.
pub async fn process(client: &mut Client, cx: &Work<'_>, c: &Claim) -> Result<Done> {
    match c.stage {
        Stage::Validate => check::partition(client, cx, c).await,
        Stage::Export => match cx.store {
            Some(store) => export::partition(client, cx, store, c).await,
            None => bail!("stage 'export' needs --export s3://bucket/prefix/ or a directory"),
        },
        stage => {
            let input = shared::input(cx.reads, client, cx.source, c).await?;
            let (rows_in, quality) = (input.rows_in(), input.quality()?);
            let tables = compute::tables(cx, stage, c, input).await?;
            let rows_out = write::tables(client, cx.owner, c, &tables, rows_in, quality).await?;
            Ok(Done { rows_out })
        }
    }
}

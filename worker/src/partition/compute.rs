//! Step 2 of a stage's partition: its kernel over the bars read, off the async threads (so an
//! interruption is acted on at once, and a large partition does not stall the other tasks'
//! I/O). Pure: what it returns is the stage's tables' rows.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use ta_lib::Core;

use super::read::Input;
use super::Work;
use crate::bars::Bars;
use crate::column::Columns;
use crate::features::{
    arbitrage, causality, currency_index, indicators, regime, regression, Params,
};
use crate::queue::Claim;
use crate::stage::Stage;
use crate::table::Rows;

/// The stage's tables of the claim's partition from its input.
pub async fn tables(
    cx: &Work<'_>,
    stage: Stage,
    c: &Claim,
    input: Arc<Input>,
) -> Result<Vec<Rows>> {
    let (core, params, pair, month) = (cx.core.clone(), *cx.params, c.pair.clone(), c.month.first);
    tokio::task::spawn_blocking(move || match &*input {
        Input::Pair { bars, first, .. } => per_pair(&core, stage, &pair, bars, *first),
        Input::Month(m) => compute_cross(stage, month, &m.pairs, &params),
    })
    .await?
}

/// A per-pair stage's tables from the pair's clean bars (the month's from `first`).
fn per_pair(core: &Core, stage: Stage, pair: &str, bars: &Bars, first: usize) -> Result<Vec<Rows>> {
    if stage.is_column_stage() {
        let def = *stage
            .tables()
            .first()
            .with_context(|| format!("'{stage}' writes no table"))?;
        let cols = compute(core, stage, bars)?;
        return Ok(vec![Rows::of_columns(def, pair, &bars.ts, &cols, first)?]);
    }
    match stage {
        Stage::Regime => Ok(vec![regime::compute(core, pair, bars, first)?]),
        other => bail!("'{other}' has no per-pair table"),
    }
}

pub fn compute(core: &Core, stage: Stage, bars: &Bars) -> Result<Columns> {
    Ok(match stage {
        Stage::Indicators => {
            indicators::compute(core, bars).map_err(|e| anyhow::anyhow!("TA-Lib: {e:?}"))?
        }
        Stage::Regression => regression::compute(bars),
        other => bail!("'{other}' does not compute columns from one pair's bars"),
    })
}

/// A cross-pair stage's tables from every pair's clean bars of one month (sorted by pair).
pub fn compute_cross(
    stage: Stage,
    month: NaiveDate,
    pairs: &[(String, Bars)],
    params: &Params,
) -> Result<Vec<Rows>> {
    Ok(match stage {
        Stage::CurrencyIndex => vec![currency_index::compute(pairs)?],
        Stage::Arbitrage => {
            let (minutes, events) = arbitrage::compute(pairs, params.arbitrage)?;
            vec![minutes, events]
        }
        Stage::Causality => vec![causality::compute(month, pairs)?],
        other => bail!("'{other}' is not a cross-pair stage"),
    })
}

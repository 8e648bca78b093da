//! Connection and schema: the source table, the work queue and one output table per stage.

use anyhow::{bail, Context, Result};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

use crate::features::{indicators, regression};

/// Stages that compute a feature table from the bars.
pub const STAGES: [&str; 2] = ["indicators", "regression"];
/// Every stage a run may name, in the order a partition goes through them.
pub const ALL_STAGES: [&str; 4] = ["indicators", "regression", "validate", "export"];

/// Output columns of a feature stage, after (pair, ts).
pub fn stage_columns(stage: &str) -> Result<Vec<String>> {
    Ok(match stage {
        "indicators" => indicators::COLUMNS.iter().map(|s| s.to_string()).collect(),
        "regression" => regression::column_names(),
        other => bail!(
            "'{other}' is not a feature stage; feature stages: {}",
            STAGES.join(", ")
        ),
    })
}

/// A partition's stage waits for every stage of a lower rank in the same run: features, then
/// their validation, then their export.
pub fn stage_rank(stage: &str) -> Result<i32> {
    Ok(match stage {
        "indicators" | "regression" => 0,
        "validate" => 1,
        "export" => 2,
        other => bail!("unknown stage '{other}'; stages: {}", ALL_STAGES.join(", ")),
    })
}

/// Binary COPY row types of a bar as the worker reads it: ts, open, high, low, close, volume.
pub const BAR_TYPES: [Type; 6] = [
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
];

/// Binary COPY row types of a source row: the pair, then a bar.
pub const SOURCE_TYPES: [Type; 7] = [
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
];

/// Binary COPY row types of a feature row: (pair,) ts, then `columns` values.
pub fn feature_types(with_pair: bool, columns: usize) -> Vec<Type> {
    let mut types = if with_pair {
        vec![Type::TEXT, Type::TIMESTAMPTZ]
    } else {
        vec![Type::TIMESTAMPTZ]
    };
    types.extend(std::iter::repeat_n(Type::FLOAT8, columns));
    types
}

/// A SQL identifier, possibly schema-qualified, of plain letters, digits and underscores.
pub fn checked_ident(name: &str) -> Result<&str> {
    let ok = !name.is_empty()
        && name.split('.').count() <= 2
        && name
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if !ok {
        bail!("'{name}' is not a plain table name (letters, digits, _; optionally schema.table)");
    }
    Ok(name)
}

pub async fn connect(url: &str) -> Result<Client> {
    let mut last = None;
    // A server that just started may refuse for a moment.
    for _ in 0..50 {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::error!(error = %e, "database connection ended");
                    }
                });
                return Ok(client);
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Err(last.unwrap()).context("connecting to the database")
}

/// Asks the server to cancel the statement a session is running (same TLS as `connect`).
pub async fn cancel(token: &tokio_postgres::CancelToken) -> Result<()> {
    token
        .cancel_query(NoTls)
        .await
        .context("sending a cancel request")
}

/// Creates the source table (if absent), the queue and the output tables. Idempotent.
pub async fn init(client: &Client, source: &str) -> Result<()> {
    let source = checked_ident(source)?;
    let idx = format!("{}_pair_ts", source.replace('.', "_"));
    let mut sql = format!(
        "CREATE SCHEMA IF NOT EXISTS ephemera;
         CREATE TABLE IF NOT EXISTS {source} (
             pair text NOT NULL, ts timestamptz NOT NULL,
             open double precision, high double precision, low double precision,
             close double precision, volume double precision);
         CREATE INDEX IF NOT EXISTS {idx} ON {source} (pair, ts);
         CREATE TABLE IF NOT EXISTS ephemera.partitions (
             run_id text NOT NULL, stage text NOT NULL, pair text NOT NULL, month date NOT NULL,
             rank integer NOT NULL DEFAULT 0,
             state text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'running', 'done', 'failed')),
             lease_owner text, lease_until timestamptz,
             attempts integer NOT NULL DEFAULT 0,
             rows_in bigint, rows_out bigint, quality jsonb, error text,
             updated_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (run_id, stage, pair, month));
         CREATE TABLE IF NOT EXISTS ephemera.validation (
             run_id text NOT NULL, pair text NOT NULL, month date NOT NULL,
             stage text NOT NULL, column_name text NOT NULL,
             rows bigint NOT NULL, nulls bigint NOT NULL, nulls_beyond_warm_up bigint NOT NULL,
             non_finite bigint NOT NULL, out_of_range bigint NOT NULL,
             min double precision, max double precision,
             PRIMARY KEY (run_id, pair, month, stage, column_name));"
    );
    for stage in STAGES {
        let cols: Vec<String> = stage_columns(stage)?
            .iter()
            .map(|c| format!("{c} double precision"))
            .collect();
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS ephemera.{stage} (
                 pair text NOT NULL, ts timestamptz NOT NULL, {},
                 PRIMARY KEY (pair, ts));",
            cols.join(", ")
        ));
    }
    client
        .batch_execute(&sql)
        .await
        .context("creating the schema")?;
    Ok(())
}

//! DynamoDB: the run ledger (template `LedgerTable`): one item per execution, found by month
//! through the `by-month` index.

use std::collections::HashMap;
use std::future::Future;

use aws_sdk_dynamodb::types::AttributeValue;
use ephemera_core::ledger::{Entry, EntryState};

use crate::error::Error;

/// The index the month-to-date query reads (template `LedgerTable`).
pub const BY_MONTH: &str = "by-month";

pub trait Ledger: Send + Sync {
    /// Every entry of `month`.
    fn entries(&self, month: &str) -> impl Future<Output = Result<Vec<Entry>, Error>> + Send;
    /// Writes `entry` whole (a launch's reservation).
    fn put(&self, entry: &Entry) -> impl Future<Output = Result<(), Error>> + Send;
    /// Sets an existing entry's state, and its actual cost when given; Ok(false) when the
    /// execution has no entry (it launched nothing).
    fn close(
        &self,
        execution: &str,
        state: EntryState,
        actual_usd: Option<f64>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
}

/// The ledger table behind a DynamoDB client.
#[derive(Debug, Clone)]
pub struct LedgerTable {
    pub client: aws_sdk_dynamodb::Client,
    pub table: String,
}

fn state_name(s: EntryState) -> &'static str {
    match s {
        EntryState::Running => "running",
        EntryState::Ended => "ended",
        EntryState::Swept => "swept",
    }
}

fn entry_of(item: &HashMap<String, AttributeValue>) -> Option<Entry> {
    let s = |k: &str| item.get(k)?.as_s().ok().cloned();
    let n = |k: &str| item.get(k)?.as_n().ok()?.parse::<f64>().ok();
    Some(Entry {
        execution: s("execution")?,
        run_id: s("run_id").unwrap_or_default(),
        month: s("month")?,
        reserved_usd: n("reserved_usd")?,
        actual_usd: n("actual_usd"),
        state: match s("state")?.as_str() {
            "running" => EntryState::Running,
            "ended" => EntryState::Ended,
            "swept" => EntryState::Swept,
            _ => return None,
        },
    })
}

impl Ledger for LedgerTable {
    async fn entries(&self, month: &str) -> Result<Vec<Entry>, Error> {
        let pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_MONTH)
            .key_condition_expression("#m = :m")
            .expression_attribute_names("#m", "month")
            .expression_attribute_values(":m", AttributeValue::S(month.into()))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| Error::aws("dynamodb", "Query", e))?;
        pages
            .iter()
            .map(|item| {
                entry_of(item).ok_or_else(|| {
                    Error::Internal(format!("a ledger item of {month} is malformed: {item:?}"))
                })
            })
            .collect()
    }

    async fn put(&self, entry: &Entry) -> Result<(), Error> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("execution", AttributeValue::S(entry.execution.clone()))
            .item("run_id", AttributeValue::S(entry.run_id.clone()))
            .item("month", AttributeValue::S(entry.month.clone()))
            .item(
                "reserved_usd",
                AttributeValue::N(entry.reserved_usd.to_string()),
            )
            .item("state", AttributeValue::S(state_name(entry.state).into()))
            .item(
                "updated_at",
                AttributeValue::S(chrono::Utc::now().to_rfc3339()),
            );
        if let Some(a) = entry.actual_usd {
            req = req.item("actual_usd", AttributeValue::N(a.to_string()));
        }
        req.send()
            .await
            .map_err(|e| Error::aws("dynamodb", "PutItem", e))?;
        Ok(())
    }

    async fn close(
        &self,
        execution: &str,
        state: EntryState,
        actual_usd: Option<f64>,
    ) -> Result<bool, Error> {
        let mut update = "SET #s = :s, updated_at = :t".to_string();
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("execution", AttributeValue::S(execution.into()))
            .condition_expression("attribute_exists(execution)")
            .expression_attribute_names("#s", "state")
            .expression_attribute_values(":s", AttributeValue::S(state_name(state).into()))
            .expression_attribute_values(":t", AttributeValue::S(chrono::Utc::now().to_rfc3339()));
        if let Some(a) = actual_usd {
            update.push_str(", actual_usd = :a");
            req = req.expression_attribute_values(":a", AttributeValue::N(a.to_string()));
        }
        match req.update_expression(update).send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::aws("dynamodb", "UpdateItem", e)),
        }
    }
}

//! DynamoDB: the run ledger (template `LedgerTable`): one item per execution, with a map of its
//! workers' reservations, found by month through the `by-month` index.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use aws_sdk_dynamodb::types::AttributeValue;
use ephemera_core::ledger::{Entry, EntryState};

use crate::error::Error;

/// The index the month-to-date query reads (template `LedgerTable`).
pub const BY_MONTH: &str = "by-month";

pub trait Ledger: Send + Sync {
    /// Every entry of `month`.
    fn entries(&self, month: &str) -> impl Future<Output = Result<Vec<Entry>, Error>> + Send;
    /// Records a launch's reservation: `entry`'s run, and the worst case of its `worker`
    /// (`entry.workers[worker]`), leaving the run's other workers' as they are.
    fn reserve(&self, entry: &Entry, worker: u32)
        -> impl Future<Output = Result<(), Error>> + Send;
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
    // Each worker's reservation, when the item has the map (it may still be empty: a worker
    // that has written the run's item but not yet its own reservation); else the run's whole
    // (an entry written before there were several workers, or by hand).
    let (workers, reserved_usd) = match item.get("workers") {
        Some(m) => {
            let workers: BTreeMap<u32, f64> = m
                .as_m()
                .ok()?
                .iter()
                .map(|(w, usd)| Some((w.parse().ok()?, usd.as_n().ok()?.parse().ok()?)))
                .collect::<Option<_>>()?;
            let total = workers.values().fold(0.0, |sum, usd| sum + usd);
            (workers, total)
        }
        None => (BTreeMap::new(), n("reserved_usd")?),
    };
    Some(Entry {
        execution: s("execution")?,
        run_id: s("run_id").unwrap_or_default(),
        month: s("month")?,
        reserved_usd,
        workers,
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

    async fn reserve(&self, entry: &Entry, worker: u32) -> Result<(), Error> {
        let usd = entry.workers.get(&worker).copied().ok_or_else(|| {
            Error::Internal(format!("no reservation of worker {worker} to record"))
        })?;
        let now = AttributeValue::S(chrono::Utc::now().to_rfc3339());
        // Two updates, each idempotent: the run's item with an empty map of workers when it is
        // new, then this worker's place in it (one expression may not both create the map and
        // set a key inside it). A worker never rewrites the whole item, so the run's workers
        // launching at once keep each other's reservations.
        self.client
            .update_item()
            .table_name(&self.table)
            .key("execution", AttributeValue::S(entry.execution.clone()))
            .update_expression(
                "SET run_id = :r, #m = :m, #s = :s, updated_at = :t, workers = if_not_exists(workers, :empty)",
            )
            .expression_attribute_names("#m", "month")
            .expression_attribute_names("#s", "state")
            .expression_attribute_values(":r", AttributeValue::S(entry.run_id.clone()))
            .expression_attribute_values(":m", AttributeValue::S(entry.month.clone()))
            .expression_attribute_values(":s", AttributeValue::S(state_name(entry.state).into()))
            .expression_attribute_values(":t", now.clone())
            .expression_attribute_values(":empty", AttributeValue::M(HashMap::new()))
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", "UpdateItem", e))?;
        self.client
            .update_item()
            .table_name(&self.table)
            .key("execution", AttributeValue::S(entry.execution.clone()))
            .update_expression("SET workers.#w = :usd, updated_at = :t")
            .expression_attribute_names("#w", worker.to_string())
            .expression_attribute_values(":usd", AttributeValue::N(usd.to_string()))
            .expression_attribute_values(":t", now)
            .send()
            .await
            .map_err(|e| Error::aws("dynamodb", "UpdateItem", e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(extra: &[(&str, AttributeValue)]) -> HashMap<String, AttributeValue> {
        let mut i: HashMap<String, AttributeValue> = [
            ("execution", AttributeValue::S("arn:x".into())),
            ("month", AttributeValue::S("2026-11".into())),
            ("state", AttributeValue::S("running".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            i.insert(k.to_string(), v.clone());
        }
        i
    }

    #[test]
    fn a_run_between_its_two_writes_reserves_nothing_yet() {
        // A worker has created the run's item (an empty map) but not yet written its own
        // reservation: another worker reading the month then must not fail.
        let e = entry_of(&item(&[("workers", AttributeValue::M(HashMap::new()))])).unwrap();
        assert_eq!((e.reserved_usd, e.workers.len()), (0.0, 0));
        let two = AttributeValue::M(
            [
                ("1".to_string(), AttributeValue::N("1.5".into())),
                ("2".to_string(), AttributeValue::N("2.5".into())),
            ]
            .into(),
        );
        assert_eq!(
            entry_of(&item(&[("workers", two)])).unwrap().reserved_usd,
            4.0
        );
        // An entry from before several workers: its whole reservation.
        let old = entry_of(&item(&[("reserved_usd", AttributeValue::N("3".into()))])).unwrap();
        assert_eq!(old.reserved_usd, 3.0);
        assert!(
            entry_of(&item(&[])).is_none(),
            "no reservation at all is malformed"
        );
    }
}

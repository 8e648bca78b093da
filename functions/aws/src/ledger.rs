//! DynamoDB: the run ledger (template `LedgerTable`): one item per execution, with a map of its
//! workers' reservations, found by month through the `by-month` index.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use ephemera_core::budget::Cap;
use ephemera_core::cost;
use ephemera_core::ledger::{self, Entry, EntryState};
use ephemera_core::placement::Placed;

use crate::error::AwsError;

/// The index the month-to-date query reads (template `LedgerTable`).
pub const BY_MONTH: &str = "by-month";

/// A reservation's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reserved {
    Admitted,
    /// The month's counter could not take it: the other runs' spend and reservations, and this
    /// run's worst case with this reservation.
    Refused {
        others_usd: f64,
        this_run_usd: f64,
    },
    /// The run's own cap (`limits.budget_usd`) could not take it: what the run's attempts
    /// already hold against it.
    OverCap {
        reserved_usd: f64,
    },
    /// The run was already settled (its report ran) or swept: nothing more is launched or
    /// reserved for it (a launch that raced its run's stop or cleanup).
    Ended,
}

pub trait Ledger: Send + Sync {
    /// Every entry of `month`.
    fn entries(&self, month: &str) -> impl Future<Output = Result<Vec<Entry>, AwsError>> + Send;
    /// Records a launch's reservation — `entry`'s run, and the worst case of its `worker`
    /// (`entry.workers[worker]`), leaving the run's other workers' as they are — unless it
    /// would take the month past `budget_usd` (0: no ceiling) or the run past its own `cap`.
    /// The month's counter and the run's item (with the run's counter of what its attempts
    /// hold against its cap) change together or not at all, each on the condition that it
    /// still has room, so launches at the same instant — of runs, or of one run's workers —
    /// can never together pass either.
    fn reserve(
        &self,
        entry: &Entry,
        worker: u32,
        budget_usd: f64,
        cap: &Cap,
    ) -> impl Future<Output = Result<Reserved, AwsError>> + Send;
    /// Sets an existing entry's state, and its actual cost and outcome when given; Ok(false)
    /// when the execution has no entry (it launched nothing).
    fn close(
        &self,
        execution: &str,
        state: EntryState,
        actual_usd: Option<f64>,
        outcome: Option<&str>,
    ) -> impl Future<Output = Result<bool, AwsError>> + Send;
    /// Books a Spot attempt, or its reclaim, in the run's item (appended to `placements`; an
    /// attempt booked twice, by a retried call, is read back once: `placement::history`).
    fn place(
        &self,
        execution: &str,
        placed: &Placed,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// What the run's first ranking read from EC2 (`placement::Observed` as JSON), if any.
    fn observed(
        &self,
        execution: &str,
    ) -> impl Future<Output = Result<Option<String>, AwsError>> + Send;
    /// Keeps `observed` in the run's item unless one is there already; what the item holds
    /// after, so that every worker of the run ranks from the same facts.
    fn keep_observed(
        &self,
        execution: &str,
        observed: &str,
    ) -> impl Future<Output = Result<String, AwsError>> + Send;
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
        started_at: s("started_at")
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&chrono::Utc)),
        outcome: s("outcome"),
        placements: match item.get("placements") {
            Some(l) => l
                .as_l()
                .ok()?
                .iter()
                .map(placed_of)
                .collect::<Option<_>>()?,
            None => vec![],
        },
    })
}

fn placed_of(v: &AttributeValue) -> Option<Placed> {
    let m = v.as_m().ok()?;
    let n = |k: &str| m.get(k)?.as_n().ok()?.parse::<u32>().ok();
    let s = |k: &str| m.get(k)?.as_s().ok().cloned();
    Some(Placed {
        slot: n("slot")?,
        attempt: n("attempt")?,
        instance_type: s("instance_type")?,
        zone: s("zone")?,
        reclaimed: *m.get("reclaimed")?.as_bool().ok()?,
    })
}

fn placed_item(p: &Placed) -> AttributeValue {
    AttributeValue::M(HashMap::from([
        ("slot".to_string(), AttributeValue::N(p.slot.to_string())),
        (
            "attempt".to_string(),
            AttributeValue::N(p.attempt.to_string()),
        ),
        (
            "instance_type".to_string(),
            AttributeValue::S(p.instance_type.clone()),
        ),
        ("zone".to_string(), AttributeValue::S(p.zone.clone())),
        ("reclaimed".to_string(), AttributeValue::Bool(p.reclaimed)),
    ]))
}

/// The run item's attribute holding what its ranking read (`Ledger::keep_observed`).
const OBSERVED: &str = "placement_observed";

impl Ledger for LedgerTable {
    async fn entries(&self, month: &str) -> Result<Vec<Entry>, AwsError> {
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
            .map_err(|e| AwsError::sdk("dynamodb", "Query", e))?;
        pages
            .iter()
            .map(|item| {
                entry_of(item).ok_or_else(|| {
                    AwsError::Internal(format!("a ledger item of {month} is malformed: {item:?}"))
                })
            })
            .collect()
    }

    async fn reserve(
        &self,
        entry: &Entry,
        worker: u32,
        budget_usd: f64,
        cap: &Cap,
    ) -> Result<Reserved, AwsError> {
        let usd = entry.workers.get(&worker).copied().ok_or_else(|| {
            AwsError::Internal(format!("no reservation of worker {worker} to record"))
        })?;
        // The month's counter first, seeded when the month has none yet.
        self.counter(&entry.month).await?;
        // Read, then write both items on the condition that the run's is as read: when another
        // worker of the run wrote it in between, read again.
        for _ in 0..RESERVE_TRIES {
            let run = self
                .item(&entry.execution)
                .await?
                .and_then(|i| entry_of(&i));
            // At the cents' millionths every amount is written with, so the sum read here and
            // the run's counter DynamoDB adds up in decimal are the same number.
            if run.as_ref().is_some_and(|r| r.state != EntryState::Running) {
                return Ok(Reserved::Ended);
            }
            let held = cost::usd(run.as_ref().map_or(0.0, |r| r.reserved_usd));
            let before = run.as_ref().and_then(|r| r.workers.get(&worker).copied());
            let delta = cost::usd(usd - before.unwrap_or(0.0));
            // The run's cap: judged on the item as read, and written on the condition that
            // the run's counter has not grown past the room since (another worker's
            // reservation in between fails the write, and the next pass judges again).
            let room = cap.room_for(delta);
            if delta > 0.0 && held > room {
                return Ok(Reserved::OverCap { reserved_usd: held });
            }
            let read = AsRead {
                run: run.as_ref(),
                before,
            };
            let this = run_update(&self.table, entry, (worker, usd), read, (delta, room));
            let month = month_update(&self.table, &entry.month, delta, budget_usd);
            let sent = self
                .client
                .transact_write_items()
                .transact_items(transact(month)?)
                .transact_items(transact(this)?)
                .send()
                .await;
            let e = match sent {
                Ok(_) => return Ok(Reserved::Admitted),
                Err(e) => e,
            };
            let codes = cancellation_codes(&e);
            if codes.first().map(String::as_str) == Some(CONDITION_FAILED) {
                return Ok(Reserved::Refused {
                    others_usd: self.counter(&entry.month).await? - held,
                    this_run_usd: held + delta,
                });
            }
            // The run's item changed since it was read, or another transaction held one of
            // the items (TransactionConflict: launches at the same instant all write the
            // month's counter): read again after a moment.
            if codes
                .iter()
                .any(|c| c == CONDITION_FAILED || c == "TransactionConflict")
            {
                tokio::time::sleep(std::time::Duration::from_millis(
                    50 + u64::from(chrono::Utc::now().timestamp_subsec_millis()) % 200,
                ))
                .await;
                continue;
            }
            return Err(AwsError::sdk("dynamodb", "TransactWriteItems", e));
        }
        Err(conflict(&entry.execution))
    }

    async fn close(
        &self,
        execution: &str,
        state: EntryState,
        actual_usd: Option<f64>,
        outcome: Option<&str>,
    ) -> Result<bool, AwsError> {
        for _ in 0..RESERVE_TRIES {
            let Some(was) = self.item(execution).await?.and_then(|i| entry_of(&i)) else {
                return Ok(false);
            };
            if !ledger::closes(was.state, state) {
                return Ok(false);
            }
            let now = Entry {
                state,
                actual_usd: actual_usd.or(was.actual_usd),
                ..was.clone()
            };
            // The month's counter follows the run's charge (its cost replacing its
            // reservation), together with the state the charge was read in; a month never
            // counted yet is seeded from its entries when a launch first needs it.
            let mut update = "SET #s = :s, updated_at = :t".to_string();
            let mut this = Update::builder()
                .table_name(&self.table)
                .key("execution", AttributeValue::S(execution.into()))
                .condition_expression("#s = :was")
                .expression_attribute_names("#s", "state")
                .expression_attribute_values(":s", AttributeValue::S(state_name(state).into()))
                .expression_attribute_values(
                    ":was",
                    AttributeValue::S(state_name(was.state).into()),
                )
                .expression_attribute_values(
                    ":t",
                    AttributeValue::S(chrono::Utc::now().to_rfc3339()),
                );
            if let Some(a) = actual_usd {
                update.push_str(", actual_usd = :a");
                this = this.expression_attribute_values(":a", AttributeValue::N(a.to_string()));
            }
            if let Some(o) = outcome {
                update.push_str(", outcome = :o");
                this = this.expression_attribute_values(":o", AttributeValue::S(o.into()));
            }
            let this = this.update_expression(update);
            let delta = now.charged_usd() - was.charged_usd();
            let mut tx = self
                .client
                .transact_write_items()
                .transact_items(transact(this)?);
            if delta != 0.0 && self.counted(&was.month).await? {
                tx = tx.transact_items(transact(
                    Update::builder()
                        .table_name(&self.table)
                        .key("execution", AttributeValue::S(counter_key(&was.month)))
                        .update_expression("ADD committed_usd :d")
                        .expression_attribute_values(":d", AttributeValue::N(delta.to_string())),
                )?);
            }
            let e = match tx.send().await {
                Ok(_) => return Ok(true),
                Err(e) => e,
            };
            let codes = cancellation_codes(&e);
            // Changed since it was read (closed by a retried call, or by the sweeper), or
            // held by another transaction: read again.
            if codes
                .iter()
                .any(|c| c == CONDITION_FAILED || c == "TransactionConflict")
            {
                continue;
            }
            return Err(AwsError::sdk("dynamodb", "TransactWriteItems", e));
        }
        Err(conflict(execution))
    }

    async fn place(&self, execution: &str, placed: &Placed) -> Result<(), AwsError> {
        // One expression: `list_append` onto the list or an empty one, so the first booking
        // and the next are the same call (two paths in one SET may not overlap).
        self.client
            .update_item()
            .table_name(&self.table)
            .key("execution", AttributeValue::S(execution.into()))
            .update_expression(
                "SET placements = list_append(if_not_exists(placements, :none), :one)",
            )
            .expression_attribute_values(":none", AttributeValue::L(vec![]))
            .expression_attribute_values(":one", AttributeValue::L(vec![placed_item(placed)]))
            .send()
            .await
            .map_err(|e| AwsError::sdk("dynamodb", "UpdateItem", e))?;
        Ok(())
    }

    async fn observed(&self, execution: &str) -> Result<Option<String>, AwsError> {
        Ok(self
            .item(execution)
            .await?
            .and_then(|i| i.get(OBSERVED)?.as_s().ok().cloned()))
    }

    async fn keep_observed(&self, execution: &str, observed: &str) -> Result<String, AwsError> {
        let set = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("execution", AttributeValue::S(execution.into()))
            .update_expression("SET #o = if_not_exists(#o, :o)")
            .expression_attribute_names("#o", OBSERVED)
            .expression_attribute_values(":o", AttributeValue::S(observed.into()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| AwsError::sdk("dynamodb", "UpdateItem", e))?;
        Ok(set
            .attributes()
            .and_then(|a| a.get(OBSERVED)?.as_s().ok().cloned())
            .unwrap_or_else(|| observed.to_string()))
    }
}

fn conflict(execution: &str) -> AwsError {
    AwsError::Call {
        service: "dynamodb",
        operation: "TransactWriteItems",
        code: "TransactionConflict".into(),
        message: format!("the ledger item of {execution} kept changing over {RESERVE_TRIES} tries"),
    }
}

/// The item of the month's counter: what the month's runs have spent or reserved, moved in the
/// same transaction as each run's item. It has no `month` attribute, so the `by-month` index
/// never lists it.
pub fn counter_key(month: &str) -> String {
    format!("month#{month}")
}

/// How many times a reservation reads and writes again when the run's item changed between.
const RESERVE_TRIES: usize = 8;

/// The run's item as read before a reservation: the item, and this worker's share in it.
#[derive(Clone, Copy)]
struct AsRead<'a> {
    run: Option<&'a Entry>,
    before: Option<f64>,
}

/// The run's item with `worker`'s reservation: its place in the map when the item has one (on
/// the condition that nobody changed it since it was read), else the whole item with a map of
/// one (on the condition that there is still none). The run's counter of its attempts'
/// reservations (`cap_reserved_usd`) moves by `delta` with it, on the condition that it is at
/// most `room` (what the cap leaves for it beside this reservation): two workers of the run
/// reserving at the same instant each change their own place in the map, and this condition is
/// what stops them from passing the cap together. Written with the month's counter, so a
/// refused launch leaves no item behind.
fn run_update(
    table: &str,
    entry: &Entry,
    (worker, usd): (u32, f64),
    read: AsRead<'_>,
    (delta, room): (f64, f64),
) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
    let AsRead { run, before } = read;
    let key = worker.to_string();
    let u = Update::builder()
        .table_name(table)
        .key("execution", AttributeValue::S(entry.execution.clone()))
        .expression_attribute_values(":t", AttributeValue::S(chrono::Utc::now().to_rfc3339()))
        .expression_attribute_values(":d", AttributeValue::N(delta.to_string()));
    // An item written before the run's counter existed has none: its map was judged as read.
    let (cap, u) = if delta > 0.0 {
        (
            " AND (attribute_not_exists(cap_reserved_usd) OR cap_reserved_usd <= :room)",
            u.expression_attribute_values(":room", AttributeValue::N(room.to_string())),
        )
    } else {
        ("", u)
    };
    let with_map = run.is_some_and(|r| !r.workers.is_empty() || r.reserved_usd == 0.0);
    // A run settled since it was read takes no more: the write fails and the next read says so.
    let running = " AND #s = :running";
    match (with_map, before) {
        (true, Some(b)) => u
            .update_expression("SET workers.#w = :usd, updated_at = :t ADD cap_reserved_usd :d")
            .condition_expression(format!("workers.#w = :before{running}{cap}"))
            .expression_attribute_names("#w", key)
            .expression_attribute_names("#s", "state")
            .expression_attribute_values(":running", AttributeValue::S(state_name(EntryState::Running).into()))
            .expression_attribute_values(":usd", AttributeValue::N(usd.to_string()))
            .expression_attribute_values(":before", AttributeValue::N(b.to_string())),
        (true, None) => u
            .update_expression("SET workers.#w = :usd, updated_at = :t ADD cap_reserved_usd :d")
            .condition_expression(format!(
                "attribute_exists(workers) AND attribute_not_exists(workers.#w){running}{cap}"
            ))
            .expression_attribute_names("#w", key)
            .expression_attribute_names("#s", "state")
            .expression_attribute_values(":running", AttributeValue::S(state_name(EntryState::Running).into()))
            .expression_attribute_values(":usd", AttributeValue::N(usd.to_string())),
        (false, _) => u
            .update_expression(
                "SET run_id = :r, #m = :m, #s = :s, updated_at = :t, started_at = :t, workers = :map ADD cap_reserved_usd :d",
            )
            .condition_expression(format!("attribute_not_exists(workers){cap}"))
            .expression_attribute_names("#m", "month")
            .expression_attribute_names("#s", "state")
            .expression_attribute_values(":r", AttributeValue::S(entry.run_id.clone()))
            .expression_attribute_values(":m", AttributeValue::S(entry.month.clone()))
            .expression_attribute_values(":s", AttributeValue::S(state_name(entry.state).into()))
            .expression_attribute_values(
                ":map",
                AttributeValue::M(HashMap::from([(key, AttributeValue::N(usd.to_string()))])),
            ),
    }
}

/// The month's counter moved by `delta`, on the condition that it stays within `budget_usd`
/// (0: no ceiling) when it grows.
fn month_update(
    table: &str,
    month: &str,
    delta: f64,
    budget_usd: f64,
) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
    let update = Update::builder()
        .table_name(table)
        .key("execution", AttributeValue::S(counter_key(month)))
        .update_expression("ADD committed_usd :d")
        .expression_attribute_values(":d", AttributeValue::N(delta.to_string()));
    if budget_usd > 0.0 && delta > 0.0 {
        return update
            .condition_expression("committed_usd <= :room")
            .expression_attribute_values(
                ":room",
                AttributeValue::N((budget_usd - delta).to_string()),
            );
    }
    update
}

/// One item of a transaction.
fn transact(
    u: aws_sdk_dynamodb::types::builders::UpdateBuilder,
) -> Result<TransactWriteItem, AwsError> {
    u.build()
        .map(|u| TransactWriteItem::builder().update(u).build())
        .map_err(|e| AwsError::Internal(format!("a ledger update is incomplete: {e}")))
}

const CONDITION_FAILED: &str = "ConditionalCheckFailed";

/// Each item's cancellation code of a canceled transaction ("None" for an item that was not the
/// cause), or nothing for any other error.
fn cancellation_codes<R>(
    e: &aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
        R,
    >,
) -> Vec<String> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
    match e.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
            .cancellation_reasons()
            .iter()
            .map(|r| r.code().unwrap_or("None").to_string())
            .collect(),
        _ => vec![],
    }
}

impl LedgerTable {
    /// An item, read consistently.
    async fn item(
        &self,
        execution: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, AwsError> {
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("execution", AttributeValue::S(execution.into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::sdk("dynamodb", "GetItem", e))?;
        Ok(got.item().cloned())
    }

    /// Whether `month` has its counter.
    async fn counted(&self, month: &str) -> Result<bool, AwsError> {
        Ok(self.item(&counter_key(month)).await?.is_some())
    }

    /// `month`'s counter, seeded from its entries when it has none yet (a month begun before
    /// the counter existed): the first seed wins, and from then on only transactions move it.
    async fn counter(&self, month: &str) -> Result<f64, AwsError> {
        let read = |i: &HashMap<String, AttributeValue>| {
            i.get("committed_usd")
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<f64>().ok())
        };
        if let Some(v) = self
            .item(&counter_key(month))
            .await?
            .as_ref()
            .and_then(read)
        {
            return Ok(v);
        }
        let seed = ledger::month_to_date(&self.entries(month).await?);
        let set = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("execution", AttributeValue::S(counter_key(month)))
            .update_expression(
                "SET committed_usd = if_not_exists(committed_usd, :seed), counts = :m",
            )
            .expression_attribute_values(":seed", AttributeValue::N(seed.to_string()))
            .expression_attribute_values(":m", AttributeValue::S(month.into()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| AwsError::sdk("dynamodb", "UpdateItem", e))?;
        Ok(set.attributes().and_then(read).unwrap_or(seed))
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
    fn a_runs_spot_launches_and_reclaims_read_back_as_booked() {
        let placed = Placed {
            slot: 2,
            attempt: 1,
            instance_type: "c7g.4xlarge".into(),
            zone: "us-east-1b".into(),
            reclaimed: true,
        };
        let list = AttributeValue::L(vec![placed_item(&placed)]);
        let e = entry_of(&item(&[
            ("workers", AttributeValue::M(HashMap::new())),
            ("placements", list),
        ]))
        .unwrap();
        assert_eq!(e.placements, [placed]);
        // An item from before the list: none.
        let e = entry_of(&item(&[("workers", AttributeValue::M(HashMap::new()))])).unwrap();
        assert!(e.placements.is_empty());
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

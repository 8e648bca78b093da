//! DynamoDB: the vCPUs each run of the stack holds in each EC2 vCPU quota of a region
//! (`ephemera_core::vcpus`), in the ledger table beside the month's budget: one item per region
//! and quota code (`vcpus#<region>#<code>`) with each run's vCPUs by execution (`runs`) and their
//! sum (`reserved_vcpus`), which a reservation is written on the condition of, in one
//! transaction over the run's quotas, as the month's counter is.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use ephemera_core::vcpus::{ledger_key, Claim, Held};

use crate::error::AwsError;
use crate::ledger::LedgerTable;

pub trait VcpuReservations: Send + Sync {
    /// What the stack's runs hold in each of `codes` in `region`, read consistently (a code
    /// nobody ever reserved in holds nothing).
    fn held(
        &self,
        region: &str,
        codes: &[&str],
    ) -> impl Future<Output = Result<BTreeMap<String, Held>, AwsError>> + Send;
    /// Reserves `execution`'s claims together, each on the condition that the quota's runs
    /// together stay within the claim's limit and that this run's own reservation is as read
    /// in `held`: Ok(false) when a condition failed (another run took the room first), and
    /// nothing is written. Claiming again what is held already changes nothing.
    fn reserve(
        &self,
        region: &str,
        execution: &str,
        claims: &[Claim],
        held: &BTreeMap<String, Held>,
    ) -> impl Future<Output = Result<bool, AwsError>> + Send;
    /// Gives back everything `execution` holds in `codes`: each (code, vCPUs) released.
    fn release(
        &self,
        region: &str,
        execution: &str,
        codes: &[&str],
    ) -> impl Future<Output = Result<Vec<(String, u32)>, AwsError>> + Send;
}

const CONDITION_FAILED: &str = "ConditionalCheckFailed";
/// How many times a write is tried again when another transaction held its item.
const TRIES: usize = 8;

fn held_of(code: &str, item: Option<&HashMap<String, AttributeValue>>) -> Held {
    let runs = item
        .and_then(|i| i.get("runs"))
        .and_then(|m| m.as_m().ok())
        .map(|m| {
            m.iter()
                .filter_map(|(e, v)| Some((e.clone(), v.as_n().ok()?.parse::<u32>().ok()?)))
                .collect()
        })
        .unwrap_or_default();
    Held {
        code: code.to_string(),
        runs,
    }
}

fn n(v: u32) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn transact(
    u: aws_sdk_dynamodb::types::builders::UpdateBuilder,
) -> Result<TransactWriteItem, AwsError> {
    u.build()
        .map(|u| TransactWriteItem::builder().update(u).build())
        .map_err(|e| AwsError::Internal(format!("a vCPU reservation update is incomplete: {e}")))
}

/// A moment before writing again: concurrent reservations all write the same few items.
async fn pause() {
    tokio::time::sleep(std::time::Duration::from_millis(
        40 + u64::from(chrono::Utc::now().timestamp_subsec_millis()) % 160,
    ))
    .await;
}

impl LedgerTable {
    /// The quota's item with its empty map and sum, when it has none yet (written once: a
    /// reservation's own update sets one run's place in the map, which must exist).
    async fn seed_quota_item(&self, region: &str, code: &str) -> Result<(), AwsError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("execution", AttributeValue::S(ledger_key(region, code)))
            .update_expression(
                "SET runs = if_not_exists(runs, :empty), reserved_vcpus = if_not_exists(reserved_vcpus, :zero), quota_code = :c, #r = :r",
            )
            .expression_attribute_names("#r", "region")
            .expression_attribute_values(":empty", AttributeValue::M(HashMap::new()))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":c", AttributeValue::S(code.into()))
            .expression_attribute_values(":r", AttributeValue::S(region.into()))
            .send()
            .await
            .map_err(|e| AwsError::sdk("dynamodb", "UpdateItem", e))?;
        Ok(())
    }
}

/// Each item's cancellation code of a canceled transaction, or nothing for another error.
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

impl VcpuReservations for LedgerTable {
    async fn held(&self, region: &str, codes: &[&str]) -> Result<BTreeMap<String, Held>, AwsError> {
        let mut out = BTreeMap::new();
        if codes.is_empty() {
            return Ok(out);
        }
        // Every quota at once (TransactGetItems is serializable with the transactions that
        // reserve and release: a run's Spot and On-Demand room are seen held together or
        // released together, never one of each).
        let gets = codes
            .iter()
            .map(|code| {
                aws_sdk_dynamodb::types::Get::builder()
                    .table_name(&self.table)
                    .key("execution", AttributeValue::S(ledger_key(region, code)))
                    .build()
                    .map(|g| {
                        aws_sdk_dynamodb::types::TransactGetItem::builder()
                            .get(g)
                            .build()
                    })
                    .map_err(|e| {
                        AwsError::Internal(format!("a vCPU reservation read is incomplete: {e}"))
                    })
            })
            .collect::<Result<Vec<_>, AwsError>>()?;
        for _ in 0..TRIES {
            let got = self
                .client
                .transact_get_items()
                .set_transact_items(Some(gets.clone()))
                .send()
                .await;
            let responses = match got {
                Ok(r) => r.responses().to_vec(),
                // A transaction writing one of the items at the same moment: read again.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_transaction_canceled_exception()) =>
                {
                    pause().await;
                    continue;
                }
                Err(e) => return Err(AwsError::sdk("dynamodb", "TransactGetItems", e)),
            };
            for (i, code) in codes.iter().enumerate() {
                let item = responses.get(i).and_then(|r| r.item());
                out.insert(code.to_string(), held_of(code, item));
            }
            return Ok(out);
        }
        Err(AwsError::Call {
            service: "dynamodb",
            operation: "TransactGetItems",
            code: "TransactionCanceled".into(),
            message: format!("the vCPU reservations of {region} kept changing over {TRIES} tries"),
        })
    }

    async fn reserve(
        &self,
        region: &str,
        execution: &str,
        claims: &[Claim],
        held: &BTreeMap<String, Held>,
    ) -> Result<bool, AwsError> {
        let mut updates = vec![];
        for claim in claims {
            let before = held.get(&claim.code).and_then(|h| h.own(execution));
            if before == Some(claim.vcpus) {
                continue;
            }
            let Some(most) = claim.most_reserved_before(before) else {
                return Ok(false);
            };
            self.seed_quota_item(region, &claim.code).await?;
            let delta = i64::from(claim.vcpus) - i64::from(before.unwrap_or(0));
            let mine = match before {
                Some(_) => "runs.#e = :before",
                None => "attribute_not_exists(runs.#e)",
            };
            let mut u = Update::builder()
                .table_name(&self.table)
                .key(
                    "execution",
                    AttributeValue::S(ledger_key(region, &claim.code)),
                )
                .update_expression("SET runs.#e = :v, updated_at = :t ADD reserved_vcpus :d")
                .condition_expression(format!("reserved_vcpus <= :most AND {mine}"))
                .expression_attribute_names("#e", execution)
                .expression_attribute_values(":v", n(claim.vcpus))
                .expression_attribute_values(":d", AttributeValue::N(delta.to_string()))
                .expression_attribute_values(":most", n(most))
                .expression_attribute_values(
                    ":t",
                    AttributeValue::S(chrono::Utc::now().to_rfc3339()),
                );
            if let Some(b) = before {
                u = u.expression_attribute_values(":before", n(b));
            }
            updates.push(transact(u)?);
        }
        if updates.is_empty() {
            return Ok(true);
        }
        for _ in 0..TRIES {
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(updates.clone()))
                .send()
                .await;
            let e = match sent {
                Ok(_) => return Ok(true),
                Err(e) => e,
            };
            let codes = cancellation_codes(&e);
            if codes.iter().any(|c| c == CONDITION_FAILED) {
                return Ok(false);
            }
            if codes.iter().any(|c| c == "TransactionConflict") {
                pause().await;
                continue;
            }
            return Err(AwsError::sdk("dynamodb", "TransactWriteItems", e));
        }
        Err(AwsError::Call {
            service: "dynamodb",
            operation: "TransactWriteItems",
            code: "TransactionConflict".into(),
            message: format!(
                "the vCPU reservations of {execution} kept meeting other transactions over {TRIES} tries"
            ),
        })
    }

    async fn release(
        &self,
        region: &str,
        execution: &str,
        codes: &[&str],
    ) -> Result<Vec<(String, u32)>, AwsError> {
        for _ in 0..TRIES {
            let held = self.held(region, codes).await?;
            let mine: Vec<(String, u32)> = held
                .values()
                .filter_map(|h| Some((h.code.clone(), h.own(execution)?)))
                .collect();
            if mine.is_empty() {
                return Ok(vec![]);
            }
            // Every quota at once, as they were reserved: a run checking between two separate
            // releases would see the run's Spot room held and its On-Demand room free, and start
            // without Spot for nothing. Each on the condition that it is still as read: a
            // release by the sweeper and the teardown at once gives it back once.
            let mut updates = vec![];
            for (code, before) in &mine {
                updates.push(transact(
                    Update::builder()
                        .table_name(&self.table)
                        .key("execution", AttributeValue::S(ledger_key(region, code)))
                        .update_expression(
                            "REMOVE runs.#e SET updated_at = :t ADD reserved_vcpus :d",
                        )
                        .condition_expression("runs.#e = :before")
                        .expression_attribute_names("#e", execution)
                        .expression_attribute_values(":before", n(*before))
                        .expression_attribute_values(":d", AttributeValue::N(format!("-{before}")))
                        .expression_attribute_values(
                            ":t",
                            AttributeValue::S(chrono::Utc::now().to_rfc3339()),
                        ),
                )?);
            }
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(updates))
                .send()
                .await;
            let e = match sent {
                Ok(_) => return Ok(mine),
                Err(e) => e,
            };
            let codes = cancellation_codes(&e);
            if codes
                .iter()
                .any(|c| c == CONDITION_FAILED || c == "TransactionConflict")
            {
                pause().await;
                continue;
            }
            return Err(AwsError::sdk("dynamodb", "TransactWriteItems", e));
        }
        Err(AwsError::Call {
            service: "dynamodb",
            operation: "TransactWriteItems",
            code: "TransactionConflict".into(),
            message: format!(
                "the vCPU reservations of {execution} kept changing over {TRIES} tries"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_reads_as_each_runs_vcpus() {
        let item: HashMap<String, AttributeValue> = [(
            "runs".to_string(),
            AttributeValue::M(
                [
                    ("arn:a".to_string(), n(16)),
                    ("arn:b".to_string(), n(32)),
                    ("arn:bad".to_string(), AttributeValue::S("x".into())),
                ]
                .into(),
            ),
        )]
        .into();
        let h = held_of("L-1", Some(&item));
        assert_eq!(h.total(), 48);
        assert_eq!(h.own("arn:b"), Some(32));
        assert_eq!(h.others(Some("arn:a")), 32);
        assert_eq!(held_of("L-1", None).total(), 0);
    }
}

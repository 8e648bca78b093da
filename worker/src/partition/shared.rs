//! Reads shared by a run's tasks, so stages that read the same bars read them once: `indicators`
//! and `regression` read a pair's month with the same warm-up, and the three cross-pair stages
//! every pair's month. The queue hands such partitions out one after another (it claims in
//! (pair, month, stage) order), so a task mostly asks for a read another task has just made or is
//! making: a read in progress is waited for, not repeated. Only the last few reads are kept.
//!
//! What a partition records is still exactly what it computed from: a cross-pair month's
//! fingerprint is of the rows that were read, so bars changed after that read are found at the
//! next enqueue and the month redone, as when each stage read for itself.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use chrono::NaiveDate;
use tokio::sync::OnceCell;

use tokio_postgres::Client;

use super::read::{self, Input, Shape};
use crate::queue::Claim;

/// Which bars a read holds: its shape (`read::Shape`), pair (`*` for every pair) and month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub shape: Shape,
    pub pair: String,
    pub month: NaiveDate,
}

type Slot = Arc<OnceCell<Arc<Input>>>;

/// The run's last reads, newest last.
pub struct SharedReads {
    kept: usize,
    recent: Mutex<VecDeque<(Key, Slot)>>,
}

impl SharedReads {
    /// Keeps the last `kept` reads (at least one): as many as the run has tasks, so each task's
    /// latest read stays for the tasks that claim the same bars next.
    pub fn new(kept: usize) -> SharedReads {
        SharedReads {
            kept: kept.max(1),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// The input under `key`: kept, being read by another task (then waited for), or read now by
    /// `read`. A failed or abandoned read leaves the key free for the next caller to read.
    pub async fn get<F, Fut>(&self, key: Key, read: F) -> Result<Arc<Input>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Input>>,
    {
        let slot = {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            match recent.iter().find(|(k, _)| *k == key) {
                Some((_, slot)) => slot.clone(),
                None => {
                    let slot = Slot::default();
                    recent.push_back((key, slot.clone()));
                    while recent.len() > self.kept {
                        recent.pop_front();
                    }
                    slot
                }
            }
        };
        slot.get_or_try_init(|| async { read().await.map(Arc::new) })
            .await
            .cloned()
    }
}

/// The claim's input, read once for every stage of the run that reads the same bars.
pub async fn input(
    reads: &SharedReads,
    client: &Client,
    source: &str,
    c: &Claim,
) -> Result<Arc<Input>> {
    let key = Key {
        shape: Shape::of(c.stage),
        pair: c.pair.clone(),
        month: c.month.first,
    };
    reads.get(key, || read::input(client, source, c)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bars::{Bars, Quality};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(pair: &str, day: u32) -> Key {
        Key {
            shape: Shape::WarmUp,
            pair: pair.into(),
            month: NaiveDate::from_ymd_opt(2023, 1, day).unwrap(),
        }
    }

    fn input(rows: u64) -> Input {
        Input::Pair {
            bars: Bars::default(),
            first: 0,
            quality: Quality {
                rows_in: rows,
                ..Quality::default()
            },
        }
    }

    #[tokio::test]
    async fn a_read_is_made_once_waited_for_and_forgotten_when_old() {
        let shared = SharedReads::new(2);
        let reads = AtomicUsize::new(0);
        let read = |rows| {
            let reads = &reads;
            move || async move {
                reads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(input(rows))
            }
        };
        // Two tasks asking at once: one read, both get it.
        let (a, b) = tokio::join!(
            shared.get(key("EURUSD", 1), read(7)),
            shared.get(key("EURUSD", 1), read(8))
        );
        assert_eq!((a.unwrap().rows_in(), b.unwrap().rows_in()), (7, 7));
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Another shape, pair or month is another read.
        let regime = Key {
            shape: Shape::Days,
            ..key("EURUSD", 1)
        };
        shared.get(regime, read(9)).await.unwrap();
        shared.get(key("GBPUSD", 1), read(10)).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 3);
        // Only the last two are kept: the first is read again.
        let again = shared.get(key("EURUSD", 1), read(11)).await.unwrap();
        assert_eq!((again.rows_in(), reads.load(Ordering::SeqCst)), (11, 4));
    }

    #[tokio::test]
    async fn a_failed_read_is_tried_again() {
        let shared = SharedReads::new(4);
        let failed = shared
            .get(key("EURUSD", 1), || async {
                anyhow::bail!("connection lost")
            })
            .await;
        assert!(failed.is_err());
        let ok = shared
            .get(key("EURUSD", 1), || async { Ok(input(3)) })
            .await
            .unwrap();
        assert_eq!(ok.rows_in(), 3);
    }
}

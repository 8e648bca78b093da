//! What a partition records in `ephemera.partitions.quality`, one type per kind of stage. The
//! stage writes it and every reader (the summary, validate, a rerun, the manifest) reads it back
//! through the same type, so no key is spelt in two places.

use ephemera_contract::ManifestObject;
use serde::{Deserialize, Serialize};

use crate::bars::Quality;
pub use crate::validate::Report as Validated;

/// A computing stage's partition: what the bar policy did to its month's bars, and what later
/// work on it needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Computed {
    #[serde(flatten)]
    pub bars: Quality,
    /// Per-pair stages: the bars of history before the month that warmed its windows (validate
    /// expects that many fewer leading NULLs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_bars: Option<u64>,
    /// Cross-pair stages: the month's inputs when it was done (`queue::inputs`); a rerun redoes
    /// the partition when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<serde_json::Value>,
}

/// An export partition: the objects it wrote, which the run's manifest lists.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Exported {
    pub objects: Vec<ManifestObject>,
}

/// Reads a stored record back as the type its stage wrote; NULL (not done) is `None`.
pub fn read<T: serde::de::DeserializeOwned>(
    v: Option<serde_json::Value>,
) -> anyhow::Result<Option<T>> {
    Ok(v.map(serde_json::from_value).transpose()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written() {
        let c = Computed {
            bars: Quality {
                rows_in: 10,
                gaps: 2,
                ..Quality::default()
            },
            history_bars: Some(2000),
            inputs: None,
        };
        let v = serde_json::to_value(&c).unwrap();
        // The bar counts sit at the top level, as before the type, and absent parts are absent.
        assert_eq!(v["rows_in"], 10);
        assert_eq!(v["history_bars"], 2000);
        assert!(v.get("inputs").is_none());
        assert_eq!(read::<Computed>(Some(v)).unwrap(), Some(c));
        assert_eq!(read::<Computed>(None).unwrap(), None);
        let cross: Computed = serde_json::from_value(serde_json::json!({
            "rows_in": 5, "bad_price": 0, "high_below_low": 0, "bad_volume": 0,
            "out_of_order": 0, "duplicate_ts": 0, "gaps": 0, "largest_gap_minutes": 0,
            "rows_kept": 5, "inputs": {"EURUSD": [5, 0, 1, 7]}
        }))
        .unwrap();
        assert_eq!(cross.inputs.unwrap()["EURUSD"][3], 7);
        assert!(read::<Validated>(Some(serde_json::json!({"problems": 1}))).is_err());
    }
}

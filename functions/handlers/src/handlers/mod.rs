//! One module per Lambda: parse the input, gather facts through the adapters, let the domain
//! core decide, return the typed output.

pub mod health_check;
pub mod launch_worker;
pub mod quota_check;
pub mod snapshot_database;
pub mod spot_interruption;
pub mod sweeper;
pub mod terminate_report;
pub mod verify_completion;

use serde::de::DeserializeOwned;

use crate::error::Error;

pub(crate) fn parse_input<T: DeserializeOwned>(
    function: &str,
    v: serde_json::Value,
) -> Result<T, Error> {
    serde_path_to_error::deserialize(v)
        .map_err(|e| Error::BadInput(format!("{function}: {}: {}", e.path(), e.inner())))
}

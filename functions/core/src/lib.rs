//! ephemera's domain core: every decision the Lambdas make, as pure functions without clients.

#![warn(missing_docs)]

pub mod admission;
pub mod budget;
pub mod capacity;
pub mod caps;
pub mod catalog;
pub mod cost;
pub mod cost_report;
pub mod email;
pub mod gpu;
pub mod health;
pub mod image;
pub mod instance_state;
pub mod job_secrets;
pub mod launch;
pub mod ledger;
pub mod market;
pub mod metrics;
pub mod month_html;
pub mod payload;
pub mod placement;
pub mod plain_text;
pub mod plan;
pub mod quota;
pub mod quota_request;
pub mod refusal;
pub mod report;
pub mod report_html;
pub mod run_credentials;
pub mod rundoc;
pub mod runspec;
pub mod s3_url;
pub mod snapshot;
pub mod stopped;
pub mod sweep;
pub mod userdata;
pub mod vcpus;
pub mod verify;

/// What the worker and the Lambdas exchange lives in `ephemera-contract`; the handlers, which
/// depend on this crate alone, reach it here.
pub use ephemera_contract::{self as contract, names, tags, State};
pub use market::{Market, MarketPolicy};
pub use runspec::{InvalidRunSpec, RunSpec};

//! ephemera's domain core: every decision the Lambdas make, as pure functions without clients.

pub mod capacity;
pub mod catalog;
pub mod cost;
pub mod health;
pub mod ledger;
pub mod names;
pub mod quota;
pub mod report_html;
pub mod rundoc;
pub mod runspec;
pub mod sweep;
pub mod tags;
pub mod userdata;
pub mod verify;

pub use runspec::{InvalidRunSpec, Market, MarketPolicy, RunSpec};

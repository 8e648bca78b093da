//! The contract between the worker on the instance and the Lambdas (and the CLI and harness that
//! read what either writes): every type, path and name both sides must agree on, defined once.
//!
//! A crate of its own, apart from `ephemera-core`, so that the worker links serde types and
//! names and nothing of the Lambdas' decisions (RunSpec validation, cost, reports).

pub mod logs;
pub mod manifest;
pub mod names;
pub mod ssm;
pub mod states;
pub mod summary;
pub mod tags;

pub use manifest::{Manifest, ManifestObject};
pub use ssm::{RunParameters, Started};
pub use states::State;
pub use summary::{Summary, Validation};

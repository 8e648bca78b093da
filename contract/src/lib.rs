//! The contract between the worker on the instance and the Lambdas (and the CLI and harness that
//! read what either writes): every type, path and name both sides must agree on, defined once.
//!
//! A crate of its own, apart from `ephemera-core`, so that the worker links serde types and
//! names and nothing of the Lambdas' decisions (RunSpec validation, cost, reports).

#![warn(missing_docs)]

/// The workers' log streams and how much of a worker's log is shipped.
pub mod logs;
/// The export manifest a worker writes and verify-completion checks.
pub mod manifest;
/// The error names the Lambdas, the worker and the ASL share.
pub mod names;
/// One run's session of the run role, handed to its instance and renewed by its agent.
pub mod session;
/// The run's SSM parameters: the worker's "started", each instance's task token.
pub mod ssm;
/// The state machine's states, by the names the ASL gives them.
pub mod states;
/// The completion summary a worker sends with SendTaskSuccess.
pub mod summary;
/// The tags on what a run launches.
pub mod tags;

pub use manifest::{Manifest, ManifestObject};
pub use session::RunSession;
pub use ssm::{RunParameters, Started};
pub use states::State;
pub use summary::{Summary, Validation};

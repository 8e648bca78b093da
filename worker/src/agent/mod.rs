//! The worker's side of the run's protocol, whatever the work.

pub mod ending;
pub mod link;
pub mod logship;

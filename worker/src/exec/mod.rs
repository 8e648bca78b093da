//! `exec`: any command as the run's worker.

pub mod checkpoint;
pub mod fetch;
pub mod job;
pub mod publish;
pub mod supervise;

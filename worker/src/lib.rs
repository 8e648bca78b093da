//! ephemera's worker: the feature run (claims (pair, month) partitions of 1-minute FX bars from
//! PostgreSQL, computes feature stages and writes them back with binary COPY) and any job
//! (`exec`), each alone or as a run's worker through the agent.

pub mod agent;
pub mod bars;
pub mod column;
pub mod copy;
pub mod db;
pub mod exec;
pub mod export;
pub mod features;
pub mod inputs;
pub mod month;
pub mod outputs;
pub mod partition;
pub mod progress;
pub mod quality;
pub mod queue;
pub mod run;
pub mod seed;
pub mod stage;
pub mod store;
pub mod table;
pub mod tools;
pub mod validate;

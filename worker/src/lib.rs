//! ephemera's feature worker: claims (pair, month) partitions of 1-minute FX bars from
//! PostgreSQL, computes feature stages and writes them back with binary COPY.

pub mod bars;
pub mod checkpoint;
pub mod column;
pub mod copy;
pub mod db;
pub mod export;
pub mod features;
pub mod fetch;
pub mod inputs;
pub mod job;
pub mod link;
pub mod logship;
pub mod month;
pub mod outputs;
pub mod partition;
pub mod progress;
pub mod publish;
pub mod quality;
pub mod queue;
pub mod run;
pub mod seed;
pub mod stage;
pub mod store;
pub mod supervise;
pub mod table;
pub mod validate;

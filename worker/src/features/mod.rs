//! Feature stages: pure kernels from clean bars to a stage's typed rows, each beside the table
//! it declares. Nothing here reads or writes: `partition.rs` feeds them and writes what they
//! return.

pub mod arbitrage;
pub mod causality;
pub mod currency_index;
pub mod indicators;
pub mod regime;
pub mod regression;

/// The stages' settings a run may change (the command line's flags).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Params {
    pub arbitrage: arbitrage::Params,
}

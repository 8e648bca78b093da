//! ephemera's Lambdas: thin handlers over `ephemera-core`, with AWS behind small traits.

pub mod aws;
pub mod dispatch;
pub mod error;
pub mod handlers;

pub use aws::Aws;
pub use dispatch::{invoke, Function, Settings};
pub use error::Error;

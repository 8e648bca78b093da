//! ephemera's Lambdas: thin handlers over `ephemera-core`, with AWS behind small traits.

pub use ephemera_aws as aws;
pub mod dispatch;
pub mod error;
pub mod handlers;

pub use aws::Aws;
pub use dispatch::{invoke, Function, Settings};
pub use error::Error;

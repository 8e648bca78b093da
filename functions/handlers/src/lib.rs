//! ephemera's Lambdas: thin handlers over `ephemera-core`, with AWS behind small traits.
//! `handlers` decide, `wiring` gives each its clients (one module per Lambda, which its bin
//! calls), `error` names what the state machine is told.

pub use ephemera_aws as aws;
pub mod error;
pub mod function;
pub mod handlers;
pub mod settings;
pub mod wiring;

pub use aws::Aws;
pub use error::Error;
pub use function::Function;
pub use settings::Settings;
pub use wiring::invoke;

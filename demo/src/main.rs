//! `make demo`: a whole run on this machine (the library of this crate says how).

use std::process::ExitCode;

use clap::Parser;
use ephemera_demo::{Console, Options};

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    let console = Console::new();
    // Ctrl-C ends the demo; moto, PostgreSQL and the workers die with this process.
    tokio::select! {
        r = ephemera_demo::run(options, console.clone()) => match r {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                console.finish();
                eprintln!("demo: {e:#}");
                ExitCode::FAILURE
            }
        },
        _ = tokio::signal::ctrl_c() => {
            console.finish();
            eprintln!("demo: interrupted; everything it started is stopped");
            ExitCode::from(130)
        }
    }
}

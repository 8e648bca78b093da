//! `make lambdas`: each bootstrap's size and cold start (see `ephemera_tests::coldstart`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ephemera_tests::coldstart::{measure, Timer};

/// Times cold starts of Lambda bootstraps against a local runtime API.
#[derive(Parser)]
struct Options {
    /// Timed starts of each bootstrap (after one untimed start); the figures are their median.
    #[arg(long, default_value_t = 15)]
    starts: usize,
    /// The bootstraps (`<dir>/<name>/bootstrap` as cargo lambda writes them, or named binaries).
    #[arg(required = true)]
    bootstraps: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    if options.starts == 0 {
        eprintln!("--starts: 0 starts measure nothing; give 1 or more");
        return ExitCode::FAILURE;
    }
    let timer = match Timer::start().await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("the local runtime API did not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "cold starts: median (fastest–slowest) of {} starts each, from spawn to asking for the \
         first event (init) and to answering it",
        options.starts
    );
    println!(
        "  {:<28} {:>10}  {:<24} {:<24} {:>9}  answered with",
        "bootstrap", "bytes", "init", "first answer", "peak RSS"
    );
    for bootstrap in &options.bootstraps {
        match measure(&timer, bootstrap, options.starts).await {
            Ok(r) => println!(
                "  {:<28} {:>10}  {:<24} {:<24} {:>6} MB  {}",
                r.name,
                r.bytes,
                r.init.to_string(),
                r.answer.to_string(),
                format!("{:.1}", r.peak_rss_kib as f64 / 1024.0),
                r.answered_with
            ),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

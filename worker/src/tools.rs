//! The database tools: init, seed, status, report, drop, one call each on the database, the
//! answer on stdout; and the database's URL, which the feature run needs too.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::agent::link;
use crate::{db, outputs, queue, seed, validate};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Tool {
    /// Create the source table (if absent), the queue and the registry of runs (each run creates
    /// its own output tables, in a schema of its own).
    Init,
    /// Load CSV files of bars (one per pair, named after it) into the source table.
    Seed { files: Vec<PathBuf> },
    /// Partitions by run, stage and state.
    Status {
        /// Only this run.
        #[arg(long)]
        run_id: Option<String>,
    },
    /// The validate stage's findings for a run, as JSON (every column with a problem).
    Report {
        #[arg(long)]
        run_id: String,
    },
    /// Remove a run's output tables, queue rows and validation findings.
    ///
    /// The run's schema (every feature table in it), its queue rows and its validation findings
    /// go in one transaction; other runs are not touched, and exported Parquet files are left
    /// where they are. Prints what was removed, as JSON.
    ///
    /// Exits non-zero, removing nothing, when the database holds nothing of the run (a typo
    /// should not pass for a drop; the message lists the runs there are), and when partitions
    /// of the run are under live leases (its workers are still on it) unless --force.
    Drop {
        /// The run to remove, as given to `run --run-id`.
        #[arg(long)]
        run_id: String,
        /// Drop even while workers hold leases on the run; their partitions then fail.
        #[arg(long)]
        force: bool,
    },
}

/// The database's URL: from the run's secret, else the flag or the environment; with the CA
/// bundle when one is given.
pub async fn database_url(
    secret: Option<&str>,
    url: Option<String>,
    ca_file: Option<&Path>,
) -> Result<String> {
    let secret = match secret {
        Some(id) => Some(link::database_url_from_secret(id).await?),
        None => None,
    };
    let url = secret.or(url).ok_or_else(|| {
        anyhow::anyhow!("--database-url (or DATABASE_URL, or --database-secret) is required")
    })?;
    Ok(match ca_file {
        Some(ca) => db::with_root_cert(&url, ca),
        None => url,
    })
}

/// Runs one tool on the database at `url`, with `source` the table of bars.
pub async fn run(tool: Tool, url: &str, source: &str) -> Result<()> {
    match tool {
        Tool::Init => {
            let client = db::connect(url).await?;
            db::init(&client, source).await?;
            println!("schema ready");
        }
        Tool::Seed { files } => {
            let client = db::connect(url).await?;
            db::init(&client, source).await?;
            for f in files {
                let s = seed::seed_file(&client, source, &f).await?;
                println!("{}", serde_json::to_string(&s)?);
            }
        }
        Tool::Status { run_id } => {
            let client = db::connect(url).await?;
            for (run, stage, state, n) in queue::status(&client, run_id.as_deref()).await? {
                println!("{run:<24} {stage:<12} {state:<8} {n}");
            }
        }
        Tool::Report { run_id } => {
            let client = db::connect(url).await?;
            let report = validate::findings(&client, &run_id).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Tool::Drop { run_id, force } => {
            let mut client = db::connect(url).await?;
            db::init(&client, source).await?;
            let dropped = outputs::drop(&mut client, &run_id, force).await?;
            println!("{}", serde_json::to_string_pretty(&dropped)?);
        }
    }
    Ok(())
}

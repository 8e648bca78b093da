//! `ephemera`: validate a RunSpec, start a run, and follow it to its report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aws_sdk_sfn::types::ExecutionStatus;
use clap::{Parser, Subcommand};
use ephemera_core::RunSpec;

#[derive(Parser)]
#[command(
    name = "ephemera",
    version,
    about = "Run one heavy batch job on a disposable EC2 worker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a RunSpec file and list every problem in it.
    Validate { runspec: PathBuf },
    /// Start an execution of the deployed state machine with a RunSpec.
    Run {
        runspec: PathBuf,
        /// The state machine (the stack's StateMachineArn output).
        #[arg(long, env = "EPHEMERA_STATE_MACHINE_ARN")]
        state_machine: String,
        /// Execution name; defaults to the run id and the time.
        #[arg(long)]
        name: Option<String>,
        /// Wait for the end and print the cost report.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (the run goes on).
        #[arg(long, default_value_t = 7 * 86_400)]
        wait_timeout: u64,
    },
}

fn load(path: &PathBuf) -> Result<(serde_json::Value, RunSpec), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let spec = RunSpec::parse(&value).map_err(|e| {
        let lines: Vec<String> = e
            .errors
            .iter()
            .map(|f| format!("  {}: {}", f.field, f.message))
            .collect();
        format!("{}: invalid RunSpec:\n{}", path.display(), lines.join("\n"))
    })?;
    Ok((value, spec))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Validate { runspec } => {
            let (_, spec) = load(&runspec)?;
            println!(
                "{}: valid RunSpec for run '{}' ({} candidate types, {:?} market, budget ${:.2})",
                runspec.display(),
                spec.run_id,
                spec.worker.instance_types.len(),
                spec.worker.market,
                spec.limits.budget_usd
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            runspec,
            state_machine,
            name,
            wait,
            wait_timeout,
        } => {
            let (value, spec) = load(&runspec)?;
            let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
            let sfn = aws_sdk_sfn::Client::new(&conf);
            let name = name.unwrap_or_else(|| {
                let id: String = spec.run_id.chars().take(60).collect();
                format!("{id}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"))
            });
            let started = sfn
                .start_execution()
                .state_machine_arn(&state_machine)
                .name(&name)
                .input(value.to_string())
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "StartExecution: {}",
                        aws_sdk_sfn::error::DisplayErrorContext(&e)
                    )
                })?;
            let arn = started.execution_arn().to_string();
            println!("started {arn}");
            if let Some(region) = conf.region() {
                println!(
                    "console: https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{arn}"
                );
            }
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            let until = std::time::Instant::now() + Duration::from_secs(wait_timeout);
            loop {
                let d = sfn
                    .describe_execution()
                    .execution_arn(&arn)
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "DescribeExecution: {}",
                            aws_sdk_sfn::error::DisplayErrorContext(&e)
                        )
                    })?;
                match d.status() {
                    ExecutionStatus::Running if std::time::Instant::now() < until => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    ExecutionStatus::Running => {
                        println!("still running after {wait_timeout} s; it goes on without this terminal");
                        return Ok(ExitCode::from(3));
                    }
                    ExecutionStatus::Succeeded => {
                        let out: serde_json::Value = d
                            .output()
                            .and_then(|o| serde_json::from_str(o).ok())
                            .unwrap_or_default();
                        println!("SUCCEEDED");
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&out["report"]).unwrap_or_default()
                        );
                        return Ok(ExitCode::SUCCESS);
                    }
                    other => {
                        println!(
                            "{}: {} - {}",
                            other.as_str(),
                            d.error().unwrap_or("no error name"),
                            d.cause().unwrap_or("no cause")
                        );
                        return Ok(ExitCode::FAILURE);
                    }
                }
            }
        }
    }
}

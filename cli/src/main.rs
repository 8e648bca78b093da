//! `ephemera`: validate a RunSpec, start a run and follow it, and read what runs did: status,
//! recent runs, cost reports, the worker's logs; sweep what outlived its run.

mod aws;
mod cancel;
mod errors;
mod follow;
mod history;
mod logs;
mod plan;
mod report;
mod resolve;
mod runs;
mod sweep;
mod terminal;
mod waiting;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ephemera_aws::LedgerTable;
use ephemera_core::{budget, catalog, RunSpec};

use crate::errors::{CliError, Op};

#[derive(Parser)]
#[command(
    name = "ephemera",
    version,
    about = "Run one heavy batch job on a disposable EC2 worker",
    after_help = "RUN is a run id, an execution name or an execution ARN (the newest match).\n\
                  Exit codes: 0 done, 1 the run failed, 2 usage, invalid RunSpec or AWS error, \
                  3 still running (after --wait-timeout, or no report yet); `plan`: 0 would \
                  start now, 3 would wait for quota, 4 would be refused."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The state machine: the stack's output StateMachineArn.
    #[arg(long, global = true, env = "EPHEMERA_STATE_MACHINE_ARN")]
    pub state_machine: Option<String>,
    /// The AWS region; by default the state machine's, else AWS_REGION or the profile's.
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Send every AWS call here (a local emulator); AWS_ENDPOINT_URL does the same.
    #[arg(long, global = true)]
    pub endpoint_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Check a RunSpec file and list every problem in it.
    Validate { runspec: PathBuf },
    /// Print the RunSpec's JSON Schema (as `runspec.schema.json`), for editors to check with.
    Schema,
    /// What a run of this RunSpec would do now, with nothing launched or requested: each
    /// candidate's quota, placement score and prices, the order the launch tries them in,
    /// the cost against the cap and the month, and the verdict (exit 0 start, 3 wait, 4 refuse).
    Plan {
        runspec: PathBuf,
        /// The plan's JSON instead.
        #[arg(long)]
        json: bool,
        /// The run ledger (the stack output LedgerTableName); by default the stack's, named
        /// after the state machine, when one is given.
        #[arg(long, env = "EPHEMERA_LEDGER_TABLE")]
        ledger: Option<String>,
        /// The stack's MonthlyBudgetUsd, to judge the month's remainder with the ledger.
        #[arg(long, env = "EPHEMERA_MONTHLY_BUDGET_USD")]
        budget: Option<f64>,
    },
    /// Validate a RunSpec, start a run, and follow it to its report.
    Run {
        runspec: PathBuf,
        /// Execution name; by default the run id and the time.
        #[arg(long)]
        name: Option<String>,
        /// Start it and return at once (follow it later with `ephemera status`).
        #[arg(long)]
        detach: bool,
        /// Following is the default; kept so that older scripts work.
        #[arg(long, hide = true, conflicts_with = "detach")]
        wait: bool,
        /// Stop following after this many seconds (exit 3); the run goes on.
        #[arg(long, default_value_t = 7 * 86_400)]
        wait_timeout: u64,
    },
    /// Where a run is, for how long, and what it has cost (the latest run without RUN).
    Status { run: Option<String> },
    /// Recent runs: run id, execution, outcome, start, duration, cost.
    Runs {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// The run ledger (the stack output LedgerTableName); by default the stack's, named
        /// after the state machine (`<stack>-worker` → `<stack>-ledger`).
        #[arg(long, env = "EPHEMERA_LEDGER_TABLE")]
        ledger: Option<String>,
        /// Write the month at a glance to FILE instead: spend against the budget over the
        /// month, runs by outcome, each run's cost and Spot saving (a static HTML page).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// The month of `--html` (YYYY-MM); this month by default.
        #[arg(long, requires = "html")]
        month: Option<String>,
        /// The monthly budget the page draws the spend against (the stack's MonthlyBudgetUsd).
        #[arg(long, env = "EPHEMERA_MONTHLY_BUDGET_USD")]
        budget: Option<f64>,
    },
    /// A run's cost report, as the email tells it.
    Report {
        run: String,
        /// The report's JSON instead.
        #[arg(long)]
        json: bool,
        /// Also write the report as a static HTML page (timeline, cost split, attempts, checks).
        #[arg(long, value_name = "FILE")]
        html: Option<std::path::PathBuf>,
    },
    /// Stop a run: its instances terminated (a job gets SIGTERM and its grace), its bill
    /// settled, the CANCELLED report emailed.
    Cancel {
        run: String,
        /// Why, as the report and the email say it.
        #[arg(long)]
        reason: Option<String>,
    },
    /// The log lines the run's workers shipped, attempt by attempt.
    Logs {
        run: String,
        /// The lines as shipped (JSON), not made readable.
        #[arg(long)]
        raw: bool,
        /// Every worker's lines as they are written, each with its worker and attempt, until
        /// the run ends (exit 0 when it succeeded, 1 otherwise).
        #[arg(long)]
        follow: bool,
    },
    /// Instances ephemera launched that outlived their run; a dry run unless --yes.
    Sweep {
        /// Terminate them.
        #[arg(long)]
        yes: bool,
    },
}

/// How a command ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    RunFailed,
    StillRunning,
    /// `ephemera plan`'s verdict (`ephemera_core::plan::Verdict::exit_code`).
    Planned(u8),
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> ExitCode {
        ExitCode::from(match o {
            Outcome::Done => 0,
            Outcome::RunFailed => 1,
            Outcome::StillRunning => 3,
            Outcome::Planned(code) => code,
        })
    }
}

fn load(path: &Path) -> Result<(serde_json::Value, RunSpec), CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{}: not JSON: {e}", path.display())))?;
    let spec = ephemera_core::admission::parse(&value).map_err(|e| CliError::InvalidRunSpec {
        path: path.display().to_string(),
        n: e.errors.len(),
        list: e
            .errors
            .iter()
            .map(|f| format!("  {}: {}", f.field, f.message))
            .collect::<Vec<_>>()
            .join("\n"),
    })?;
    Ok((value, spec))
}

/// The ARN whose region the calls go to: RUN's when it is an execution ARN, else the machine's.
/// The ledger table: as given, or the stack's, from the state machine's name
/// (template.yaml names them `<stack>-worker` and `<stack>-ledger`).
fn ledger_table(given: Option<&str>, machine: &str) -> Option<String> {
    if let Some(t) = given {
        return Some(t.to_string());
    }
    let name = machine.rsplit(':').next()?;
    Some(format!("{}-ledger", name.strip_suffix("-worker")?))
}

fn arn_hint<'a>(run: Option<&'a str>, machine: Option<&'a str>) -> Option<&'a str> {
    run.filter(|r| resolve::is_execution_arn(r)).or(machine)
}

#[tokio::main]
async fn main() -> ExitCode {
    // The SDK's own logs only when asked for (RUST_LOG): never a dump in a person's terminal.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    match run(Cli::parse()).await {
        Ok(outcome) => outcome.into(),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<Outcome, CliError> {
    let g = &cli.global;
    let machine = g.state_machine.as_deref();
    match cli.command {
        Command::Schema => schema(),
        Command::Validate { runspec } => validate(g, &runspec),
        Command::Plan {
            runspec,
            json,
            ledger,
            budget,
        } => plan_run(g, &runspec, json, ledger, budget).await,
        Command::Run {
            runspec,
            name,
            detach,
            wait: _,
            wait_timeout,
        } => {
            let start = Start {
                runspec,
                name,
                detach,
                wait_timeout,
            };
            start_run(g, start).await
        }
        Command::Status { run } => {
            let OneRun { conf, sfn, e } = one_run(g, run.as_deref()).await?;
            let logs = aws_sdk_cloudwatchlogs::Client::new(&conf);
            runs::status(&sfn, &logs, &e).await
        }
        Command::Runs {
            limit,
            ledger,
            html,
            month,
            budget,
        } => {
            let page = html.map(|file| runs::Page {
                month,
                budget_usd: budget,
                file,
            });
            list_runs(g, ledger.as_deref(), limit, page).await
        }
        Command::Report { run, json, html } => {
            let OneRun { sfn, e, .. } = one_run(g, Some(&run)).await?;
            report::command(&sfn, &e, json, html.as_deref()).await
        }
        Command::Cancel { run, reason } => {
            let OneRun { sfn, e, .. } = one_run(g, Some(&run)).await?;
            cancel::command(&sfn, &e, reason.as_deref()).await
        }
        Command::Logs { run, raw, follow } => {
            let OneRun { conf, sfn, e } = one_run(g, Some(&run)).await?;
            let logs = aws_sdk_cloudwatchlogs::Client::new(&conf);
            match follow {
                true => logs::follow(&logs, &sfn, &e, raw).await,
                false => logs::command(&logs, &sfn, &e, raw).await,
            }
        }
        Command::Sweep { yes } => {
            let conf = aws::config(g, machine).await?;
            sweep::command(
                &aws_sdk_ec2::Client::new(&conf),
                &aws_sdk_sfn::Client::new(&conf),
                &aws::region(&conf),
                yes,
            )
            .await
        }
    }
}

/// The run a command is about: the AWS configuration (in the region of its ARN, when given
/// one), Step Functions, and its execution.
struct OneRun {
    conf: aws_config::SdkConfig,
    sfn: aws_sdk_sfn::Client,
    e: resolve::Execution,
}

/// RUN, or without one the state machine's latest.
async fn one_run(g: &Global, run: Option<&str>) -> Result<OneRun, CliError> {
    let machine = g.state_machine.as_deref();
    let conf = aws::config(g, arn_hint(run, machine)).await?;
    let sfn = aws_sdk_sfn::Client::new(&conf);
    let e = resolve::resolve(&sfn, machine, run).await?;
    Ok(OneRun { conf, sfn, e })
}

/// `ephemera plan FILE`: what a run would do now, with the stack's ledger unless told another.
async fn plan_run(
    g: &Global,
    runspec: &Path,
    json: bool,
    ledger: Option<String>,
    budget: Option<f64>,
) -> Result<Outcome, CliError> {
    let machine = g.state_machine.as_deref();
    let conf = aws::config(g, machine).await?;
    let ledger = ledger
        .as_deref()
        .map(str::to_string)
        .or_else(|| machine.and_then(|m| ledger_table(None, m)));
    let ask = plan::Ask {
        runspec,
        json,
        ledger,
        monthly_budget_usd: budget,
    };
    plan::command(&conf, ask).await.map(Outcome::Planned)
}

/// `ephemera schema`: the schema editors check RunSpecs with.
fn schema() -> Result<Outcome, CliError> {
    let schema = RunSpec::json_schema();
    println!(
        "{}",
        serde_json::to_string_pretty(&schema).unwrap_or_default()
    );
    Ok(Outcome::Done)
}

/// `ephemera validate FILE`: every rule, then the run's cap against its worst case, priced
/// from the dated table (the deployment prices with the Price List API, which never exceeds
/// the table's bound for the region).
fn validate(g: &Global, runspec: &Path) -> Result<Outcome, CliError> {
    let (_, spec) = load(runspec)?;
    println!(
        "{}: valid RunSpec for run '{}' ({} candidate types, {} market, budget ${:.2})",
        runspec.display(),
        spec.run_id,
        spec.worker.instance_types.len(),
        spec.worker.market.as_str(),
        spec.limits.budget_usd
    );
    let region = g
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
        .unwrap_or_else(|| catalog::PRICES_REGION.to_string());
    let mut dearest: Option<(&String, f64)> = None;
    for t in &spec.worker.instance_types {
        let Some(price) = catalog::on_demand_hourly_bound(t, &region) else {
            println!("worst case: not computed here ({t} is not in the dated price table); CheckQuota computes it with the Price List API before anything is requested or launched");
            return Ok(Outcome::Done);
        };
        if dearest.is_none_or(|(_, p)| price > p) {
            dearest = Some((t, price));
        }
    }
    let Some((dearest, price)) = dearest else {
        return Ok(Outcome::Done);
    };
    let worst = budget::attempt_worst_case(&spec, dearest, price, &region);
    let cap = budget::Cap::of(&spec, &region);
    println!(
        "worst case of one attempt in {region}: ${:.4} ({})",
        worst.usd,
        worst.terms()
    );
    let attempts = (cap.remainder(0.0) / worst.usd).floor().max(0.0) as u64;
    match budget::first_admission(&spec, &worst, &cap) {
        Ok(first) => {
            println!(
                "cap: limits.budget_usd ${:.2}; every worker's first attempt and the run's own orchestration (${:.4}) hold ${first:.4} of it; {} attempts fit in all (worker.count {}, up to {} each)",
                cap.budget_usd,
                cap.overhead_usd,
                attempts,
                spec.worker.count,
                1 + spec.limits.max_relaunches
            );
            // The cap buys less than the whole runtime: each first attempt's money deadline.
            let each = budget::share(cap.remainder(0.0), spec.worker.count - 1);
            if let Some(g) = budget::grant(&spec, &worst, each).filter(|g| g.capped()) {
                println!(
                    "money deadline: the cap buys each worker's first attempt {} s of runtime, less than limits.max_runtime_seconds {}; the worker stops its work then, as at a Spot notice, and the run ends BUDGET_EXHAUSTED",
                    g.runtime_seconds, spec.limits.max_runtime_seconds
                );
            }
            Ok(Outcome::Done)
        }
        Err(refused) => Err(CliError::InvalidRunSpec {
            path: runspec.display().to_string(),
            n: 1,
            list: format!(
                "  limits.budget_usd: ${:.2} cannot cover every worker's first attempt even at a minute's runtime, ${:.4} ({}); CheckQuota would refuse the run (Ephemera.OverBudget): raise it to at least ${:.2}, or lower limits.boot_timeout_seconds, limits.max_runtime_seconds or worker.count",
                cap.budget_usd,
                refused.worst_case_usd,
                refused.detail,
                (refused.worst_case_usd * 100.0).ceil() / 100.0
            ),
        }),
    }
}

/// What `ephemera run` was asked.
struct Start {
    runspec: PathBuf,
    name: Option<String>,
    detach: bool,
    wait_timeout: u64,
}

/// `ephemera run FILE`: validate, start, then follow unless detached.
async fn start_run(g: &Global, start: Start) -> Result<Outcome, CliError> {
    let (value, spec) = load(&start.runspec)?;
    let machine = resolve::need_machine(g.state_machine.as_deref(), "run")?;
    let conf = aws::config(g, Some(machine)).await?;
    let sfn = aws_sdk_sfn::Client::new(&conf);
    let name = start
        .name
        .unwrap_or_else(|| resolve::execution_name(&spec.run_id, chrono::Utc::now()));
    let started = sfn
        .start_execution()
        .state_machine_arn(machine)
        .name(&name)
        .input(value.to_string())
        .send()
        .await
        .map_err(|e| Op::new("states:StartExecution", machine).fail(e))?;
    let arn = started.execution_arn();
    let region = aws::region(&conf);
    println!("started {arn}");
    println!(
        "  console: https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{arn}"
    );
    println!("  follow it: ephemera status {name}");
    if start.detach {
        return Ok(Outcome::Done);
    }
    follow::follow(&sfn, arn, Duration::from_secs(start.wait_timeout)).await
}

/// `ephemera runs`: the table and the month so far, or with a page, the month's page.
async fn list_runs(
    g: &Global,
    ledger: Option<&str>,
    limit: usize,
    page: Option<runs::Page>,
) -> Result<Outcome, CliError> {
    let machine = resolve::need_machine(g.state_machine.as_deref(), "runs")?;
    let conf = aws::config(g, Some(machine)).await?;
    let sfn = aws_sdk_sfn::Client::new(&conf);
    let ledger = ledger_table(ledger, machine).map(|table| LedgerTable {
        client: aws_sdk_dynamodb::Client::new(&conf),
        table,
    });
    match page {
        Some(page) => runs::month_page(&sfn, ledger.as_ref(), machine, page).await,
        None => runs::runs(&sfn, ledger.as_ref(), machine, limit).await,
    }
}

#[cfg(test)]
mod tests {
    use super::ledger_table;

    #[test]
    fn the_ledger_is_the_stacks_unless_named() {
        let machine = "arn:aws:states:eu-west-1:123456789012:stateMachine:prod-worker";
        assert_eq!(ledger_table(None, machine).as_deref(), Some("prod-ledger"));
        assert_eq!(ledger_table(Some("t"), machine).as_deref(), Some("t"));
        // A state machine not named as the template names it: no guess.
        assert_eq!(
            ledger_table(None, "arn:aws:states:eu-west-1:1:stateMachine:mine"),
            None
        );
    }
}

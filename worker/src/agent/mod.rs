//! The worker's side of the run's protocol, whatever the work: the [`link`] to the state
//! machine, the log shipper ([`logship`]), the [`session`] of one attempt and its [`ending`].
//! The work itself is a [`Workload`]: the feature run (`run`) or a job (`exec`).

use std::future::Future;
use std::sync::Arc;

use anyhow::Result;
use ephemera_contract::Summary;
use tokio_util::sync::CancellationToken;

pub mod credentials;
pub mod ending;
pub mod link;
pub mod logship;
pub mod redact;
pub mod secrets;
pub mod sent;
pub mod session;

pub use ending::{Ending, Worked};
pub use session::{on_sigterm, Session};

/// The command line's link to the run, the same for `run` and `exec`: without `--ssm-prefix`
/// the worker works alone (locally), with it the attempt is the run's.
#[derive(clap::Args, Debug, Clone)]
pub struct LinkArgs {
    /// On an ephemera instance: the run's SSM path (signals and task token live there).
    #[arg(long)]
    pub ssm_prefix: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub attempt: u32,
    #[arg(long, default_value_t = 300)]
    pub heartbeat_seconds: u64,
    /// How long to wait for the task token after saying "started".
    #[arg(long, default_value_t = 3600)]
    pub token_timeout_seconds: u64,
    /// On an ephemera instance: the CloudWatch Logs group the log lines are also shipped
    /// to, stream `<run id>/<attempt>/<instance id>`; empty ships nothing.
    #[arg(long, default_value = ephemera_contract::logs::WORKER_LOG_GROUP)]
    pub log_group: String,
    /// The money deadline: the runtime the run's cap granted this attempt (launch-worker passes
    /// it when the rest of `limits.budget_usd` buys less than `limits.max_runtime_seconds`).
    /// This long after the worker starts, the work is stopped as at a Spot notice (a job gets
    /// SIGTERM and its grace, its checkpoint is saved) and the attempt reports
    /// `Worker.BudgetExhausted`.
    #[arg(long)]
    pub budget_seconds: Option<u64>,
    /// On an ephemera instance whose launch vended the run's session of the run role (the user
    /// data says so): wait for it in this instance's parameter and sign every S3 and CloudWatch
    /// Logs call with it, renewed before it ends, instead of the instance role.
    #[arg(long)]
    pub run_session: bool,
}

impl LinkArgs {
    /// Whether log lines are shipped: on an instance linked to a run, to a group. They are
    /// buffered from the start and shipped once the instance id names the stream.
    pub fn ships_logs(&self) -> bool {
        self.ssm_prefix.is_some() && !self.log_group.is_empty()
    }
}

/// What a worker does for the run, as the session drives it.
pub trait Workload {
    /// Whether the work may begin while the task token is on its way. The feature run may: its
    /// partitions are claimed under leases and written in transactions, so work done before the
    /// token is never lost. A job may not: its command may act outside the worker and cannot
    /// be rolled back, so it begins only once the state machine has handed this instance the
    /// attempt's token.
    const STARTS_BEFORE_TOKEN: bool;
    /// What the log says SIGTERM does to the work.
    const ON_SIGTERM: &'static str;

    /// The run the log stream is named after.
    fn run_id(&self) -> &str;

    /// The work, until it is through or `stop` is cancelled (Spot notice, SIGTERM), and what
    /// it hands back for the ending.
    fn work(&self, stop: CancellationToken) -> impl Future<Output = Worked> + Send + 'static;

    /// What a success still needs before it is reported (a job's outputs stored, its manifest
    /// in the summary), with the watches down: the summary to send, or why it cannot be.
    fn deliver(&self, summary: Summary) -> impl Future<Output = Result<Summary, String>> + Send {
        async move { Ok(summary) }
    }
}

/// One attempt of `workload` as the run's worker at `prefix`: opened, worked, reported,
/// closed (the last log lines sent whatever happened).
pub async fn attend<W: Workload>(
    workload: &W,
    prefix: &str,
    args: &LinkArgs,
    shipping: Option<Arc<logship::Buffer>>,
) -> Result<()> {
    let session = Session::open(prefix, args, workload.run_id(), shipping).await?;
    let outcome = session.attempt(workload).await;
    session.close(&outcome).await;
    outcome
}

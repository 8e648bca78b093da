//! `ephemera cancel RUN [--reason TEXT]`: the execution stopped with `Ephemera.Cancelled` and
//! the reason. The stack's EventBridge rule on its ABORTED status then tears the run down as
//! Cleanup would (every instance terminated, a job given SIGTERM and its grace by the
//! instance's shutdown, the ledger settled to the measured cost) and emails the CANCELLED
//! report; the same happens to a run stopped from the console.

use ephemera_core::names;

use crate::errors::{CliError, Op};
use crate::resolve::Execution;
use crate::terminal::printable;
use crate::Outcome;

/// Step Functions keeps at most this much of a stop's cause (StopExecution, `cause`).
const CAUSE_AT_MOST: usize = 32_768;

pub async fn command(
    sfn: &aws_sdk_sfn::Client,
    e: &Execution,
    reason: Option<&str>,
) -> Result<Outcome, CliError> {
    if !e.is_running() {
        println!(
            "{} is not running ({}): nothing to cancel",
            e.name,
            e.status.as_str()
        );
        return Ok(Outcome::Done);
    }
    let mut cause = reason
        .unwrap_or("cancelled with ephemera cancel")
        .to_string();
    if cause.len() > CAUSE_AT_MOST {
        let mut end = CAUSE_AT_MOST;
        while !cause.is_char_boundary(end) {
            end -= 1;
        }
        cause.truncate(end);
    }
    sfn.stop_execution()
        .execution_arn(&e.arn)
        .error(names::CANCELLED)
        .cause(&cause)
        .send()
        .await
        .map_err(|err| Op::new("states:StopExecution", &e.arn).fail(err))?;
    println!("cancelled {} ({})", e.name, printable(&cause));
    println!(
        "  the stack terminates its instances and emails the CANCELLED report within a minute: ephemera report {}",
        e.name
    );
    Ok(Outcome::Done)
}

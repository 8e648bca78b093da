//! `ephemera sweep`: instances ephemera launched that outlived their run, by the sweeper
//! Lambda's own rule (`ephemera_core::sweep::sweep_reason`). A dry run unless `--yes`; then
//! only those are terminated, and only while they still carry `ephemera:managed=true`.

use chrono::{DateTime, Utc};
use ephemera_aws::{Compute, Executions, InstanceView};
use ephemera_core::instance_state::InstanceState;
use ephemera_core::sweep::sweep_reason;
use ephemera_core::tags;

use crate::errors::{CliError, Op};
use crate::Outcome;

#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub instance_id: String,
    pub state: String,
    pub run_id: String,
    pub execution: String,
    pub deadline: Option<DateTime<Utc>>,
}

fn found(i: &InstanceView) -> Found {
    let tag = |k: &str| i.tags.get(k).cloned().unwrap_or_default();
    Found {
        instance_id: i.id.clone(),
        state: i.state.map_or("?", |s| s.name()).to_string(),
        run_id: tag(tags::RUN),
        execution: tag(tags::EXECUTION),
        deadline: DateTime::parse_from_rfc3339(&tag(tags::DEADLINE))
            .ok()
            .map(|d| d.with_timezone(&Utc)),
    }
}

/// ephemera's instances in a state that still bills or can again (the sweeper Lambda's own
/// reading: the same adapter call).
async fn live(ec2: &impl Compute) -> Result<Vec<Found>, CliError> {
    let listed = ec2
        .instances(&[(tags::MANAGED, "true")], &InstanceState::LIVE)
        .await
        .map_err(|e| Op::any("ec2:DescribeInstances").failed(&e))?;
    Ok(listed.iter().map(found).collect())
}

/// Of `ids`, those still live and still tagged as ephemera's, listed again just before they
/// are terminated: by filter, as first, not by id (an instance EC2 does not show by id yet,
/// eventual consistency, would fail a DescribeInstances by id).
async fn still_ours(ec2: &impl Compute, ids: &[String]) -> Result<Vec<Found>, CliError> {
    Ok(live(ec2)
        .await?
        .into_iter()
        .filter(|f| ids.contains(&f.instance_id))
        .collect())
}

/// The execution's status, or None when there is no such execution: the sweeper Lambda's own
/// reading, so that both apply one rule to one answer.
async fn status(sfn: &aws_sdk_sfn::Client, execution: &str) -> Result<Option<String>, CliError> {
    if execution.is_empty() {
        return Ok(None);
    }
    Executions::status(sfn, execution)
        .await
        .map_err(|e| Op::new("states:DescribeExecution", execution).failed(&e))
}

/// `i-0abc  running  run fx  its execution is SUCCEEDED`, columns lined up.
pub fn lines(swept: &[(Found, String)]) -> Vec<String> {
    let w_id = swept
        .iter()
        .map(|(f, _)| f.instance_id.len())
        .max()
        .unwrap_or(0);
    let w_state = swept.iter().map(|(f, _)| f.state.len()).max().unwrap_or(0);
    let w_run = swept.iter().map(|(f, _)| f.run_id.len()).max().unwrap_or(0);
    swept
        .iter()
        .map(|(f, why)| {
            format!(
                "  {:<w_id$}  {:<w_state$}  run {:<w_run$}  {why}",
                f.instance_id, f.state, f.run_id
            )
        })
        .collect()
}

pub async fn command(
    ec2: &impl Compute,
    sfn: &aws_sdk_sfn::Client,
    region: &str,
    yes: bool,
) -> Result<Outcome, CliError> {
    let now = Utc::now();
    let live = live(ec2).await?;
    let mut swept = vec![];
    for f in live.iter() {
        let s = status(sfn, &f.execution).await?;
        if let Some(reason) = sweep_reason(s.as_deref(), f.deadline, now) {
            swept.push((f.clone(), reason));
        }
    }
    let kept = live.len() - swept.len();
    if swept.is_empty() {
        println!(
            "nothing to sweep in {region}: {kept} ephemera instance(s) alive, each with a running execution"
        );
        return Ok(Outcome::Done);
    }
    let verb = if yes {
        "terminating"
    } else {
        "would terminate"
    };
    println!(
        "{verb} {} instance(s) in {region} that outlived their run ({kept} kept):",
        swept.len()
    );
    for l in lines(&swept) {
        println!("{l}");
    }
    if !yes {
        println!("dry run: nothing terminated; `ephemera sweep --yes` terminates these");
        return Ok(Outcome::Done);
    }
    // Only those still tagged as ephemera's, read again just before.
    let ids: Vec<String> = swept.iter().map(|(f, _)| f.instance_id.clone()).collect();
    let confirmed = still_ours(ec2, &ids).await?;
    if confirmed.is_empty() {
        println!("none of them is left to terminate");
        return Ok(Outcome::Done);
    }
    let ids: Vec<String> = confirmed.iter().map(|f| f.instance_id.clone()).collect();
    ec2.terminate(&ids)
        .await
        .map_err(|e| Op::any("ec2:TerminateInstances").failed(&e))?;
    // Each one's state before and after, as EC2 shows it now (by filter too).
    let after = ec2
        .instances(&[(tags::MANAGED, "true")], &InstanceState::ALL)
        .await
        .unwrap_or_default();
    for f in &confirmed {
        let now = after
            .iter()
            .find(|i| i.id == f.instance_id)
            .and_then(|i| i.state)
            .map_or("?", |s| s.name());
        println!("terminated {}: {} -> {now}", f.instance_id, f.state);
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_instance_state_run_and_reason() {
        let f = |id: &str, run: &str| Found {
            instance_id: id.into(),
            state: "running".into(),
            run_id: run.into(),
            execution: String::new(),
            deadline: None,
        };
        let l = lines(&[
            (f("i-0abc", "fx"), "its execution is SUCCEEDED".into()),
            (f("i-1", "fx-2023"), "its execution does not exist".into()),
        ]);
        assert_eq!(
            l[0],
            "  i-0abc  running  run fx       its execution is SUCCEEDED"
        );
        assert_eq!(
            l[1],
            "  i-1     running  run fx-2023  its execution does not exist"
        );
    }
}

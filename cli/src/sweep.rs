//! `ephemera sweep`: instances ephemera launched that outlived their run, by the sweeper
//! Lambda's own rule (`ephemera_core::sweep::sweep_reason`). A dry run unless `--yes`; then
//! only those are terminated, and only while they still carry `ephemera:managed=true`.

use aws_sdk_ec2::types::{Filter, Instance};
use chrono::{DateTime, Utc};
use ephemera_aws::Executions;
use ephemera_core::sweep::sweep_reason;
use ephemera_core::tags;

use crate::errors::{classify, CliError, Failure, Op};
use crate::Outcome;

/// States in which an instance still bills (or can again).
const LIVE_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub instance_id: String,
    pub state: String,
    pub run_id: String,
    pub execution: String,
    pub deadline: Option<DateTime<Utc>>,
}

fn found(i: &Instance) -> Option<Found> {
    let tag = |k: &str| {
        i.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .unwrap_or_default()
            .to_string()
    };
    Some(Found {
        instance_id: i.instance_id()?.to_string(),
        state: i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default(),
        run_id: tag(tags::RUN),
        execution: tag(tags::EXECUTION),
        deadline: DateTime::parse_from_rfc3339(&tag(tags::DEADLINE))
            .ok()
            .map(|d| d.with_timezone(&Utc)),
    })
}

fn managed() -> Filter {
    Filter::builder()
        .name(format!("tag:{}", tags::MANAGED))
        .values("true")
        .build()
}

async fn instances(ec2: &aws_sdk_ec2::Client, ids: &[String]) -> Result<Vec<Found>, CliError> {
    let op = Op::any("ec2:DescribeInstances");
    let mut req = ec2.describe_instances().filters(managed()).filters(
        Filter::builder()
            .name("instance-state-name")
            .set_values(Some(LIVE_STATES.map(String::from).to_vec()))
            .build(),
    );
    if !ids.is_empty() {
        // A filter, not InstanceIds: an id EC2 does not show yet (eventual consistency) is
        // left out instead of failing the call.
        req = req.filters(
            Filter::builder()
                .name("instance-id")
                .set_values(Some(ids.to_vec()))
                .build(),
        );
    }
    let mut pages = req.into_paginator().send();
    let mut out = vec![];
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| op.fail(e))?;
        out.extend(
            page.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(found),
        );
    }
    Ok(out)
}

/// The execution's status, or None when there is no such execution: the sweeper Lambda's own
/// reading, so that both apply one rule to one answer.
async fn status(sfn: &aws_sdk_sfn::Client, execution: &str) -> Result<Option<String>, CliError> {
    if execution.is_empty() {
        return Ok(None);
    }
    Executions::status(sfn, execution).await.map_err(|e| {
        // Credentials and the endpoint were proven by the DescribeInstances before this.
        let f = match e {
            ephemera_aws::AwsError::Call { code, message, .. } => {
                Failure::Service { code, message }
            }
            other => Failure::Other(other.to_string()),
        };
        classify(&Op::new("states:DescribeExecution", execution), &f)
    })
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
    ec2: &aws_sdk_ec2::Client,
    sfn: &aws_sdk_sfn::Client,
    region: &str,
    yes: bool,
) -> Result<Outcome, CliError> {
    let now = Utc::now();
    let live = instances(ec2, &[]).await?;
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
    let confirmed: Vec<String> = instances(ec2, &ids)
        .await?
        .into_iter()
        .map(|f| f.instance_id)
        .collect();
    if confirmed.is_empty() {
        println!("none of them is left to terminate");
        return Ok(Outcome::Done);
    }
    let out = ec2
        .terminate_instances()
        .set_instance_ids(Some(confirmed.clone()))
        .send()
        .await
        .map_err(|e| Op::any("ec2:TerminateInstances").fail(e))?;
    for c in out.terminating_instances() {
        println!(
            "terminated {}: {} -> {}",
            c.instance_id().unwrap_or_default(),
            c.previous_state()
                .and_then(|s| s.name())
                .map_or("?", |n| n.as_str()),
            c.current_state()
                .and_then(|s| s.name())
                .map_or("?", |n| n.as_str())
        );
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

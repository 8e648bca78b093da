//! terminate-with-cost-report: terminate every instance of this execution (only if tagged for
//! this run), measure what the run really cost, store it as HTML and JSON beside the run's
//! output, email the report and return it. With `release`, only one lost worker's instances are
//! terminated, for the others to go on without paying for it.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use ephemera_core::catalog;
use ephemera_core::contract::RunParameters;
use ephemera_core::cost::{self, Orchestration};
use ephemera_core::instance_state::InstanceState;
use ephemera_core::ledger::EntryState;
use ephemera_core::quota::{QuotaState, QuotaVerdict};
use ephemera_core::rundoc::{
    failure_for, render_email, report_location, Attempt, AttemptCost, CaughtError, CostReport,
    Outcome, Phases, Released, StoredReport, Verification, WorkerEnd, WorkerLine,
};
use ephemera_core::{report_html, Market};
use serde::Deserialize;

use super::parse_spec;
use crate::aws::{
    Compute, History, InstanceView, Ledger, Notifier, ObjectWriter, ParamRemover, PriceList,
};
use crate::error::Error;
use ephemera_core::tags;

#[derive(Debug, Deserialize)]
pub struct Input {
    pub run: serde_json::Value,
    pub execution: String,
    /// When the execution started; read from its history when absent.
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub quota: Option<QuotaState>,
    /// How each worker ended (`$.workers`, the Map state's output: each one's attempts, health,
    /// report, whose `manifest` places this report, and error); absent when the run ended
    /// before its workers did (the instances are then found by their tags).
    #[serde(default)]
    pub workers: Option<Vec<WorkerEnd>>,
    /// The error that sent the run to cleanup; absent on success.
    #[serde(default)]
    pub error: Option<CaughtError>,
    /// The snapshot taken before the workers started (`$.snapshot`), named in the report.
    #[serde(default)]
    pub snapshot: Option<ephemera_core::snapshot::SnapshotState>,
    /// verify-completion's checks (`$.verification`), shown in the report.
    #[serde(default)]
    pub verification: Option<Verification>,
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub region: String,
    pub default_topic: Option<String>,
    pub lambda_memory_mb: u32,
    /// EPHEMERA_ARTIFACT_BUCKET: where the report goes when the run exports nothing.
    pub artifact_bucket: Option<String>,
}

/// "User initiated (2026-11-22 14:02:11 GMT)" → that instant.
pub fn parse_transition_time(reason: &str) -> Option<DateTime<Utc>> {
    let inside = reason.split_once('(')?.1.split_once(" GMT)")?.0;
    NaiveDateTime::parse_from_str(inside, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|n| n.and_utc())
}

// One small adapter per service called (EC2, Pricing, SNS, Step Functions, S3), as in the other
// handlers, so each can be replaced on its own in tests.
#[allow(clippy::too_many_arguments)]
pub async fn handle<E, P, N, H, O, L, R>(
    ec2: &E,
    prices: &P,
    sns: &N,
    history: &H,
    objects: &O,
    ledger: Option<&L>,
    signals: Option<&R>,
    config: &Config,
    input: Input,
    now: DateTime<Utc>,
) -> Result<CostReport, Error>
where
    E: Compute,
    P: PriceList,
    N: Notifier,
    H: History,
    O: ObjectWriter,
    L: Ledger,
    R: ParamRemover,
{
    let spec = parse_spec(&input.run)?;
    let ends: Vec<WorkerEnd> = input.workers.clone().unwrap_or_default();
    let known: Vec<(u32, Attempt)> = ends
        .iter()
        .filter_map(|e| e.worker.as_ref().map(|w| (e.slot, w)))
        .flat_map(|(slot, w)| w.attempts.iter().map(move |a| (slot, a.clone())))
        .collect();

    // Everything this execution launched: what the run document knows, and what the tags say
    // (a Lambda that crashed after RunInstances never returned its instance).
    let mut instances: BTreeMap<String, InstanceView> = BTreeMap::new();
    for i in ec2
        .instances(&[(tags::EXECUTION, input.execution.as_str())], &[])
        .await?
    {
        instances.insert(i.id.clone(), i);
    }
    let ids: Vec<String> = known
        .iter()
        .map(|(_, a)| a.instance_id.clone())
        .filter(|id| !instances.contains_key(id))
        .collect();
    for i in ec2.describe(&ids).await? {
        instances.insert(i.id.clone(), i);
    }
    for i in instances.values() {
        ours(i, &spec.run_id)?;
    }
    let to_stop = still_up(instances.values());
    let teardown_start = Utc::now();
    ec2.terminate(&to_stop).await?;
    let teardown_seconds = (Utc::now() - teardown_start).num_seconds();
    tracing::info!(terminated = ?to_stop, "terminated");

    let mut notes = vec![];
    let mut attempts = vec![];
    for i in instances.values() {
        let from_doc = known.iter().find(|(_, a)| a.instance_id == i.id);
        let worker = i
            .tags
            .get(tags::WORKER)
            .and_then(|w| w.parse().ok())
            .or(from_doc.map(|(slot, _)| *slot))
            .unwrap_or(1);
        let from_doc = from_doc.map(|(_, a)| a);
        let launched_at = i
            .launch_time
            .or(from_doc.map(|a| a.launched_at))
            .unwrap_or(now);
        let ended_at = if to_stop.contains(&i.id) {
            now
        } else {
            i.state_transition_reason
                .as_deref()
                .and_then(parse_transition_time)
                .unwrap_or(now)
        };
        let billed = cost::billed_seconds(launched_at, ended_at);
        let (od_hourly, od_source) = match prices
            .on_demand_hourly(&i.instance_type, &config.region)
            .await
        {
            Some(q) => (q.usd_per_hour, q.source),
            None => (0.0, "unknown type: not priced".to_string()),
        };
        let on_demand_usd = cost::on_demand_cost(od_hourly, billed);
        let (compute_usd, source) = match (i.market, i.availability_zone.as_deref()) {
            (Market::Spot, Some(az)) => {
                // Ask from an hour earlier: AWS dates the price in force at launch before it.
                // Pricing never fails the report: a run that finished stays finished, and
                // a price that could not be read is estimated and said so.
                let history = match ec2
                    .spot_prices(
                        &i.instance_type,
                        az,
                        launched_at - chrono::Duration::hours(1),
                        launched_at + chrono::Duration::seconds(billed),
                    )
                    .await
                {
                    Ok(h) => Some(h),
                    Err(e) => {
                        notes.push(format!(
                            "{}: Spot price history unavailable ({}); compute estimated at On-Demand ({od_source})",
                            i.id,
                            short(&e.to_string())
                        ));
                        None
                    }
                };
                match history.map(|h| cost::spot_cost(&h, launched_at, billed)) {
                    Some(Some(c)) => (c, "spot-price-history".to_string()),
                    // The history could not be read (noted above).
                    None => (on_demand_usd, format!("estimated: {od_source}")),
                    Some(None) => {
                        notes.push(format!(
                            "{}: no Spot price history for {} in {az}; priced at On-Demand ({od_source})",
                            i.id, i.instance_type
                        ));
                        (on_demand_usd, od_source.clone())
                    }
                }
            }
            _ => (on_demand_usd, od_source.clone()),
        };
        let gib = from_doc
            .map(|a| a.volume_gib)
            .unwrap_or(spec.worker.volume_gib);
        let ebs_usd = cost::ebs_cost(gib, billed);
        attempts.push(AttemptCost {
            worker,
            attempt: i
                .tags
                .get(tags::ATTEMPT)
                .and_then(|a| a.parse().ok())
                .or(from_doc.map(|a| a.attempt))
                .unwrap_or(0),
            instance_id: i.id.clone(),
            instance_type: i.instance_type.clone(),
            market: i.market,
            availability_zone: i.availability_zone.clone(),
            launched_at,
            ended_at,
            billed_seconds: billed,
            compute_usd: cost::usd(compute_usd),
            ebs_usd: cost::usd(ebs_usd),
            on_demand_equivalent_usd: cost::usd(on_demand_usd + ebs_usd),
            average_usd_per_hour: cost::usd(compute_usd * 3600.0 / billed as f64),
            price_source: source,
            state_before: i.state,
        });
    }
    attempts.sort_by_key(|a| (a.worker, a.attempt, a.launched_at));

    let (orchestration, execution_started) = match history
        .execution_stats(&input.execution, config.lambda_memory_mb)
        .await?
    {
        Some(s) => (s.orchestration, s.started_at),
        None => {
            notes.push("the execution history could not be read; orchestration not priced".into());
            (Orchestration::default(), None)
        }
    };
    let compute: f64 = attempts.iter().map(|a| a.compute_usd).sum();
    let ebs: f64 = attempts.iter().map(|a| a.ebs_usd).sum();
    let on_demand: f64 = attempts.iter().map(|a| a.on_demand_equivalent_usd).sum();
    let actual = compute + ebs + orchestration.usd;

    let first_launch = attempts.iter().map(|a| a.launched_at).min();
    let quota_wait = input
        .quota
        .as_ref()
        .filter(|q| q.verdict == QuotaVerdict::Enough)
        .map(|q| (q.checked_at - q.started_at).num_seconds())
        .unwrap_or(0);
    // The first worker to become healthy: boot is its launch to then; work runs from then.
    let first_healthy = ends
        .iter()
        .filter_map(|e| {
            let healthy = e.health.as_ref()?.healthy_at?;
            Some((healthy, e.worker.as_ref()?.current.launched_at))
        })
        .min();
    let healthy_at = first_healthy.map(|(h, _)| h);
    let boot = match first_healthy {
        Some((h, launched)) => (h - launched).num_seconds().max(0),
        None => first_launch.map_or(0, |l| (teardown_start - l).num_seconds().max(0)),
    };
    let work = healthy_at.map_or(0, |h| (teardown_start - h).num_seconds().max(0));
    let total = input
        .started_at
        .or(execution_started)
        .or(input.quota.as_ref().map(|q| q.started_at))
        .or(first_launch)
        .map_or(0, |s| (now - s).num_seconds().max(0));

    let mut report = CostReport {
        run_id: spec.run_id.clone(),
        execution: input.execution.clone(),
        outcome: if input.error.is_none() {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        },
        error: input.error.clone(),
        failure: input.error.as_ref().map(failure_for),
        estimate_usd: known.iter().fold(0.0, |sum, (_, a)| sum + a.estimate_usd),
        budget_usd: spec.limits.budget_usd,
        actual_usd: cost::usd(actual),
        compute_usd: cost::usd(compute),
        ebs_usd: cost::usd(ebs),
        on_demand_equivalent_usd: cost::usd(on_demand + orchestration.usd),
        savings_usd: cost::usd(on_demand - compute - ebs),
        orchestration,
        workers: ends
            .iter()
            .map(|e| WorkerLine {
                slot: e.slot,
                attempts: e.worker.as_ref().map_or(0, |w| w.attempts.len() as u32),
                reported: e.result.is_some(),
                error: e.error.as_ref().map(failure_for),
            })
            .collect(),
        attempts,
        phases: Phases {
            quota_wait_seconds: quota_wait,
            boot_seconds: boot,
            work_seconds: work,
            teardown_seconds,
            total_seconds: total,
        },
        // What this call terminated, and what the lost workers' releases did before it.
        terminated: {
            let mut all = to_stop;
            for r in ends.iter().filter_map(|e| e.released.as_ref()) {
                all.extend(r.terminated.iter().cloned());
            }
            all.sort();
            all.dedup();
            all
        },
        generated_at: now,
        notes: {
            if known.is_empty() && instances.is_empty() {
                notes.push("nothing was launched".into());
            }
            notes.push(format!(
                "EBS gp3 at ${}/GiB-month; fallback prices as of {}",
                catalog::GP3_USD_PER_GIB_MONTH,
                catalog::PRICES_AS_OF
            ));
            notes
        },
        verification: input.verification.clone(),
        stored: None,
        snapshot: input.snapshot.clone(),
    };

    // The run's signals go with its instances: the started signal and each attempt's token.
    if let Some(r) = signals {
        let run = RunParameters::of_run(&spec.run_id);
        let names: Vec<String> = instances
            .keys()
            .flat_map(|id| [run.started(id), run.task_token(id)])
            .collect();
        if let Err(e) = r.delete_all(&names).await {
            tracing::error!(error = %e, "the run's SSM parameters could not be deleted");
            report.notes.push(format!(
                "the run's SSM parameters are left: {}",
                short(&e.to_string())
            ));
        }
    }

    // The run's cost replaces its reservation in the ledger; like the email, never a reason
    // to fail the report.
    if let Some(l) = ledger {
        match l
            .close(&input.execution, EntryState::Ended, Some(report.actual_usd))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "the ledger could not be updated");
                report.notes.push(format!(
                    "the ledger still holds this run's reservation: {}",
                    short(&e.to_string())
                ));
            }
        }
    }

    // Any worker's report names the run's manifest (the one who wrote it, or one who ended
    // after it was written).
    let manifest = ends
        .iter()
        .filter_map(|e| e.result.as_ref()?.get("manifest")?.as_str())
        .next();
    if let Some(place) = report_location(&spec, manifest, config.artifact_bucket.as_deref()) {
        store(objects, &mut report, place).await;
    }

    let topic = spec
        .notify
        .topic_arn
        .clone()
        .or_else(|| config.default_topic.clone());
    match topic {
        Some(t) => {
            let (subject, body) = render_email(&report);
            let actual_s = format!("{:.6}", report.actual_usd);
            let attributes = [
                ("run_id", report.run_id.as_str()),
                ("outcome", report.outcome.as_str()),
                ("actual_usd", actual_s.as_str()),
            ];
            // The email never fails the run: a finished job stays finished and its report is
            // the execution's output whatever SNS answers. Transient errors are retried here
            // (the SDK retries throttling too); a refusal is not, and is noted in the report.
            let mut tries = 0;
            loop {
                tries += 1;
                match sns.publish(&t, &subject, &body, &attributes).await {
                    Ok(_) => break,
                    Err(e) if tries < 3 && !is_refusal(&e) => {
                        tracing::warn!(error = %e, tries, "publishing the report failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(500 * tries)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, topic = %t, "the report could not be emailed");
                        report.notes.push(format!(
                            "the report could not be emailed to {t} after {tries} attempt(s): {}",
                            short(&e.to_string())
                        ));
                        break;
                    }
                }
            }
        }
        None => tracing::warn!("no notification topic: the report is only returned"),
    }
    tracing::info!(actual_usd = report.actual_usd, outcome = %report.outcome, "cost report");
    Ok(report)
}

/// Refuses an instance not tagged as one of this run's (a wrong execution ARN in the input
/// must not terminate someone else's machines).
fn ours(i: &InstanceView, run_id: &str) -> Result<(), Error> {
    let managed = i.tags.get(tags::MANAGED).map(String::as_str) == Some("true");
    let run = i.tags.get(tags::RUN).map(String::as_str) == Some(run_id);
    if managed && run {
        return Ok(());
    }
    Err(Error::Refused {
        instance: i.id.clone(),
        why: format!(
            "it is not tagged {}=true and {}={run_id} (tags: {:?})",
            tags::MANAGED,
            tags::RUN,
            i.tags
        ),
    })
}

/// The instances not already going: those to terminate. A state this code does not know is
/// terminated too (terminating twice does no harm).
fn still_up<'a>(instances: impl Iterator<Item = &'a InstanceView>) -> Vec<String> {
    instances
        .filter(|i| !i.state.is_some_and(InstanceState::is_terminating))
        .map(|i| i.id.clone())
        .collect()
}

/// A lost worker's release: `{run, execution, release: <slot>}`.
#[derive(Debug, Deserialize)]
pub struct ReleaseInput {
    pub run: serde_json::Value,
    pub execution: String,
    pub release: u32,
}

/// Terminates every instance of one worker of this execution (found by its tags, so one a
/// crashed launch never returned goes too); the run's other workers go on, and the final
/// report costs this one's instances with the rest.
pub async fn release<E: Compute>(ec2: &E, input: ReleaseInput) -> Result<Released, Error> {
    let spec = parse_spec(&input.run)?;
    let slot = input.release.to_string();
    let found = ec2
        .instances(
            &[
                (tags::EXECUTION, input.execution.as_str()),
                (tags::WORKER, slot.as_str()),
            ],
            &[],
        )
        .await?;
    for i in &found {
        ours(i, &spec.run_id)?;
    }
    let terminated = still_up(found.iter());
    ec2.terminate(&terminated).await?;
    tracing::info!(slot = input.release, ?terminated, "lost worker released");
    Ok(Released {
        slot: input.release,
        terminated,
    })
}

/// Puts `report.html` and `report.json` at `place`, so the email can link them. Never fails the
/// report, as with the email: a refused upload becomes a note, and without the HTML the email
/// has no link. Throttling and 5xx are retried by the SDK.
async fn store<O: ObjectWriter>(objects: &O, report: &mut CostReport, place: StoredReport) {
    report.stored = Some(place.clone());
    let html = report_html::render(report);
    let json = serde_json::to_vec_pretty(report).unwrap_or_default();
    let mut failed = vec![];
    for (key, body, content_type) in [
        (
            place.html_key(),
            html.into_bytes(),
            "text/html; charset=utf-8",
        ),
        (place.json_key(), json, "application/json"),
    ] {
        if let Err(e) = objects.put(&place.bucket, &key, body, content_type).await {
            tracing::error!(error = %e, bucket = %place.bucket, %key, "the report could not be stored");
            failed.push(format!(
                "s3://{}/{key} ({})",
                place.bucket,
                short(&e.to_string())
            ));
            if key == place.html_key() {
                report.stored = None;
            }
        }
    }
    if failed.is_empty() {
        tracing::info!(report = %place.html_uri(), "report stored");
    } else {
        report.notes.push(format!(
            "the report could not be stored: {}",
            failed.join("; ")
        ));
    }
}

/// Permission and validation errors, which a retry does not change.
fn is_refusal(e: &Error) -> bool {
    matches!(e, Error::Aws { code, .. } if code.contains("Authorization")
        || code.contains("AccessDenied")
        || code.contains("NotFound")
        || code.contains("InvalidParameter"))
}

/// An AWS message cut to a length that keeps the run document small.
fn short(s: &str) -> String {
    if s.chars().count() <= 240 {
        return s.to_string();
    }
    let mut out: String = s.chars().take(239).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time() {
        let t = parse_transition_time("User initiated (2026-11-22 14:02:11 GMT)").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T14:02:11+00:00");
        assert_eq!(parse_transition_time("Service initiated"), None);
    }
}

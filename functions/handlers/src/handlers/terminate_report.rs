//! terminate-with-cost-report: terminate every instance of this execution (only if tagged for
//! this run), measure what the run really cost, store it as HTML and JSON beside the run's
//! output, email the report and return it. With `release`, only one lost worker's instances are
//! terminated, for the others to go on without paying for it. With `refused`, a run refused
//! before it started is told (nothing to terminate or cost).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use ephemera_core::contract::RunParameters;
use ephemera_core::cost_report::{self, InstanceFacts, Parts, SpotHistory, Timing};
use ephemera_core::email::render_email;
use ephemera_core::instance_state::InstanceState;
use ephemera_core::ledger::{self, EntryState};
use ephemera_core::month_html::{self, Month};
use ephemera_core::quota::QuotaState;
use ephemera_core::refusal::Refusal;
use ephemera_core::report::{report_location, AttemptCost, CostReport, MonthPage, StoredReport};
use ephemera_core::rundoc::{Attempt, CaughtError, Released, WorkerEnd, WorkersSeen};
use ephemera_core::stopped::{self, StatusChange};
use ephemera_core::verify::Verification;
use ephemera_core::{caps, cost};
use ephemera_core::{report_html, Market, RunSpec, State};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::aws::{
    pricing, AwsError, Compute, ExecutionStats, History, InstanceView, Ledger, Notifier,
    ObjectWriter, ParamHousekeeping, PriceList, VcpuReservations,
};
use crate::error::Error;
use ephemera_core::tags;

#[derive(Debug, Deserialize)]
pub struct Input {
    pub run: RunSpec,
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
    /// EPHEMERA_ARTIFACT_BUCKET: where the report goes when the run exports nothing, and the
    /// month's page always.
    pub artifact_bucket: Option<String>,
    /// EPHEMERA_MONTHLY_BUDGET_USD, which the month's page draws the spend against (0: none).
    pub monthly_budget_usd: f64,
}

/// The On-Demand price of each type among `instances`: the run's (read once by quota-check),
/// and a type it lacks read here, once.
async fn on_demand_prices<'a, P: PriceList>(
    prices: &P,
    run_prices: &[cost::TypePrice],
    types: impl Iterator<Item = &'a String>,
    region: &str,
) -> BTreeMap<String, Option<(f64, String)>> {
    let mut types: Vec<String> = types.cloned().collect();
    types.sort();
    types.dedup();
    let quotes = pricing::quotes_for(prices, run_prices, &types, region).await;
    types
        .into_iter()
        .zip(quotes)
        .map(|(t, q)| (t, q.map(|q| (q.usd_per_hour, q.source))))
        .collect()
}

/// The input of a run whose execution ended outside the state machine's own paths, from the
/// event the stack's EventBridge rule delivers (`ephemera_core::stopped`): the run as CheckQuota
/// was entered with it, the error its status means; its instances are found by their tags, as
/// Cleanup finds them. None when there is nothing to tear down or report: a status the state
/// machine ends in itself, or an execution stopped before CheckQuota read a RunSpec.
pub async fn input_of_stop<H: History>(
    history: &H,
    event: &serde_json::Value,
) -> Result<Option<Input>, Error> {
    let change: StatusChange = serde_json::from_value(event["detail"].clone()).map_err(|e| {
        Error::BadInput(format!(
            "the execution status change's detail is not readable: {e}"
        ))
    })?;
    let Some(error) = stopped::error_of(&change) else {
        return Ok(None);
    };
    let entered = history
        .run_entering(&change.execution_arn, State::CheckQuota.name())
        .await?;
    // A RunSpec CheckQuota would refuse never launched anything.
    let Some(run) = entered.and_then(|r| serde_json::from_value::<RunSpec>(r).ok()) else {
        return Ok(None);
    };
    Ok(Some(Input {
        run,
        execution: change.execution_arn.clone(),
        started_at: change.started_at(),
        quota: None,
        workers: None,
        error: Some(error),
        snapshot: None,
        verification: None,
    }))
}

/// "User initiated (2026-11-22 14:02:11 GMT)" → that instant.
pub fn parse_transition_time(reason: &str) -> Option<DateTime<Utc>> {
    let inside = reason.split_once('(')?.1.split_once(" GMT)")?.0;
    NaiveDateTime::parse_from_str(inside, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|n| n.and_utc())
}

/// The services a report is made with: one small adapter per service called, as in the other
/// handlers, so each can be replaced on its own in tests. Without a ledger or an SSM client,
/// those steps are skipped.
pub struct Services<'a, E, P, N, H, O, L, R> {
    pub ec2: &'a E,
    pub prices: &'a P,
    pub sns: &'a N,
    pub history: &'a H,
    pub objects: &'a O,
    pub ledger: Option<&'a L>,
    pub signals: Option<&'a R>,
}

pub async fn handle<E, P, N, H, O, L, R>(
    s: Services<'_, E, P, N, H, O, L, R>,
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
    L: Ledger + VcpuReservations,
    R: ParamHousekeeping,
{
    let spec = &input.run;
    let ends: Vec<WorkerEnd> = input.workers.clone().unwrap_or_default();
    let instances = everything_launched(
        s.ec2,
        &input.execution,
        &known_attempts(&ends, &WorkersSeen::default()),
    )
    .await?;
    for i in instances.values() {
        ours(i, &spec.run_id)?;
    }
    let to_stop = still_up(instances.values());
    let topic = spec
        .notify
        .topic_arn
        .as_ref()
        .or(config.default_topic.as_ref());
    let left = Left {
        run_id: &spec.run_id,
        execution: &input.execution,
        instances: &to_stop,
    };
    let (teardown_start, teardown_seconds) =
        tear_down(s.ec2, s.sns, &left, topic.map(String::as_str)).await?;

    // After the teardown (it may read many pages): what the history saw launched, which a run
    // stopped before its Map ended has nowhere else.
    let (stats, seen, known) = history_of(s.history, config, &input.execution, &ends).await?;
    let pricing = Pricing {
        spec,
        known: &known,
        ends: &ends,
        seen: &seen,
        run_prices: input.quota.as_ref().map_or(&[][..], |q| &q.prices[..]),
        region: &config.region,
        now,
    };
    let priced = price_all(s.ec2, s.prices, &pricing, &instances, &to_stop).await;
    // The month the run is booked in: the one its execution started in (`ledger::booked_month`).
    let started = input
        .started_at
        .or(stats.as_ref().and_then(|s| s.started_at));
    let month = ledger::booked_month(started, now);
    let measured = Measured {
        priced,
        stats,
        terminated: to_stop,
        teardown_start,
        teardown_seconds,
        now,
    };
    let mut report = report_of(spec, &input, &ends, measured);
    put_away(
        &s,
        config,
        &input,
        &month,
        &every_id(&instances, &known),
        &mut report,
    )
    .await;
    deliver(s.objects, s.sns, config, spec, topic, &mut report).await;
    tracing::info!(actual_usd = report.actual_usd, outcome = %report.outcome, "cost report");
    Ok(report)
}

/// The execution's history (None when unreadable), what it saw of the workers, and every
/// attempt known: the run document's, and those only the history saw.
async fn history_of<H: History>(
    history: &H,
    config: &Config,
    execution: &str,
    ends: &[WorkerEnd],
) -> Result<(Option<ExecutionStats>, WorkersSeen, Vec<(u32, Attempt)>), Error> {
    let stats = history
        .execution_stats(execution, config.lambda_memory_mb)
        .await?;
    let seen = stats
        .as_ref()
        .map(|s| s.workers.clone())
        .unwrap_or_default();
    let known = known_attempts(ends, &seen);
    Ok((stats, seen, known))
}

/// Every instance of the run, those EC2 no longer describes too: each one's parameters go.
fn every_id(
    instances: &BTreeMap<String, InstanceView>,
    known: &[(u32, Attempt)],
) -> std::collections::BTreeSet<String> {
    instances
        .keys()
        .cloned()
        .chain(known.iter().map(|(_, a)| a.instance_id.clone()))
        .collect()
}

/// What the run leaves once its report is made, put away: its instances' parameters, and with
/// a ledger its vCPUs, its entry and the month's figures.
async fn put_away<E, P, N, H, O, L, R>(
    s: &Services<'_, E, P, N, H, O, L, R>,
    config: &Config,
    input: &Input,
    month: &str,
    instances: &std::collections::BTreeSet<String>,
    report: &mut CostReport,
) where
    O: ObjectWriter,
    L: Ledger + VcpuReservations,
    R: ParamHousekeeping,
{
    let spec = &input.run;
    if let Some(r) = s.signals {
        delete_signals(r, &spec.run_id, instances.iter(), report).await;
    }
    if let Some(l) = s.ledger {
        // Its instances are terminated: the vCPUs it reserved go back to the stack's runs.
        release_vcpus(l, &config.region, &input.execution, spec, report).await;
        close_ledger(l, &input.execution, report).await;
        store_month(l, s.objects, config, (&input.execution, month), report).await;
    }
}

/// The report stored where the RunSpec places it and emailed to the run's topic.
async fn deliver<O: ObjectWriter, N: Notifier>(
    objects: &O,
    sns: &N,
    config: &Config,
    spec: &RunSpec,
    topic: Option<&String>,
    report: &mut CostReport,
) {
    // Beside the manifests as the RunSpec places them, never where a worker's report says.
    let beside = report_location(spec, config.artifact_bucket.as_deref());
    if let Some(place) = beside {
        store(objects, report, place).await;
    }
    match topic {
        Some(t) => email(sns, t, report).await,
        None => tracing::warn!("no notification topic: the report is only returned"),
    }
}

/// What the teardown measured, for the report.
struct Measured {
    priced: Vec<(AttemptCost, Option<String>)>,
    stats: Option<crate::aws::ExecutionStats>,
    terminated: Vec<String>,
    teardown_start: DateTime<Utc>,
    teardown_seconds: i64,
    now: DateTime<Utc>,
}

/// The report, from the run's document and what the teardown measured.
fn report_of(spec: &RunSpec, input: &Input, ends: &[WorkerEnd], m: Measured) -> CostReport {
    cost_report::assemble(Parts {
        spec,
        execution: &input.execution,
        error: input.error.as_ref(),
        quota: input.quota.as_ref(),
        ends,
        priced: m.priced,
        orchestration: m.stats.as_ref().map(|s| s.orchestration.clone()),
        terminated: m.terminated,
        timing: Timing {
            started_at: input.started_at.or(m.stats.and_then(|s| s.started_at)),
            teardown_start: m.teardown_start,
            teardown_seconds: m.teardown_seconds,
            now: m.now,
        },
        verification: input.verification.as_ref(),
        snapshot: input.snapshot.as_ref(),
    })
}

/// Terminates what is still up; when it started and how long it took. A refusal is said to
/// the topic at once (the instances are left running).
async fn tear_down<E: Compute, N: Notifier>(
    ec2: &E,
    sns: &N,
    left: &Left<'_>,
    topic: Option<&str>,
) -> Result<(DateTime<Utc>, i64), Error> {
    let start = Utc::now();
    if let Err(e) = ec2.terminate(left.instances).await {
        return Err(teardown_failed(sns, topic, left, e).await);
    }
    tracing::info!(terminated = ?left.instances, "terminated");
    Ok((start, (Utc::now() - start).num_seconds()))
}

/// Every instance priced, in order: its type's On-Demand price (the run's, or read once for a
/// type it lacks), then the core prices it; then each attempt EC2 no longer describes, to the
/// latest it can have ended, and said so.
async fn price_all<E: Compute, P: PriceList>(
    ec2: &E,
    prices: &P,
    pricing: &Pricing<'_>,
    instances: &BTreeMap<String, InstanceView>,
    terminated_now: &[String],
) -> Vec<(AttemptCost, Option<String>)> {
    let vanished = vanished(pricing.known, instances);
    let types = instances
        .values()
        .map(|i| &i.instance_type)
        .chain(vanished.iter().map(|(_, a)| &a.instance_type));
    let on_demand_of = on_demand_prices(prices, pricing.run_prices, types, pricing.region).await;
    let mut priced = vec![];
    for i in instances.values() {
        // Until now if this call terminated it, else to its terminating transition.
        let ended_at = match terminated_now.contains(&i.id) {
            true => pricing.now,
            false => i
                .state_transition_reason
                .as_deref()
                .and_then(parse_transition_time)
                .unwrap_or(pricing.now),
        };
        let facts = facts_of(ec2, pricing, &on_demand_of, i, ended_at).await;
        priced.push(cost_report::price(&facts));
    }
    for (slot, a) in vanished {
        let (ended_at, why) = vanished_end(pricing, slot, &a);
        // As the run document knows it; gone from EC2, so terminated.
        let view = InstanceView {
            id: a.instance_id.clone(),
            instance_type: a.instance_type.clone(),
            state: Some(InstanceState::Terminated),
            state_reason: None,
            state_transition_reason: None,
            launch_time: Some(a.launched_at),
            availability_zone: a.availability_zone.clone(),
            subnet: Some(a.subnet.clone()),
            market: a.market,
            tags: BTreeMap::new(),
            http_tokens: None,
            client_token: Some(a.client_token.clone()),
            profile: None,
        };
        let facts = facts_of(ec2, pricing, &on_demand_of, &view, ended_at).await;
        let (cost, note) = cost_report::price(&facts);
        let gone = format!(
            "{}: no longer described by EC2 (it keeps a terminated instance about an hour); billed to {} at the latest: {why}",
            a.instance_id,
            ended_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        let note = Some(match note {
            Some(n) => format!("{gone}; {n}"),
            None => gone,
        });
        priced.push((cost, note.map(|n| caps::cap(&n, caps::NOTE_KEPT))));
    }
    priced
}

/// The latest `a` (of worker `slot`) can have ended, from its worker's attempts, its release
/// and its iteration's end in the history ([`cost_report::vanished_end`]).
fn vanished_end(p: &Pricing<'_>, slot: u32, a: &Attempt) -> (DateTime<Utc>, String) {
    let attempts: Vec<Attempt> = p
        .known
        .iter()
        .filter(|(s, _)| *s == slot)
        .map(|(_, k)| k.clone())
        .collect();
    let released: Vec<String> = p
        .ends
        .iter()
        .filter(|e| e.slot == slot)
        .filter_map(|e| e.released.as_ref())
        .flat_map(|r| r.terminated.clone())
        .collect();
    let iteration_end = p.seen.ended.get(&slot).copied();
    cost_report::vanished_end(&attempts, &released, a.attempt, iteration_end, p.now)
}

/// The attempts the run document knows that EC2 described neither by tag nor by id.
fn vanished(
    known: &[(u32, Attempt)],
    instances: &BTreeMap<String, InstanceView>,
) -> Vec<(u32, Attempt)> {
    known
        .iter()
        .filter(|(_, a)| !instances.contains_key(&a.instance_id))
        .cloned()
        .collect()
}

/// The attempts the run document knows, with their worker's slot, and those only the history
/// saw (a run stopped or failed before its Map ended has no `$.workers`).
fn known_attempts(ends: &[WorkerEnd], seen: &WorkersSeen) -> Vec<(u32, Attempt)> {
    let mut known: Vec<(u32, Attempt)> = ends
        .iter()
        .filter_map(|e| e.worker.as_ref().map(|w| (e.slot, w)))
        .flat_map(|(slot, w)| w.attempts.iter().map(move |a| (slot, a.clone())))
        .collect();
    for (slot, a) in &seen.launched {
        if !known.iter().any(|(_, k)| k.instance_id == a.instance_id) {
            known.push((*slot, a.clone()));
        }
    }
    known
}

/// Everything this execution launched: what the run document knows, and what the tags say (a
/// Lambda that crashed after RunInstances never returned its instance).
async fn everything_launched<E: Compute>(
    ec2: &E,
    execution: &str,
    known: &[(u32, Attempt)],
) -> Result<BTreeMap<String, InstanceView>, Error> {
    let mut instances: BTreeMap<String, InstanceView> = BTreeMap::new();
    for i in ec2.instances(&[(tags::EXECUTION, execution)], &[]).await? {
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
    Ok(instances)
}

/// What every instance is priced with.
struct Pricing<'a> {
    spec: &'a RunSpec,
    known: &'a [(u32, Attempt)],
    /// The workers' ends and what the history saw of them, which bound the end of an attempt
    /// EC2 no longer describes.
    ends: &'a [WorkerEnd],
    seen: &'a WorkersSeen,
    /// The run's prices (`$.quota.prices`).
    run_prices: &'a [cost::TypePrice],
    region: &'a str,
    now: DateTime<Utc>,
}

/// What pricing one instance needs: when it ran (to `ended_at`), its type's On-Demand price
/// and, for Spot, the price history over its life.
async fn facts_of<E: Compute>(
    ec2: &E,
    p: &Pricing<'_>,
    on_demand_of: &BTreeMap<String, Option<(f64, String)>>,
    i: &InstanceView,
    ended_at: DateTime<Utc>,
) -> InstanceFacts {
    let Pricing {
        spec, known, now, ..
    } = *p;
    let from_doc = known.iter().find(|(_, a)| a.instance_id == i.id);
    let tag = |k: &str| i.tags.get(k).and_then(|v| v.parse::<u32>().ok());
    let launched_at = i
        .launch_time
        .or(from_doc.map(|(_, a)| a.launched_at))
        .unwrap_or(now);
    let spot = match (i.market, i.availability_zone.as_deref()) {
        // Asked from an hour earlier: AWS dates the price in force at launch before it.
        (Market::Spot, Some(az)) => {
            let until = launched_at
                + chrono::Duration::seconds(cost::billed_seconds(launched_at, ended_at));
            let from = launched_at - chrono::Duration::hours(1);
            match ec2.spot_prices(&i.instance_type, az, from, until).await {
                Ok(h) => SpotHistory::Read(h),
                Err(e) => SpotHistory::Unreadable(short(&e.to_string())),
            }
        }
        _ => SpotHistory::NotAsked,
    };
    InstanceFacts {
        worker: tag(tags::WORKER)
            .or(from_doc.map(|(slot, _)| *slot))
            .unwrap_or(1),
        attempt: tag(tags::ATTEMPT)
            .or(from_doc.map(|(_, a)| a.attempt))
            .unwrap_or(0),
        instance_id: i.id.clone(),
        instance_type: i.instance_type.clone(),
        market: i.market,
        availability_zone: i.availability_zone.clone(),
        launched_at,
        ended_at,
        volume_gib: from_doc
            .map(|(_, a)| a.volume_gib)
            .unwrap_or(spec.worker.volume_gib),
        state_before: i.state,
        on_demand: on_demand_of.get(&i.instance_type).cloned().flatten(),
        spot,
        placement: from_doc.and_then(|(_, a)| a.placement.clone()),
    }
}

/// The run's signals go with its instances: the started signal, each attempt's token and its
/// run session. A failure is noted, never a reason to fail the report.
async fn delete_signals<'a, R: ParamHousekeeping>(
    r: &R,
    run_id: &str,
    instances: impl Iterator<Item = &'a String>,
    report: &mut CostReport,
) {
    let run = RunParameters::of_run(run_id);
    let names: Vec<String> = instances
        .flat_map(|id| [run.started(id), run.task_token(id), run.run_session(id)])
        .collect();
    if let Err(e) = r.delete_all(&names).await {
        tracing::error!(error = %e, "the run's SSM parameters could not be deleted");
        report.notes.push(format!(
            "the run's SSM parameters are left: {}",
            short(&e.to_string())
        ));
    }
}

/// The run's cost replaces its reservation in the ledger; like the email, never a reason to
/// fail the report.
async fn close_ledger<L: Ledger>(l: &L, execution: &str, report: &mut CostReport) {
    if let Err(e) = l
        .close(
            execution,
            EntryState::Ended,
            Some(report.actual_usd),
            Some(report.outcome.as_str()),
        )
        .await
    {
        tracing::error!(error = %e, "the ledger could not be updated");
        report.notes.push(format!(
            "the ledger still holds this run's reservation: {}",
            short(&e.to_string())
        ));
    }
}

/// Gives back the vCPUs the run reserved in every quota it may have reserved in
/// (`ephemera_core::vcpus`), once its instances are terminated. A failure is noted, never a
/// reason to fail the report: the sweeper gives them back at its next tick.
async fn release_vcpus<L: VcpuReservations>(
    l: &L,
    region: &str,
    execution: &str,
    spec: &RunSpec,
    report: &mut CostReport,
) {
    let codes = ephemera_core::vcpus::codes_of(spec);
    match l.release(region, execution, &codes).await {
        Ok(released) if !released.is_empty() => {
            tracing::info!(?released, "vCPU reservations given back")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "the vCPU reservations could not be given back");
            report.notes.push(format!(
                "the run's vCPU reservations are left for the sweeper to give back: {}",
                short(&e.to_string())
            ));
        }
    }
}

/// The month's page in the artifact bucket: every run of the month the run is booked in as the
/// ledger has it, this one as just closed (the by-month index may not show the close yet),
/// rewritten by every report and linked from its email. Like the email, never a reason to fail
/// the report.
async fn store_month<L: Ledger, O: ObjectWriter>(
    l: &L,
    objects: &O,
    config: &Config,
    (execution, month): (&str, &str),
    report: &mut CostReport,
) {
    let Some(bucket) = config.artifact_bucket.as_deref() else {
        return;
    };
    let mut entries = match l.entries(month).await {
        Ok(entries) => entries,
        Err(e) => {
            tracing::error!(error = %e, "the month's entries could not be read");
            report.notes.push(format!(
                "the month's page was not written: {}",
                short(&e.to_string())
            ));
            return;
        }
    };
    for e in entries.iter_mut().filter(|e| e.execution == execution) {
        e.state = EntryState::Ended;
        e.actual_usd = Some(report.actual_usd);
        e.outcome = Some(report.outcome.as_str().into());
    }
    let budget = (config.monthly_budget_usd > 0.0).then_some(config.monthly_budget_usd);
    let page = MonthPage::of(bucket, month);
    let html = month_html::render(&Month::from_entries(
        month,
        budget,
        &entries,
        report.generated_at,
    ));
    let put = objects
        .put(
            bucket,
            &page.key,
            html.into_bytes(),
            "text/html; charset=utf-8",
        )
        .await;
    match put {
        Ok(_) => report.month_page = Some(page),
        Err(e) => {
            tracing::error!(error = %e, page = %page.uri(), "the month's page could not be stored");
            report.notes.push(format!(
                "the month's page was not written to {}: {}",
                page.uri(),
                short(&e.to_string())
            ));
        }
    }
}

/// The email never fails the run: a finished job stays finished and its report is the
/// execution's output whatever SNS answers. Transient errors are retried here (the SDK retries
/// throttling too); a refusal is not, and is noted in the report.
async fn email<N: Notifier>(sns: &N, topic: &str, report: &mut CostReport) {
    let (subject, body) = render_email(report);
    let actual_s = format!("{:.6}", report.actual_usd);
    let attributes = [
        ("run_id", report.run_id.as_str()),
        ("outcome", report.outcome.as_str()),
        ("actual_usd", actual_s.as_str()),
    ];
    let mut tries = 0;
    let failed = loop {
        tries += 1;
        match sns.publish(topic, &subject, &body, &attributes).await {
            Ok(_) => break None,
            Err(e) if tries < 3 && !is_refusal(&e) => {
                tracing::warn!(error = %e, tries, "publishing the report failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500 * tries)).await;
            }
            Err(e) => break Some(e),
        }
    };
    if let Some(e) = failed {
        tracing::error!(error = %e, topic = %topic, "the report could not be emailed");
        report.notes.push(format!(
            "the report could not be emailed to {topic} after {tries} attempt(s): {}",
            short(&e.to_string())
        ));
    }
}

/// A refusal as the state machine's TellRefusal state hands it over.
#[derive(Debug, Deserialize)]
pub struct RefusedInput {
    /// What CheckQuota raised (`Error`, `Cause`).
    pub error: Value,
    /// The RunSpec as given: refused, so read for its `run_id` and `notify.topic_arn` only.
    pub run: Value,
    /// The execution's input (`$$.Execution.Input`): a schedule's has `schedule`.
    pub input: Value,
    pub execution: String,
    /// `$$.Execution.Name`: `ephemera run` names its executions after the run.
    pub name: String,
}

/// What the refusal's state keeps: the plain cause the execution fails with.
#[derive(Debug, Serialize)]
pub struct Told {
    pub cause: String,
    /// The topic the refusal went to; None when there was none or SNS refused it (`note`).
    pub emailed_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One email for a run refused before it started, to the RunSpec's topic (unless the topic is
/// one of its problems) or the stack's. The run fails whatever SNS answers.
pub async fn tell_refusal<N: Notifier>(
    sns: &N,
    config: &Config,
    input: RefusedInput,
) -> Result<Told, Error> {
    let refusal = Refusal::of(
        &input.error,
        &input.run,
        &input.input,
        &input.execution,
        &input.name,
    );
    let own_topic = input.run["notify"]["topic_arn"]
        .as_str()
        .filter(|_| !refusal.problems.iter().any(|p| p.starts_with("notify.")))
        .map(str::to_string);
    let topic = own_topic.or_else(|| config.default_topic.clone());
    let mut told = Told {
        cause: refusal.cause(),
        emailed_to: None,
        note: None,
    };
    let Some(topic) = topic else {
        tracing::warn!(run_id = %refusal.run_id, "a refused run and no topic to tell");
        told.note = Some("no notification topic: the refusal is only in the execution".into());
        return Ok(told);
    };
    let (subject, body) = refusal.email();
    let attributes = [("run_id", refusal.run_id.as_str()), ("outcome", "REFUSED")];
    match sns.publish(&topic, &subject, &body, &attributes).await {
        Ok(_) => told.emailed_to = Some(topic),
        Err(e) => {
            tracing::error!(error = %e, topic = %topic, "the refusal could not be emailed");
            told.note = Some(format!(
                "the refusal could not be emailed to {topic}: {}",
                short(&e.to_string())
            ));
        }
    }
    tracing::info!(run_id = %refusal.run_id, problems = refusal.problems.len(), "run refused");
    Ok(told)
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
            "it is not tagged {}=true and {}={run_id} (tags: {})",
            tags::MANAGED,
            tags::RUN,
            i.tags
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
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

/// A lost worker's release: `{run, execution, release: <slot>, error}`.
#[derive(Debug, Deserialize)]
pub struct ReleaseInput {
    pub run: RunSpec,
    pub execution: String,
    pub release: u32,
    /// The error that lost the worker, returned cut ([`CaughtError::capped`]) for its end.
    #[serde(default)]
    pub error: Option<CaughtError>,
}

/// Terminates every instance of one worker of this execution (found by its tags, so one a
/// crashed launch never returned goes too); the run's other workers go on, and the final
/// report costs this one's instances with the rest.
pub async fn release<E: Compute>(ec2: &E, input: ReleaseInput) -> Result<Released, Error> {
    let spec = &input.run;
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
        error: input.error.as_ref().map(CaughtError::capped),
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

/// What a refused teardown leaves running, and whose it is.
#[derive(Clone, Copy)]
struct Left<'a> {
    run_id: &'a str,
    execution: &'a str,
    instances: &'a [String],
}

/// A teardown that failed. A permission refusal does not pass with retries: the alert says at
/// once what is left and how to end it, and the error (`Ephemera.CleanupDenied`) is not retried
/// (the ASL goes straight to CleanupFailed). Any other error is returned as it is, for the
/// state's Retry.
async fn teardown_failed<N: Notifier>(
    sns: &N,
    topic: Option<&str>,
    left: &Left<'_>,
    e: AwsError,
) -> Error {
    if !is_denied(&e) {
        return e.into();
    }
    let Left {
        run_id,
        execution,
        instances: left,
    } = *left;
    let denied = Error::CleanupDenied {
        left: left.to_vec(),
        detail: short(&e.to_string()),
    };
    tracing::error!(?left, error = %e, "AWS refused the cleanup");
    if let Some(t) = topic {
        let (subject, body) = cleanup_denied_email(run_id, execution, &denied);
        let attributes = [("run_id", run_id), ("outcome", "CLEANUP_DENIED")];
        if let Err(e) = sns.publish(t, &subject, &body, &attributes).await {
            tracing::error!(error = %e, topic = %t, "the cleanup alert could not be sent");
        }
    }
    denied
}

/// The alert for a cleanup AWS refused: what is left running, the refusal, what to run.
fn cleanup_denied_email(run_id: &str, execution: &str, denied: &Error) -> (String, String) {
    let left = match denied {
        Error::CleanupDenied { left, .. } => left.join("\n  "),
        _ => String::new(),
    };
    let subject = format!(
        "ephemera {}: CLEANUP DENIED, instances left running",
        cut(run_id, 40)
    );
    let body = format!(
        "AWS refused to terminate the instances of run {run_id} (execution {execution}). They are still running and billing:\n  {left}\n\nRefused: {denied}\n\nWhat to do: restore ec2:TerminateInstances to the terminate-with-cost-report role (template statement TerminateOnlyEphemeraInstances), then run `ephemera sweep --yes`, or terminate them in the EC2 console. The scheduled sweeper tries again at its next tick.\n"
    );
    (subject, body)
}

fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A permission refusal: EC2 answers `UnauthorizedOperation`
/// (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html), others
/// `AccessDenied…`.
fn is_denied(e: &AwsError) -> bool {
    matches!(e, AwsError::Call { code, .. } if code == "UnauthorizedOperation"
        || code.starts_with("AccessDenied")
        || code.starts_with("AuthFailure"))
}

/// Permission and validation errors, which a retry does not change.
fn is_refusal(e: &AwsError) -> bool {
    matches!(e, AwsError::Call { code, .. } if code.contains("Authorization")
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
    fn only_permission_refusals_are_a_denied_cleanup() {
        let aws = |code: &str| AwsError::Call {
            service: "ec2",
            operation: "TerminateInstances",
            code: code.into(),
            message: "m".into(),
        };
        assert!(is_denied(&aws("UnauthorizedOperation")));
        assert!(is_denied(&aws("AccessDeniedException")));
        assert!(!is_denied(&aws("RequestLimitExceeded")));
        assert!(!is_denied(&aws("InvalidInstanceID.NotFound")));
        let denied = Error::CleanupDenied {
            left: vec!["i-1".into(), "i-2".into()],
            detail: "UnauthorizedOperation".into(),
        };
        let (subject, body) = cleanup_denied_email(&"r".repeat(80), "arn:x", &denied);
        assert!(subject.len() < 100, "{subject}");
        for needle in [
            "i-1",
            "i-2",
            "ec2:TerminateInstances",
            "ephemera sweep --yes",
        ] {
            assert!(body.contains(needle), "{needle}: {body}");
        }
    }

    #[test]
    fn transition_time() {
        let t = parse_transition_time("User initiated (2026-11-22 14:02:11 GMT)").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T14:02:11+00:00");
        assert_eq!(parse_transition_time("Service initiated"), None);
    }

    #[test]
    fn a_stopped_runs_attempts_come_from_the_history_each_instance_once() {
        let attempt = |n: u32, id: &str| Attempt {
            attempt: n,
            instance_id: id.into(),
            instance_type: "c7g.large".into(),
            subnet: "s".into(),
            availability_zone: None,
            market: Market::Spot,
            launched_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            client_token: "c".into(),
            estimate_usd: 0.1,
            volume_gib: 30,
            tried: vec![],
            tried_total: 0,
            reused: false,
            placement: None,
        };
        let seen = WorkersSeen {
            ended: Default::default(),
            launched: vec![(1, attempt(1, "i-1")), (2, attempt(1, "i-2"))],
        };
        // A stop: no `$.workers`, the history alone.
        let ids = |k: Vec<(u32, Attempt)>| -> Vec<(u32, String)> {
            k.into_iter().map(|(s, a)| (s, a.instance_id)).collect()
        };
        assert_eq!(
            ids(known_attempts(&[], &seen)),
            [(1, "i-1".to_string()), (2, "i-2".to_string())]
        );
        // The document's first, the history's for what it lacks.
        let w: ephemera_core::rundoc::WorkerState =
            serde_json::from_value(serde_json::json!({"slot": 1,
            "attempts": [attempt(1, "i-1"), attempt(2, "i-3")], "relaunches_left": 0,
            "heartbeat_seconds": 60, "timeout_seconds": 60, "boot_poll_seconds": 5,
            "token_parameter": "p", "token_reader": "r"}))
            .unwrap();
        let ends = [WorkerEnd {
            slot: 1,
            worker: Some(w),
            health: None,
            result: None,
            error: None,
            released: None,
        }];
        assert_eq!(
            ids(known_attempts(&ends, &seen)),
            [
                (1, "i-1".to_string()),
                (1, "i-3".to_string()),
                (2, "i-2".to_string())
            ]
        );
    }
}

//! launch-worker: admit the attempt against what is left of the run's cap and the month's
//! budget, then launch one of the run's workers: Spot first
//! across candidate types × subnets, On-Demand when the policy allows, idempotent by tag and
//! ClientToken.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use ephemera_core::budget::{self, AttemptWorstCase, Cap};
use ephemera_core::capacity::{self, LaunchErrorKind, Tried};
use ephemera_core::contract::RunParameters;
use ephemera_core::instance_state::InstanceState;
use ephemera_core::run_credentials::{self, Holder};
use ephemera_core::rundoc::{self, Attempt, WorkerState};
use ephemera_core::runspec::{FieldError, RunSpec};
use ephemera_core::vcpus::{self, AfterRefusal, QuotaRefused};
use ephemera_core::{caps, cost, launch, ledger, tags, userdata, InvalidRunSpec};
use serde::Deserialize;

use crate::aws::{
    pricing, Compute, InstanceView, LaunchRequest, Ledger, Notifier, Params, PriceList, Reserved,
    RunSessions, SealedParams, SpotPlacement, Vend,
};
use crate::error::Error;
use ephemera_core::placement::{self, Placed, Ranking};
use ephemera_core::runspec::CapacityOrder;
use ephemera_core::Market;

#[derive(Debug, Deserialize)]
pub struct Input {
    pub run: RunSpec,
    /// `$$.Execution.Id`: ties instances, tokens and tags to this execution.
    pub execution: String,
    /// Which of the run's workers (`1..=worker.count`, the Map state's item).
    #[serde(default = "first")]
    pub slot: u32,
    /// The previous `$.worker` on a relaunch.
    #[serde(default)]
    pub worker: Option<WorkerState>,
    #[serde(default)]
    pub relaunch: bool,
    /// `$$.State.EnteredTime`: the same on every retry of one LaunchWorker state, so the
    /// deadline tag — and with it the whole RunInstances request — is too (a ClientToken
    /// reused with other parameters is IdempotentParameterMismatch).
    #[serde(default)]
    pub entered: Option<DateTime<Utc>>,
    /// `$$.Execution.StartTime`: the run is booked in the month it started, whatever month a
    /// relaunch is made in (`ledger::booked_month`).
    #[serde(default)]
    pub started: Option<DateTime<Utc>>,
    /// The run's prices (`$.quota.prices`, read once by quota-check); a type missing here is
    /// read from the Price List API.
    #[serde(default)]
    pub prices: Vec<cost::TypePrice>,
    /// The markets quota-check found room in (`$.quota.markets`); empty: the policy's.
    #[serde(default)]
    pub markets: Vec<ephemera_core::Market>,
    /// The worker's last launch refused for vCPU quota (`$.launch_quota`, from the error the
    /// state machine read it from), when it waited for one.
    #[serde(default)]
    pub launch_quota: Option<LaunchQuota>,
}

/// What the state machine keeps of a launch refused for quota (`$.launch_quota`).
#[derive(Debug, Clone, Deserialize)]
pub struct LaunchQuota {
    pub refused: QuotaRefused,
}

fn first() -> u32 {
    1
}

/// What the deployment supplies (environment of the function).
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub region: String,
    /// The template's worker instance profile, used when the RunSpec names none.
    pub instance_profile: Option<String>,
    /// The worker role's `RoleId` (`AROA…`, template `!GetAtt WorkerRole.RoleId`): with the
    /// instance id it names the one session allowed to read the attempt's task token.
    pub worker_role_id: Option<String>,
    /// The month's ceiling over every run (template `MonthlyBudgetUsd`); 0 is none.
    pub monthly_budget_usd: f64,
    /// Where the monthly budget's alert goes (the stack's report topic).
    pub alert_topic: Option<String>,
    /// The stack's worker log group (template `WorkerLogs`), passed to the worker.
    pub worker_log_group: Option<String>,
    /// The KMS key the workers' root volumes are encrypted with (template `EbsKmsKeyArn`).
    pub ebs_kms_key: Option<String>,
    /// The run role (template `RunRole`): each instance is handed its run's session of it.
    /// None (a deployment that is not the template's) vends none, and the worker signs with
    /// its instance role.
    pub run_role_arn: Option<String>,
    /// The stack's own key (template `TaskTokenKey`) the run's session is sealed under, as the
    /// task token is.
    pub sealing_key: Option<String>,
    /// The stack's buckets, which the run's session reaches under `runs/<run id>/`.
    pub artifact_bucket: Option<String>,
    pub export_bucket: Option<String>,
}

/// Where a launch is booked: the run ledger, when the deployment has one, and the topic its
/// alert goes to.
pub struct Books<'a, L, N> {
    pub ledger: Option<&'a L>,
    pub alerts: &'a N,
}

/// What launch-worker reads and writes: EC2, the Price List, SSM (an image by alias, the run's
/// session handed over), STS (the run's session), and the books a launch is entered in.
pub struct Clients<'a, E, P, S, V, L, N> {
    pub ec2: &'a E,
    pub prices: &'a P,
    pub params: &'a S,
    pub sessions: &'a V,
    pub books: Books<'a, L, N>,
}

pub async fn handle<
    E: Compute + SpotPlacement,
    P: PriceList,
    S: Params + SealedParams,
    V: RunSessions,
    L: Ledger,
    N: Notifier,
>(
    clients: Clients<'_, E, P, S, V, L, N>,
    config: &Config,
    input: Input,
    now: DateTime<Utc>,
) -> Result<WorkerState, Error> {
    let Clients {
        ec2,
        prices,
        params,
        sessions,
        books,
    } = clients;
    let vending = Vending::of(config, &input.run)?;
    let spec = &input.run;
    let role_id = worker_role_id(config)?;
    let slot = checked_slot(spec, input.slot)?;
    let (attempt, relaunches_left) = next_attempt(spec, input.worker.as_ref(), input.relaunch)?;
    let month = ledger::booked_month(input.started, input.entered.unwrap_or(now));
    let granted = admit(prices, &books, config, &input, &month, slot, attempt).await?;
    let refused = input.launch_quota.as_ref().map(|q| &q.refused);
    let made = Made {
        spec,
        previous: input.worker.as_ref(),
        role_id: &role_id,
        slot,
        attempt,
        relaunches_left,
        granted: &granted,
        quota_waits: refused.map_or(0, |r| r.waits),
        now,
    };
    if input.relaunch {
        book_reclaim(books.ledger, &input.execution, slot, input.worker.as_ref()).await;
    }
    let handover = Handover {
        vending: vending.as_ref(),
        sessions,
        params,
        role_id: &role_id,
    };
    // A retried call (Lambda timeout, Step Functions retry) finds the instance it already made.
    if let Some(state) = already_made(ec2, &handover, &input.execution, &made).await? {
        return Ok(state);
    }
    let request = launch_request(ec2, params, config, &made, &input, vending.is_some()).await?;
    let ranking = rank_candidates(ec2, prices, books.ledger, config, &input, &month, now).await;
    tracing::info!(slot, attempt, order = spec.capacity.order.as_str(), first = %ranking.choice().line(), ranking = %serde_json::to_string(&ranking).unwrap_or_default(), "candidates ranked");
    match first_available(ec2, &request, &input.execution, &made, &ranking.tried()).await {
        Ok((instance, token, tried)) => {
            book_spot_launch(books.ledger, &input.execution, slot, attempt, &instance).await;
            // An error here fails the state: its Catch terminates the instance, and a retry
            // finds it and hands the session over then.
            handover.to(&instance.id).await?;
            let line = caps::cap(&ranking.choice().line(), placement::LINE_KEPT);
            Ok(made.state(&instance, token, tried, false, Some(line)))
        }
        Err(Error::CapacityUnavailable { tried }) if capacity::refused_for_quota(&tried) => {
            Err(quota_verdict(spec, refused, attempt, &tried, now))
        }
        Err(e) => Err(e),
    }
}

/// The attempt admitted against the run's cap and the month's budget ([`book`]): its worst
/// case as granted, for the run's prices and the month the run is booked in.
async fn admit<P: PriceList, L: Ledger, N: Notifier>(
    prices: &P,
    books: &Books<'_, L, N>,
    config: &Config,
    input: &Input,
    month: &str,
    slot: u32,
    attempt: u32,
) -> Result<AttemptWorstCase, Error> {
    let spec = &input.run;
    let worst = attempt_worst_case(prices, spec, &input.prices, &config.region).await?;
    let booking = Booking {
        spec,
        execution: &input.execution,
        month: month.to_string(),
        slot,
        attempt,
        previous_usd: previous_usd(input.worker.as_ref(), attempt),
        worst: &worst,
        cap: Cap::of(spec, &config.region),
    };
    let granted = book(books, config, &booking).await?;
    if granted.capped() {
        tracing::warn!(
            runtime_seconds = granted.runtime_seconds,
            max_runtime_seconds = spec.limits.max_runtime_seconds,
            attempt_usd = granted.usd,
            slot,
            attempt,
            "the rest of the cap buys less than limits.max_runtime_seconds: the worker stops at its money deadline"
        );
    }
    Ok(granted)
}

/// The worker's state with the instance a retried call already made for this attempt, if
/// there is one.
async fn already_made<E: Compute, V: RunSessions, S: SealedParams>(
    ec2: &E,
    handover: &Handover<'_, V, S>,
    execution: &str,
    made: &Made<'_>,
) -> Result<Option<WorkerState>, Error> {
    let (slot, attempt) = (made.slot, made.attempt);
    let Some(i) = existing_instance(ec2, execution, slot, attempt).await? else {
        return Ok(None);
    };
    tracing::info!(instance = %i.id, slot, attempt, "instance for this attempt already exists");
    // The call that launched it may have ended before it handed the session over.
    handover.to(&i.id).await?;
    let token = i.client_token.clone().unwrap_or_default();
    Ok(Some(made.state(&i, token, vec![], true, None)))
}

/// A launch some candidate's vCPU quota refused (and no other candidate took): the worker waits
/// for the quota and launches again (`Ephemera.QuotaExceeded`, whose cause the state machine's
/// Wait reads), unless it has waited as long as it may.
fn quota_verdict(
    spec: &RunSpec,
    previous: Option<&QuotaRefused>,
    attempt: u32,
    tried: &[Tried],
    now: DateTime<Utc>,
) -> Error {
    let refusals: Vec<String> = tried
        .iter()
        .filter(|t| vcpus::is_quota_refusal(&t.code))
        .map(|t| {
            format!(
                "{} {} ({}): {}",
                t.market.as_str(),
                t.instance_type,
                vcpus::code_of(&t.instance_type, t.market).unwrap_or("no known quota"),
                t.code
            )
        })
        .collect();
    let others = tried.len() - refusals.len();
    let mut reason = format!("RunInstances refused {}", refusals.join("; "));
    if others > 0 {
        reason.push_str(&format!("; {others} other candidate(s) had no capacity"));
    }
    // Within what the error message keeps (`caps::MESSAGE_KEPT`), so the JSON stays whole.
    let reason = caps::cap(&reason, caps::CAUSE_KEPT);
    match vcpus::after_refusal(spec, previous, attempt, reason, now) {
        AfterRefusal::Wait(wait) => {
            tracing::warn!(attempt, waits = wait.waits, wait_seconds = wait.wait_seconds, reason = %wait.reason, "launch refused for vCPU quota; waiting");
            Error::QuotaExceeded(wait)
        }
        AfterRefusal::GiveUp(why) => Error::LaunchQuotaTimeout(why),
    }
}

/// The run's session of the run role, to hand each instance of the run: the role, the key it
/// is sealed under, and the session policy the RunSpec decides (`run_credentials`).
struct Vending<'a> {
    role_arn: &'a str,
    sealing_key: &'a str,
    run_id: &'a str,
    policy: String,
    /// What the agent narrows its job's session to (`Holder::Job`).
    job_policy: String,
}

impl<'a> Vending<'a> {
    /// None when the deployment has no run role; an error, before anything is launched, when
    /// it has one but not what a session needs, or the RunSpec's session policy is too long.
    fn of(config: &'a Config, spec: &'a RunSpec) -> Result<Option<Vending<'a>>, Error> {
        let Some(role_arn) = config.run_role_arn.as_deref() else {
            return Ok(None);
        };
        let missing = |v: &str| {
            Error::Internal(format!(
                "{v} is not set (the template sets it beside EPHEMERA_RUN_ROLE_ARN)"
            ))
        };
        let sealing_key = config
            .sealing_key
            .as_deref()
            .ok_or_else(|| missing("EPHEMERA_TASK_TOKEN_KEY"))?;
        let stack = run_credentials::Stack {
            artifact_bucket: config
                .artifact_bucket
                .as_deref()
                .ok_or_else(|| missing("EPHEMERA_ARTIFACT_BUCKET"))?,
            export_bucket: config
                .export_bucket
                .as_deref()
                .ok_or_else(|| missing("EPHEMERA_EXPORT_BUCKET"))?,
            run_role_arn: role_arn,
        };
        // The agent's session: job.secrets are not built yet, so it names none.
        let policy = run_credentials::session_policy(spec, &stack, Holder::Agent)
            .map_err(|e| Error::LaunchFailed(e.to_string()))?;
        // The job's is a part of the agent's (no secret, no renewal), so never longer.
        let job_policy = run_credentials::session_policy(spec, &stack, Holder::Job)
            .map_err(|e| Error::LaunchFailed(e.to_string()))?;
        Ok(Some(Vending {
            role_arn,
            sealing_key,
            run_id: &spec.run_id,
            policy: policy.to_string(),
            job_policy: job_policy.to_string(),
        }))
    }

    /// Vends the session (AssumeRole, tagged with the run) and seals it into the parameter
    /// only `instance`'s role session may read; never in user data, which anything on the
    /// instance that reaches IMDS can read.
    async fn hand_over<V: RunSessions, S: SealedParams>(
        &self,
        sessions: &V,
        params: &S,
        role_id: &str,
        instance: &str,
    ) -> Result<(), Error> {
        let mut session = sessions
            .vend(&Vend {
                role_arn: self.role_arn,
                session_name: instance,
                run_id: self.run_id,
                policy: &self.policy,
            })
            .await?;
        session.job_policy = Some(self.job_policy.clone());
        let value = serde_json::to_string(&session)
            .map_err(|e| Error::Internal(format!("the run's session: {e}")))?;
        let name = RunParameters::of_run(self.run_id).run_session(instance);
        let written = params
            .put_sealed(
                &name,
                &value,
                self.sealing_key,
                &rundoc::token_reader(role_id, instance),
            )
            .await?;
        tracing::info!(instance, written, expires = %session.expiration, "the run's session handed over");
        Ok(())
    }
}

/// Where an instance gets the run's session: the [`Vending`], when the deployment has a run
/// role, and the clients it vends and seals with.
struct Handover<'a, V, S> {
    vending: Option<&'a Vending<'a>>,
    sessions: &'a V,
    params: &'a S,
    role_id: &'a str,
}

impl<V: RunSessions, S: SealedParams> Handover<'_, V, S> {
    /// [`Vending::hand_over`] to `instance`; nothing without a run role.
    async fn to(&self, instance: &str) -> Result<(), Error> {
        match self.vending {
            Some(v) => {
                v.hand_over(self.sessions, self.params, self.role_id, instance)
                    .await
            }
            None => Ok(()),
        }
    }
}

/// The worker role's id, checked before anything is launched: without it no worker could read
/// its task token.
fn worker_role_id(config: &Config) -> Result<String, Error> {
    config.worker_role_id.clone().ok_or_else(|| {
        Error::Internal(
            "EPHEMERA_WORKER_ROLE_ID is not set (the template sets it to the worker role's RoleId)"
                .into(),
        )
    })
}

fn checked_slot(spec: &RunSpec, slot: u32) -> Result<u32, Error> {
    if (1..=spec.worker.count).contains(&slot) {
        return Ok(slot);
    }
    Err(Error::BadInput(format!(
        "slot {slot} is not one of the run's workers 1..={}",
        spec.worker.count
    )))
}

/// This launch's attempt number and the relaunches left after it.
fn next_attempt(
    spec: &RunSpec,
    previous: Option<&WorkerState>,
    relaunch: bool,
) -> Result<(u32, u32), Error> {
    match (previous, relaunch) {
        (Some(w), true) if w.relaunches_left == 0 => Err(Error::LaunchFailed(format!(
            "no relaunch left after attempt {} (limits.max_relaunches = {})",
            last_attempt(w),
            spec.limits.max_relaunches
        ))),
        (Some(w), true) => Ok((last_attempt(w) + 1, w.relaunches_left - 1)),
        (Some(w), false) => Ok((last_attempt(w), w.relaunches_left)),
        (None, _) => Ok((1, spec.limits.max_relaunches)),
    }
}

/// One attempt's worst case (`budget::attempt_worst_case`): the dearest candidate at
/// On-Demand for everything its instance can be billed, with the run's prices (read once by
/// quota-check).
async fn attempt_worst_case<P: PriceList>(
    prices: &P,
    spec: &RunSpec,
    known: &[cost::TypePrice],
    region: &str,
) -> Result<AttemptWorstCase, Error> {
    let types = &spec.worker.instance_types;
    let quotes = pricing::quotes_for(prices, known, types, region).await;
    let (dearest, quote) = pricing::dearest(types, &quotes, region)?;
    Ok(budget::attempt_worst_case(
        spec,
        &dearest,
        quote.usd_per_hour,
        region,
    ))
}

/// What the worker's earlier attempts reserved (their granted worst cases): the attempts
/// before `attempt` in its state.
fn previous_usd(previous: Option<&WorkerState>, attempt: u32) -> f64 {
    previous.map_or(0.0, |w| {
        w.attempts
            .iter()
            .filter(|a| a.attempt < attempt)
            .fold(0.0, |sum, a| cost::usd(sum + a.estimate_usd))
    })
}

/// One worker's attempt as the month's ledger books it.
struct Booking<'a> {
    spec: &'a RunSpec,
    execution: &'a str,
    month: String,
    slot: u32,
    attempt: u32,
    /// What this worker's earlier attempts reserved ([`previous_usd`]).
    previous_usd: f64,
    /// The attempt's whole worst case, at `limits.max_runtime_seconds`.
    worst: &'a AttemptWorstCase,
    cap: Cap,
}

impl Booking<'_> {
    /// This attempt refused: what is left of the run's cap beside `reserved_usd`, and why.
    fn over_cap(&self, reserved_usd: f64) -> Error {
        let least = self.least();
        Error::OverRunCap {
            slot: self.slot,
            attempt: self.attempt,
            remainder: self.cap.remainder(reserved_usd),
            attempt_usd: least.usd,
            budget: self.cap.budget_usd,
            detail: least.terms(),
        }
    }

    /// The least attempt worth launching: [`budget::MIN_USEFUL_RUNTIME_SECONDS`] of runtime.
    fn least(&self) -> AttemptWorstCase {
        let runtime = budget::MIN_USEFUL_RUNTIME_SECONDS.min(self.spec.limits.max_runtime_seconds);
        self.worst.with_runtime(self.spec, runtime)
    }

    /// The attempt `room_usd` buys ([`budget::grant`]), or the refusal with `held_usd` held.
    fn grant(&self, room_usd: f64, held_usd: f64) -> Result<AttemptWorstCase, Error> {
        budget::grant(self.spec, self.worst, room_usd).ok_or_else(|| self.over_cap(held_usd))
    }
}

/// What the run's item holds beside this attempt, as read: the other workers' reservations
/// and this worker's earlier attempts, the other workers that have not launched yet, and this
/// attempt's own reservation when a retried call already made it.
fn as_read(mine: Option<&ledger::Entry>, b: &Booking<'_>) -> (f64, u32, Option<f64>) {
    let workers = mine.map(|e| &e.workers);
    let others = workers.map_or(0.0, |w| {
        w.iter()
            .filter(|(slot, _)| **slot != b.slot)
            .fold(0.0, |sum, (_, usd)| cost::usd(sum + usd))
    });
    let started = workers.map_or(0, |w| w.keys().filter(|s| **s != b.slot).count()) as u32;
    let unstarted = b.spec.worker.count.saturating_sub(1 + started);
    let already = workers
        .and_then(|w| w.get(&b.slot).copied())
        .map(|usd| cost::usd(usd - b.previous_usd))
        .filter(|usd| *usd > 0.0);
    (cost::usd(others + b.previous_usd), unstarted, already)
}

/// How many times a launch grants again when the run's item moved between its read and its
/// reservation (another worker of the run reserved in between).
const GRANT_TRIES: usize = 3;

/// The guards, before anything exists: the run's cap (what its attempts reserved so far, plus
/// this one, within `limits.budget_usd`: the whole worst case, or the runtime the rest buys,
/// [`budget::grant`]), and the month's budget (the month's other runs, at their cost or their
/// reservation while they run, plus this run's attempts). The attempt as granted; failing to
/// read the ledger fails the launch: a budget that cannot be checked is not spent.
async fn book<L: Ledger, N: Notifier>(
    books: &Books<'_, L, N>,
    config: &Config,
    b: &Booking<'_>,
) -> Result<AttemptWorstCase, Error> {
    let Some(l) = books.ledger else {
        // No ledger (a deployment that is not the template's): the other workers' attempts
        // are unknown, so each is held at its last (1 + limits.max_relaunches).
        let spec = b.spec;
        let attempts = f64::from(spec.worker.count - 1) * f64::from(1 + spec.limits.max_relaunches);
        let held = cost::usd(attempts * b.worst.usd + b.previous_usd);
        return b.grant(b.cap.remainder(held), held);
    };
    let entries = l.entries(&b.month).await?;
    let mine = entries.iter().find(|e| e.execution == b.execution);
    let (mut held, unstarted, already) = as_read(mine, b);
    for _ in 0..GRANT_TRIES {
        // A retried call grants what it reserved before: the same runtime, the same request.
        let room = already.unwrap_or_else(|| budget::share(b.cap.remainder(held), unstarted));
        let granted = b.grant(room, held)?;
        match reserve(books, l, config, b, &entries, &granted).await? {
            None => return Ok(granted),
            // The index read was behind the run's item: grant again from the item's figure.
            Some(now_held) if now_held > held => held = now_held,
            Some(now_held) => return Err(b.over_cap(now_held)),
        }
    }
    Err(b.over_cap(held))
}

/// The month's guard and the reservation of `granted` in the ledger: None once reserved,
/// Some(what the run's item holds) when the run's cap has no room for it.
async fn reserve<L: Ledger, N: Notifier>(
    books: &Books<'_, L, N>,
    l: &L,
    config: &Config,
    b: &Booking<'_>,
    entries: &[ledger::Entry],
    granted: &AttemptWorstCase,
) -> Result<Option<f64>, Error> {
    let reserved = cost::usd(b.previous_usd + granted.usd);
    let budget = config.monthly_budget_usd;
    let refused = |others: f64, this_run: f64, budget: f64| Error::OverMonthlyBudget {
        month: b.month.clone(),
        others,
        this_run,
        budget,
    };
    let (month_to_date_usd, alert) =
        match ledger::judge(entries, b.execution, b.slot, reserved, budget) {
            ledger::Verdict::Refused {
                others_usd,
                this_run_usd,
                budget_usd,
            } => return Err(refused(others_usd, this_run_usd, budget_usd)),
            ledger::Verdict::Within {
                month_to_date_usd,
                alert,
            } => (month_to_date_usd, alert),
        };
    // The read above is the index's, eventually consistent: the reservation itself is a
    // transaction on the month's counter, which launches at the same instant cannot together
    // pass.
    let entry = ledger::Entry {
        execution: b.execution.to_string(),
        run_id: b.spec.run_id.clone(),
        month: b.month.clone(),
        reserved_usd: reserved,
        workers: BTreeMap::from([(b.slot, reserved)]),
        actual_usd: None,
        state: ledger::EntryState::Running,
        started_at: Some(chrono::Utc::now()),
        outcome: None,
        placements: vec![],
    };
    match l.reserve(&entry, b.slot, budget, &b.cap).await? {
        Reserved::Admitted => {}
        Reserved::Refused {
            others_usd,
            this_run_usd,
        } => return Err(refused(others_usd, this_run_usd, budget)),
        Reserved::OverCap { reserved_usd } => return Ok(Some(reserved_usd)),
        // Its report ran while this launch was on its way (a stop, a cleanup): launching now
        // would run an instance no report bills.
        Reserved::Ended => {
            return Err(Error::LaunchFailed(format!(
                "run {} has already ended (its report settled it): nothing more is launched for it",
                b.spec.run_id
            )))
        }
    }
    if let (true, Some(topic)) = (alert, config.alert_topic.as_deref()) {
        let subject = format!(
            "ephemera: {} has passed {:.0}% of the monthly budget",
            b.month,
            ledger::ALERT_FRACTION * 100.0
        );
        let body = format!(
            "Run {} reserved ${reserved:.2} (its worst case); {} now stands at ${month_to_date_usd:.2} spent or reserved of the ${budget:.2} monthly budget (MonthlyBudgetUsd). Runs that would pass the budget are refused.",
            b.spec.run_id, b.month
        );
        // The alert never stops the launch it is about.
        if let Err(e) = books.alerts.publish(topic, &subject, &body, &[]).await {
            tracing::error!(error = %e, "the monthly budget alert could not be sent");
        }
    }
    Ok(None)
}

/// What every outcome of this launch is recorded with: the worker's state after it.
struct Made<'a> {
    spec: &'a RunSpec,
    previous: Option<&'a WorkerState>,
    role_id: &'a str,
    slot: u32,
    attempt: u32,
    relaunches_left: u32,
    /// The attempt as the cap granted it: its worst case is its estimate.
    granted: &'a AttemptWorstCase,
    /// How many times the worker waited for vCPU quota before this launch.
    quota_waits: u32,
    now: DateTime<Utc>,
}

impl Made<'_> {
    /// The worker's state with instance `i` as this attempt (replacing a record of the same
    /// attempt, as a retried call would have made).
    fn state(
        &self,
        i: &InstanceView,
        token: String,
        tried: Vec<Tried>,
        reused: bool,
        placement: Option<String>,
    ) -> WorkerState {
        let (tried, tried_total) = rundoc::kept(tried);
        let current = Attempt {
            attempt: self.attempt,
            instance_id: i.id.clone(),
            instance_type: i.instance_type.clone(),
            subnet: i.subnet.clone().unwrap_or_default(),
            availability_zone: i.availability_zone.clone(),
            market: i.market,
            launched_at: i.launch_time.unwrap_or(self.now),
            client_token: token,
            estimate_usd: self.granted.usd,
            volume_gib: self.spec.worker.volume_gib,
            tried,
            tried_total,
            reused,
            placement,
        };
        let mut attempts: Vec<Attempt> = self
            .previous
            .map(|w| {
                w.attempts
                    .iter()
                    .filter(|a| a.attempt != self.attempt)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let token_parameter = RunParameters::of_run(&self.spec.run_id).task_token(&i.id);
        let token_reader = rundoc::token_reader(self.role_id, &i.id);
        attempts.push(current);
        WorkerState {
            slot: self.slot,
            attempts,
            relaunches_left: self.relaunches_left,
            heartbeat_seconds: self.spec.limits.heartbeat_seconds,
            timeout_seconds: self.timeout_seconds(),
            budget_seconds: self.budget_seconds(),
            boot_poll_seconds: self.spec.waits.boot_poll_seconds,
            token_parameter,
            token_reader,
        }
    }
}

impl Made<'_> {
    /// The money deadline handed to the worker: the granted runtime, when the cap granted less
    /// than `limits.max_runtime_seconds`.
    fn budget_seconds(&self) -> Option<u64> {
        self.granted
            .capped()
            .then_some(self.granted.runtime_seconds)
    }

    /// AwaitCompletion's timeout: `limits.max_runtime_seconds`, or with a money deadline its
    /// runtime and the stop allowance. The worker's own deadline counts from its start, before
    /// AwaitCompletion begins, so the backstop never fires before the worker stops itself.
    fn timeout_seconds(&self) -> u64 {
        match self.budget_seconds() {
            Some(b) => b + budget::STOP_ALLOWANCE_SECONDS,
            None => self.spec.limits.max_runtime_seconds,
        }
    }
}

/// The instance this execution's worker `slot` already has for `attempt`, if any.
async fn existing_instance<E: Compute>(
    ec2: &E,
    execution: &str,
    slot: u32,
    attempt: u32,
) -> Result<Option<InstanceView>, Error> {
    let (slot, attempt) = (slot.to_string(), attempt.to_string());
    let found = ec2
        .instances(
            &[
                (tags::EXECUTION, execution),
                (tags::WORKER, slot.as_str()),
                (tags::ATTEMPT, attempt.as_str()),
            ],
            &[InstanceState::Pending, InstanceState::Running],
        )
        .await?;
    Ok(found.into_iter().next())
}

/// Everything of the launch but the candidate: tags, user data, profile, image, root volume
/// and its key. The market, type, subnet and ClientToken are each candidate's.
async fn launch_request<E: Compute, S: Params>(
    ec2: &E,
    params: &S,
    config: &Config,
    made: &Made<'_>,
    input: &Input,
    run_session: bool,
) -> Result<LaunchRequest, Error> {
    let spec = made.spec;
    let (slot, attempt) = (made.slot, made.attempt);
    let deadline = launch::deadline(
        spec,
        input.entered.unwrap_or(made.now),
        made.granted.runtime_seconds,
    );
    // A job's image (and the GPUs of a GPU type) reach the worker as `exec --image … --gpus`.
    let args = ephemera_core::image::worker_args(spec);
    let script = userdata::render(&userdata::WorkerLaunch {
        region: &config.region,
        artifact: spec.worker.artifact.as_str(),
        args: &args,
        run_id: &spec.run_id,
        slot,
        workers: spec.worker.count,
        attempt,
        heartbeat_seconds: spec.limits.heartbeat_seconds,
        ssm_prefix: RunParameters::of_run(&spec.run_id).path(),
        log_group: config.worker_log_group.as_deref(),
        budget_seconds: made.budget_seconds(),
        run_session,
    });
    let image = resolved_image(params, spec, &config.region).await?;
    let root = ec2.root_volume(&image).await?;
    // A root volume smaller than the image's snapshot is refused by RunInstances
    // (InvalidBlockDeviceMapping) for every candidate alike: said once, naming the field.
    if let Some(least) = root.snapshot_gib.filter(|&g| g > spec.worker.volume_gib) {
        return Err(InvalidRunSpec {
            errors: vec![FieldError {
                field: "worker.volume_gib".into(),
                message: format!(
                    "{} GiB is smaller than the root snapshot of image {image} ({least} GiB); set at least {least}",
                    spec.worker.volume_gib
                ),
            }],
        }
        .into());
    }
    let kms_key = match &config.ebs_kms_key {
        Some(k) => Some(k.clone()),
        None => {
            launch::ebs_key(None, &ec2.ebs_default_key().await?).map_err(Error::LaunchFailed)?
        }
    };
    Ok(LaunchRequest {
        // Each candidate's, set by `first_available`.
        market: ephemera_core::Market::Spot,
        instance_type: String::new(),
        subnet: String::new(),
        client_token: String::new(),
        security_groups: spec.worker.security_groups.clone(),
        image: ephemera_core::image::ami(spec),
        volume_gib: spec.worker.volume_gib,
        // The image's own root device, which differs between AMIs (/dev/xvda on Amazon
        // Linux, /dev/sda1 on Ubuntu).
        root_device: root.device,
        instance_profile: spec
            .worker
            .instance_profile
            .clone()
            .or_else(|| config.instance_profile.clone()),
        kms_key,
        user_data_base64: base64::engine::general_purpose::STANDARD.encode(script),
        tags: launch::tags(spec, &input.execution, slot, attempt, deadline),
    })
}

/// `worker.image`, an AMI id or `resolve:ssm:<parameter>` read here.
async fn resolved_image<S: Params>(
    params: &S,
    spec: &RunSpec,
    region: &str,
) -> Result<String, Error> {
    let image = ephemera_core::image::ami(spec);
    match image.strip_prefix("resolve:ssm:") {
        Some(alias) => params.get(alias).await?.ok_or_else(|| {
            Error::LaunchFailed(format!(
                "worker.image: the SSM parameter {alias} does not exist in {region}"
            ))
        }),
        None => Ok(image),
    }
}

/// Launches the first of `candidates` (market × type × subnet, in the order `capacity.order`
/// ranked them) that EC2 accepts; the instance, its ClientToken, and the candidates refused
/// before it.
async fn first_available<E: Compute>(
    ec2: &E,
    base: &LaunchRequest,
    execution: &str,
    made: &Made<'_>,
    candidates: &[capacity::Candidate],
) -> Result<(InstanceView, String, Vec<Tried>), Error> {
    let (slot, attempt) = (made.slot, made.attempt);
    let mut tried = vec![];
    let mut closed: Vec<ephemera_core::Market> = vec![];
    // Quotas that refused: every other candidate drawing on one would be refused too.
    let mut full: Vec<&'static str> = vec![];
    let patience_until = std::time::Instant::now() + capacity::THROTTLE_PATIENCE;
    for c in candidates.iter().cloned() {
        let quota = vcpus::code_of(&c.instance_type, c.market);
        if closed.contains(&c.market) || quota.is_some_and(|q| full.contains(&q)) {
            continue;
        }
        let req = LaunchRequest {
            market: c.market,
            instance_type: c.instance_type.clone(),
            subnet: c.subnet.clone(),
            client_token: capacity::client_token_after_waits(
                execution,
                slot,
                attempt,
                &c,
                made.quota_waits,
            ),
            ..base.clone()
        };
        let e = match run_waiting_out_throttles(ec2, &req, patience_until).await {
            Ok(i) => {
                tracing::info!(instance = %i.id, market = c.market.as_str(), instance_type = %c.instance_type, subnet = %c.subnet, slot, attempt, "launched");
                return Ok((i, req.client_token, tried));
            }
            Err(e) => e,
        };
        match capacity::classify(&e.code, &e.message) {
            kind @ (LaunchErrorKind::Capacity
            | LaunchErrorKind::Limit
            | LaunchErrorKind::Quota
            | LaunchErrorKind::Market) => {
                tracing::warn!(code = %e.code, market = c.market.as_str(), instance_type = %c.instance_type, subnet = %c.subnet, "candidate unavailable; trying the next");
                if kind == LaunchErrorKind::Market {
                    closed.push(c.market);
                }
                if let (LaunchErrorKind::Quota, Some(q)) = (kind, quota) {
                    full.push(q);
                }
                // Cut: the kept refusal travels in the run document (crate::payload).
                tried.push(Tried {
                    market: c.market,
                    instance_type: c.instance_type,
                    subnet: c.subnet,
                    code: caps::cap(&e.code, caps::CODE_KEPT),
                    message: caps::cap(&e.message, caps::TRIED_MESSAGE_KEPT),
                });
            }
            // Ephemera.AwsError: the state retries the whole call with backoff, and the
            // ClientTokens make it ask EC2 for the same launches again.
            LaunchErrorKind::Transient => {
                return Err(Error::Aws {
                    service: "ec2",
                    operation: "RunInstances",
                    code: e.code,
                    message: caps::cap(&e.message, caps::TRIED_MESSAGE_KEPT),
                })
            }
            LaunchErrorKind::Fatal => {
                return Err(Error::LaunchFailed(format!(
                    "{} {} in {}: {}: {}",
                    c.market.as_str(),
                    c.instance_type,
                    c.subnet,
                    e.code,
                    e.message
                )))
            }
        }
    }
    Err(Error::CapacityUnavailable { tried })
}

/// RunInstances, waiting out EC2's throttle on this one request (the same ClientToken, so the
/// same launch) until `until`; then the throttle goes back to the state's Retry. Waiting here
/// keeps the candidates already refused refused: a Retry would walk them all again.
async fn run_waiting_out_throttles<E: Compute>(
    ec2: &E,
    req: &LaunchRequest,
    until: std::time::Instant,
) -> Result<InstanceView, crate::aws::RunError> {
    let mut n = 0;
    loop {
        match ec2.run(req).await {
            Err(e) if capacity::is_throttle(&e.code) => {
                let draw = ephemera_core::contract::ssm::token_poll_draw(&req.client_token, n);
                let wait = capacity::throttle_wait(n, draw);
                if std::time::Instant::now() + wait > until {
                    return Err(e);
                }
                tracing::info!(throttled = n + 1, wait_ms = wait.as_millis() as u64, instance_type = %req.instance_type, subnet = %req.subnet, "RunInstances throttled; waiting");
                tokio::time::sleep(wait).await;
                n += 1;
            }
            other => return other,
        }
    }
}

/// A relaunch comes only after `Worker.SpotInterrupted` (the ASL's `CanRelaunch`): when the
/// attempt before it was Spot, Spot took it back, and the ledger books that reclaim for the
/// ranking of later runs. Bookkeeping never stops a launch: a failure is logged.
async fn book_reclaim<L: Ledger>(
    ledger: Option<&L>,
    execution: &str,
    slot: u32,
    previous: Option<&WorkerState>,
) {
    let (Some(l), Some(prev)) = (ledger, previous.and_then(WorkerState::current)) else {
        return;
    };
    let Some(zone) = prev
        .availability_zone
        .clone()
        .filter(|_| prev.market == Market::Spot)
    else {
        return;
    };
    let placed = Placed {
        slot,
        attempt: prev.attempt,
        instance_type: prev.instance_type.clone(),
        zone,
        reclaimed: true,
    };
    match l.place(execution, &placed).await {
        Ok(()) => {
            tracing::info!(slot, attempt = prev.attempt, instance_type = %placed.instance_type, zone = %placed.zone, "Spot reclaim booked in the ledger")
        }
        Err(e) => tracing::error!(error = %e, "the Spot reclaim could not be booked in the ledger"),
    }
}

/// A Spot launch booked in the ledger: the reclaim rate's denominator.
async fn book_spot_launch<L: Ledger>(
    ledger: Option<&L>,
    execution: &str,
    slot: u32,
    attempt: u32,
    i: &InstanceView,
) {
    let (Some(l), Market::Spot, Some(zone)) = (ledger, i.market, i.availability_zone.clone())
    else {
        return;
    };
    let placed = Placed {
        slot,
        attempt,
        instance_type: i.instance_type.clone(),
        zone,
        reclaimed: false,
    };
    if let Err(e) = l.place(execution, &placed).await {
        tracing::error!(error = %e, "the Spot launch could not be booked in the ledger");
    }
}

/// What a ranking reads: EC2 (zones, Spot prices, placement scores), the run's prices, and the
/// ledger (its cache of what the run's first ranking read, and the recent runs' reclaims).
struct Ranker<'a, E, P, L> {
    ec2: &'a E,
    prices: &'a P,
    ledger: Option<&'a L>,
    spec: &'a RunSpec,
    input: &'a Input,
    region: &'a str,
    /// The month the run is booked in: its history reads it and the month before.
    month: &'a str,
    now: DateTime<Utc>,
    /// How long the ranking's reads may take ([`RANKING_READS_LIMIT`]).
    limit: Duration,
}

/// This launch's candidates, of the markets it may try, ranked as `capacity.order` says
/// ([`Ranker::rank`]).
async fn rank_candidates<E: Compute + SpotPlacement, P: PriceList, L: Ledger>(
    ec2: &E,
    prices: &P,
    ledger: Option<&L>,
    config: &Config,
    input: &Input,
    month: &str,
    now: DateTime<Utc>,
) -> Ranking {
    let spec = &input.run;
    let markets = capacity::markets_to_try(spec.worker.market, input.relaunch, &input.markets);
    Ranker {
        ec2,
        prices,
        ledger,
        spec,
        input,
        region: &config.region,
        month,
        now,
        limit: RANKING_READS_LIMIT,
    }
    .rank(&markets)
    .await
}

/// How long a `price-capacity` ranking may spend reading its facts (zones, Spot prices,
/// placement scores, the ledger's recent runs) before the candidates are tried as written.
/// A ranking is one part of launch-worker's 300 s (template.yaml), which must also hold the
/// launch across every candidate, the reservation and the run document; the reads are one
/// call per type and zone and one per type (a few seconds at most when AWS answers), so 20 s
/// is only reached by a service that is stalled or throttling hard, and a launch in the
/// written order is worth more than a better rank that comes too late.
const RANKING_READS_LIMIT: Duration = Duration::from_secs(20);

/// What a ranking read, owned (a read cut by its time limit leaves nothing half read).
struct Read {
    observed: Result<placement::Observed, String>,
    vcpus: HashMap<String, u32>,
    on_demand: Vec<cost::TypePrice>,
    history: placement::History,
}

impl Read {
    /// Nothing read, and why.
    fn none(why: String) -> Read {
        Read {
            observed: Err(why),
            vcpus: HashMap::new(),
            on_demand: vec![],
            history: placement::History::new(),
        }
    }

    fn facts(&self) -> placement::Facts<'_> {
        placement::Facts {
            observed: self.observed.as_ref().map_err(Clone::clone),
            vcpus: &self.vcpus,
            on_demand: &self.on_demand,
            history: &self.history,
        }
    }
}

/// How far back the Spot price now is read: AWS includes the price in force at the window's
/// start, so an hour holds it.
const SPOT_PRICE_WINDOW_HOURS: i64 = 1;

impl<E: Compute + SpotPlacement, P: PriceList, L: Ledger> Ranker<'_, E, P, L> {
    /// The candidates of `markets` in the order `capacity.order` tries them
    /// (`placement::rank`); as written, with the reason, when a fact could not be read, or
    /// not within [`RANKING_READS_LIMIT`].
    async fn rank(&self, markets: &[Market]) -> Ranking {
        let spec = self.spec;
        let written =
            capacity::candidates(&spec.worker.instance_types, &spec.worker.subnets, markets);
        if spec.capacity.order == CapacityOrder::AsWritten {
            return placement::rank(
                spec.capacity.order,
                &written,
                &Read::none(String::new()).facts(),
            );
        }
        let read = match tokio::time::timeout(self.limit, self.read()).await {
            Ok(read) => read,
            Err(_) => {
                tracing::warn!(
                    limit_seconds = self.limit.as_secs_f64(),
                    "the placement facts were not read in time; trying the candidates as written"
                );
                Read::none(format!("placement facts not read within {:?}", self.limit))
            }
        };
        placement::rank(spec.capacity.order, &written, &read.facts())
    }

    /// Every fact a `price-capacity` ranking weighs; what could not be read says why.
    async fn read(&self) -> Read {
        let types = &self.spec.worker.instance_types;
        let vcpus = match self.ec2.vcpus(types).await {
            Ok(v) => v,
            Err(e) => return Read::none(format!("ec2:DescribeInstanceTypes: {e}")),
        };
        let quotes = pricing::quotes_for(self.prices, &self.input.prices, types, self.region).await;
        let on_demand = pricing::type_prices(types, quotes);
        let observed = self.observed(&vcpus).await;
        let (history, observed) = match (self.history().await, observed) {
            (Ok(h), o) => (h, o),
            (Err(why), _) => (placement::History::new(), Err(why)),
        };
        Read {
            observed,
            vcpus,
            on_demand,
            history,
        }
    }

    /// What the run's first ranking read (kept in its ledger item), else read now: each
    /// subnet's zone, each type's Spot price in force in each zone, each type's placement
    /// scores (one configuration a type, the same `ephemera plan` asks, so a plan and its run
    /// count once against GetSpotPlacementScores' configurations of the day). Kept only when
    /// complete: a throttled score is asked again by the next worker rather than ruling the run.
    async fn observed(&self, vcpus: &HashMap<String, u32>) -> Result<placement::Observed, String> {
        let exec = &self.input.execution;
        if let Some(l) = self.ledger {
            match l.observed(exec).await {
                Ok(Some(kept)) => match serde_json::from_str(&kept) {
                    Ok(o) => return Ok(o),
                    Err(e) => {
                        tracing::warn!(error = %e, "the run's kept placement facts do not parse; reading them again")
                    }
                },
                Ok(None) => {}
                Err(e) => return Err(format!("the ledger's kept placement facts: {e}")),
            }
        }
        let spec = self.spec;
        let zones = self
            .ec2
            .subnet_zones(&spec.worker.subnets)
            .await
            .map_err(|e| format!("ec2:DescribeSubnets: {e}"))?;
        let mut names: Vec<&String> = zones.values().map(|z| &z.name).collect();
        names.sort();
        names.dedup();
        let from = self.now - chrono::Duration::hours(SPOT_PRICE_WINDOW_HOURS);
        let mut spot: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        let mut scores = BTreeMap::new();
        let mut complete = true;
        for t in &spec.worker.instance_types {
            for z in &names {
                match self.ec2.spot_prices(t, z, from, self.now).await {
                    Ok(points) => match placement::price_now(&points, self.now) {
                        Some(p) => {
                            spot.entry(t.clone()).or_default().insert((*z).clone(), p);
                        }
                        None => complete = false,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, instance_type = %t, zone = %z, "Spot price not read");
                        complete = false;
                    }
                }
            }
            let Some(v) = vcpus.get(t) else {
                complete = false;
                continue;
            };
            let asked = self
                .ec2
                .placement_scores(
                    std::slice::from_ref(t),
                    v.saturating_mul(spec.worker.count),
                    self.region,
                )
                .await
                .map_err(|r| r.to_string());
            complete &= asked.is_ok();
            scores.insert(t.clone(), asked);
        }
        let observed = placement::Observed {
            zones,
            spot,
            scores,
            read_at: self.now,
        };
        let (Some(l), true) = (self.ledger, complete) else {
            return Ok(observed);
        };
        let json = serde_json::to_string(&observed).map_err(|e| e.to_string())?;
        match l.keep_observed(exec, &json).await {
            // Another worker kept its own first: every worker ranks from the same facts.
            Ok(kept) => Ok(serde_json::from_str(&kept).unwrap_or(observed)),
            Err(e) => {
                tracing::warn!(error = %e, "the placement facts could not be kept for the run");
                Ok(observed)
            }
        }
    }

    /// The reclaims of the ledger's recent runs: the booked month's and the month before's
    /// (`placement::history` counts the most recent [`placement::RECENT_RUNS`]). Without a
    /// ledger, none.
    async fn history(&self) -> Result<placement::History, String> {
        let Some(l) = self.ledger else {
            return Ok(placement::History::new());
        };
        let mut entries = vec![];
        for m in [
            Some(self.month.to_string()),
            ledger::month_before(self.month),
        ]
        .into_iter()
        .flatten()
        {
            entries.extend(
                l.entries(&m)
                    .await
                    .map_err(|e| format!("the ledger's recent runs: {e}"))?,
            );
        }
        Ok(placement::history(entries.iter().map(|e| {
            placement::RunPlacements {
                execution: &e.execution,
                started_at: e.started_at,
                placed: &e.placements,
            }
        })))
    }
}

/// The number of the worker's attempt under way (0 before any).
fn last_attempt(w: &WorkerState) -> u32 {
    w.current().map_or(0, |a| a.attempt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::{
        AwsError, LedgerTable, Quote, RootVolume, RunError, ScoreRefusal, StatusChecks,
    };
    use ephemera_core::cost::PricePoint;
    use ephemera_core::placement::Zone;

    /// EC2 as a ranking reads it: its Spot price reads answer after `stall` (never, when
    /// `None`). A launch's calls are not a ranking's.
    struct Ec2 {
        stall: Option<Duration>,
    }

    impl Compute for Ec2 {
        async fn vcpus(&self, types: &[String]) -> Result<HashMap<String, u32>, AwsError> {
            Ok(types.iter().map(|t| (t.clone(), 16)).collect())
        }
        async fn instances(
            &self,
            _: &[(&str, &str)],
            _: &[InstanceState],
        ) -> Result<Vec<InstanceView>, AwsError> {
            unreachable!("a ranking lists no instance")
        }
        async fn describe(&self, _: &[String]) -> Result<Vec<InstanceView>, AwsError> {
            unreachable!("a ranking describes no instance")
        }
        async fn run(&self, _: &LaunchRequest) -> Result<InstanceView, RunError> {
            unreachable!("a ranking launches nothing")
        }
        async fn status_checks(&self, _: &str) -> Result<StatusChecks, AwsError> {
            unreachable!("a ranking reads no status")
        }
        async fn terminate(&self, _: &[String]) -> Result<(), AwsError> {
            unreachable!("a ranking terminates nothing")
        }
        async fn ebs_default_key(&self) -> Result<String, AwsError> {
            unreachable!("a ranking reads no key")
        }
        async fn root_volume(&self, _: &str) -> Result<RootVolume, AwsError> {
            unreachable!("a ranking reads no image")
        }
        async fn spot_prices(
            &self,
            instance_type: &str,
            _: &str,
            start: DateTime<Utc>,
            _: DateTime<Utc>,
        ) -> Result<Vec<PricePoint>, AwsError> {
            match self.stall {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending::<()>().await,
            }
            // c6g is the cheapest: a ranking that read it tries it first.
            let usd_per_hour = if instance_type.starts_with("c6g") {
                0.2
            } else {
                0.4
            };
            Ok(vec![PricePoint {
                at: start,
                usd_per_hour,
            }])
        }
    }

    impl SpotPlacement for Ec2 {
        async fn subnet_zones(
            &self,
            subnets: &[String],
        ) -> Result<BTreeMap<String, Zone>, AwsError> {
            Ok(subnets
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let zone = Zone {
                        name: format!("us-east-1{}", ['a', 'b', 'c'][i % 3]),
                        id: format!("use1-az{}", i + 1),
                    };
                    (s.clone(), zone)
                })
                .collect())
        }
        async fn placement_scores(
            &self,
            _: &[String],
            _: u32,
            _: &str,
        ) -> Result<BTreeMap<String, u8>, ScoreRefusal> {
            Ok([("use1-az1".to_string(), 9), ("use1-az2".to_string(), 9)].into())
        }
    }

    struct NoPriceList;

    impl PriceList for NoPriceList {
        async fn on_demand_hourly(&self, _: &str, _: &str) -> Option<Quote> {
            None
        }
    }

    async fn ranking(ec2: &Ec2, limit: Duration) -> Ranking {
        let mut run: serde_json::Value =
            serde_json::from_str(include_str!("../../../../events/runspec.json")).unwrap();
        run["capacity"]["order"] = "price-capacity".into();
        let input: Input = serde_json::from_value(serde_json::json!({
            "run": run,
            "execution": "arn:aws:states:us-east-1:123456789012:execution:ephemera:r1",
        }))
        .unwrap();
        Ranker {
            ec2,
            prices: &NoPriceList,
            ledger: None::<&LedgerTable>,
            spec: &input.run,
            input: &input,
            region: "us-east-1",
            month: "2026-12",
            now: Utc::now(),
            limit,
        }
        .rank(&[Market::Spot])
        .await
    }

    #[tokio::test]
    async fn reads_that_do_not_answer_within_the_limit_leave_the_written_order_and_say_so() {
        let ranking = ranking(&Ec2 { stall: None }, Duration::from_millis(50)).await;
        let choice = ranking.choice();
        assert_eq!(
            choice.fallback.as_deref(),
            Some("placement facts not read within 50ms"),
        );
        assert_eq!(ranking.candidates[0].instance_type, "c7g.4xlarge");
        assert!(
            choice
                .line()
                .starts_with("written order (placement facts not read"),
            "{}",
            choice.line()
        );
    }

    #[tokio::test]
    async fn reads_that_answer_within_the_limit_rank_by_price_and_capacity() {
        let ec2 = Ec2 {
            stall: Some(Duration::from_millis(1)),
        };
        let ranking = ranking(&ec2, RANKING_READS_LIMIT).await;
        assert_eq!(ranking.choice().fallback, None);
        assert_eq!(ranking.candidates[0].instance_type, "c6g.4xlarge");
    }
}

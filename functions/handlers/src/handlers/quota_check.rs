//! quota-check: does the run's cap cover its first attempts, and are there enough vCPUs in
//! every quota the run may draw on? If not, request an increase once and follow that request
//! until approved, denied or past the deadline. Room is judged beside what the stack's other
//! runs reserved (`ephemera_core::vcpus`), and once there is room the run reserves its own.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use ephemera_core::admission::{self, Deployment};
use ephemera_core::instance_state::InstanceState;
use ephemera_core::quota::{self, QuotaLine, QuotaState, QuotaVerdict, RequestProgress};
use ephemera_core::quota_request::{self, Bounds, Filing};
use ephemera_core::runspec::FieldError;
use ephemera_core::vcpus::{self, Claim, Held};
use ephemera_core::{budget, cost};
use ephemera_core::{InvalidRunSpec, RunSpec};
use serde::Deserialize;

use crate::aws::{pricing, Compute, PriceList, QuotaService, VcpuReservations};
use crate::error::Error;

#[derive(Debug, Deserialize)]
pub struct Input {
    pub run: serde_json::Value,
    /// `$$.Execution.Id`: whose vCPUs are reserved. Without it (a direct call) nothing is.
    #[serde(default)]
    pub execution: Option<String>,
    /// The previous poll's output; absent on the first check.
    #[serde(default)]
    pub quota: Option<QuotaState>,
}

/// How long quota-check reads prices before the rest are priced from the dated table: the
/// function's Timeout (template.yaml, held by tests/tests/template.rs) leaves room after it for
/// the EC2 and Service Quotas calls, which are few and unthrottled at a run's rate.
pub const PRICING_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// What the deployment supplies (environment of the function).
#[derive(Debug, Clone)]
pub struct Config {
    pub region: String,
    /// What the template grants the run: buckets, topics, the worker's profile.
    pub deployment: Deployment,
    /// The stack's bounds on increase requests (QuotaDenialCooloffHours, MaxQuotaRequestVcpus).
    pub requests: Bounds,
    /// The Price List's deadline within one invocation ([`PRICING_WITHIN`]).
    pub pricing_within: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            region: String::new(),
            deployment: Deployment::default(),
            requests: Bounds::default(),
            pricing_within: PRICING_WITHIN,
        }
    }
}

/// What quota-check reads: instance types and usage, the quotas, the candidates' prices, and the
/// vCPUs the stack's runs reserve (the ledger table, when the deployment has one).
pub struct Clients<'a, E, Q, P, R> {
    pub ec2: &'a E,
    pub quotas: &'a Q,
    pub prices: &'a P,
    pub reservations: Option<&'a R>,
}

pub async fn handle<E: Compute, Q: QuotaService, P: PriceList, R: VcpuReservations>(
    clients: Clients<'_, E, Q, P, R>,
    config: &Config,
    input: Input,
    now: DateTime<Utc>,
) -> Result<QuotaState, Error> {
    let Clients {
        ec2,
        quotas,
        prices,
        reservations,
    } = clients;
    let pricing_deadline = tokio::time::Instant::now() + config.pricing_within;
    // The one state that validates it; those after read it typed (tests/asl_states.rs).
    let spec = admission::admit(&input.run, &config.deployment)?;
    let types = &spec.worker.instance_types;
    let needs = needs(ec2, &spec, &config.region).await?;
    let prev = input.quota.as_ref();
    // The first admission, before any increase is asked for: a run its cap cannot cover would
    // otherwise wait days for vCPUs it may never use. Later polls do not judge again: the RunSpec
    // and the prices are the same.
    let quotes = match prev {
        None => Some(first_admission(prices, &spec, &config.region, pricing_deadline).await?),
        Some(_) => None,
    };
    let codes: Vec<&str> = needs.iter().map(|n| n.code.as_str()).collect();
    let (held, usage) = held_and_usage(ec2, reservations, &config.region, &codes).await?;
    let started_at = prev.map_or(now, |p| p.started_at);
    let polls = prev.map_or(0, |p| p.polls + 1);
    let deadline = started_at + Duration::seconds(spec.quota.max_wait_seconds as i64);
    let poll = Poll {
        spec: &spec,
        previous: prev,
        usage: &usage,
        bounds: &config.requests,
        held: &held,
        execution: input.execution.as_deref(),
        now,
    };
    let mut lines = vec![];
    for need in needs {
        lines.push(quota_line(quotas, &poll, need).await?);
    }

    let (verdict, reason) = quota::decide(&lines, spec.quota.request_increase, now, deadline);
    let (verdict, reason) = match (reservations, input.execution.as_deref()) {
        (Some(r), Some(execution)) => {
            let mine = Mine {
                region: &config.region,
                execution,
                held: &held,
            };
            reserve(r, &mine, &lines, verdict, reason).await?
        }
        _ => (verdict, reason),
    };
    let (verdict, reason, wait_seconds) = waited(&spec, verdict, reason, polls, now, deadline);
    tracing::info!(?verdict, %reason, wait_seconds, polls, "quota checked");
    // The run's prices, once: every launch budgets with them and the report bills with them.
    let (prices, markets) = match verdict {
        QuotaVerdict::Enough => (
            run_prices(prices, types, &config.region, quotes, pricing_deadline).await,
            quota::markets_with_room(&lines),
        ),
        _ => (vec![], vec![]),
    };
    Ok(QuotaState {
        verdict,
        reason,
        wait_seconds,
        polls,
        started_at,
        checked_at: now,
        deadline,
        quotas: lines,
        workers: (1..=spec.worker.count).collect(),
        prices,
        markets,
    })
}

/// The vCPUs each quota must hold for the run's workers, from the candidate types' vCPUs.
async fn needs<E: Compute>(
    ec2: &E,
    spec: &RunSpec,
    region: &str,
) -> Result<Vec<quota::QuotaNeed>, Error> {
    let per_type = offered_types(ec2, &spec.worker.instance_types, region).await?;
    let needs = quota::needs(
        &per_type,
        &spec.worker.market.markets(false),
        spec.worker.count,
    )
    .map_err(|m| InvalidRunSpec {
        errors: vec![FieldError {
            field: "worker.instance_types".into(),
            message: m,
        }],
    })?;
    Ok(needs)
}

/// The candidates' prices, read within `deadline`, once the run's cap is found to cover its
/// first attempts ([`admit`]).
async fn first_admission<P: PriceList>(
    prices: &P,
    spec: &RunSpec,
    region: &str,
    deadline: tokio::time::Instant,
) -> Result<Vec<Option<pricing::Quote>>, Error> {
    let types = &spec.worker.instance_types;
    let quotes = pricing::quotes_within(prices, &[], types, region, deadline).await;
    admit(spec, types, &quotes, region)?;
    Ok(quotes)
}

/// The run's prices: those the first admission read, or read now within `deadline`.
async fn run_prices<P: PriceList>(
    prices: &P,
    types: &[String],
    region: &str,
    quotes: Option<Vec<Option<pricing::Quote>>>,
    deadline: tokio::time::Instant,
) -> Vec<cost::TypePrice> {
    pricing::type_prices(
        types,
        match quotes {
            Some(q) => q,
            None => pricing::quotes_within(prices, &[], types, region, deadline).await,
        },
    )
}

/// The vCPUs other runs hold and the usage outside them, per quota code: the reservations, the
/// instances, the reservations again. A run that reserves after the second read launches after
/// the listing too, and one that gave its room back before the first had terminated its
/// instances first (`vcpus::holders`), so each instance listed is either counted in a
/// reservation or as usage outside, never both, never neither.
async fn held_and_usage<E: Compute, R: VcpuReservations>(
    ec2: &E,
    reservations: Option<&R>,
    region: &str,
    codes: &[&str],
) -> Result<(BTreeMap<String, Held>, BTreeMap<&'static str, u32>), Error> {
    let before = match reservations {
        Some(r) => r.held(region, codes).await?,
        None => BTreeMap::new(),
    };
    let active = active_instances(ec2).await?;
    let held = match reservations {
        Some(r) => r.held(region, codes).await?,
        None => BTreeMap::new(),
    };
    let usage = outside_usage(&active, &vcpus::holders(&before, &held));
    Ok((held, usage))
}

/// The verdict once the run's deadline is weighed (room other runs took first is waited for as
/// any room, until then), and how long to wait before the next look.
fn waited(
    spec: &RunSpec,
    verdict: QuotaVerdict,
    reason: String,
    polls: u32,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> (QuotaVerdict, String, u64) {
    let (verdict, reason) = match verdict {
        QuotaVerdict::Waiting if now >= deadline => (
            QuotaVerdict::DeadlinePassed,
            format!(
                "quota.max_wait_seconds passed at {}: {reason}",
                deadline.to_rfc3339()
            ),
        ),
        v => (v, reason),
    };
    let wait_seconds = match verdict {
        QuotaVerdict::Waiting => quota::next_wait(
            polls,
            spec.waits.quota_poll_min_seconds,
            spec.waits.quota_poll_max_seconds,
            now,
            deadline,
        ),
        _ => 0,
    };
    (verdict, reason, wait_seconds)
}

/// Every worker's first attempt at its worst case, and the run's own orchestration, within
/// `limits.budget_usd`; refused naming the worst case and its terms.
fn admit(
    spec: &RunSpec,
    types: &[String],
    quotes: &[Option<pricing::Quote>],
    region: &str,
) -> Result<(), Error> {
    let (dearest, quote) = pricing::dearest(types, quotes, region)?;
    let worst = budget::attempt_worst_case(spec, &dearest, quote.usd_per_hour, region);
    let cap = budget::Cap::of(spec, region);
    match budget::first_admission(spec, &worst, &cap) {
        Ok(first) => {
            tracing::info!(
                first_attempts_usd = first,
                attempt_usd = worst.usd,
                budget_usd = cap.budget_usd,
                "the run's first attempts fit its cap"
            );
            Ok(())
        }
        Err(refused) => Err(Error::OverBudget {
            estimate: refused.worst_case_usd,
            budget: cap.budget_usd,
            detail: refused.detail,
        }),
    }
}

/// Each candidate type with its vCPUs; a type the region does not offer is named.
async fn offered_types<E: Compute>(
    ec2: &E,
    types: &[String],
    region: &str,
) -> Result<Vec<(String, u32)>, Error> {
    let vcpus = ec2.vcpus(types).await?;
    let mut per_type = vec![];
    let mut errors = vec![];
    for (i, t) in types.iter().enumerate() {
        match vcpus.get(t) {
            Some(&v) => per_type.push((t.clone(), v)),
            None => errors.push(FieldError {
                field: format!("worker.instance_types[{i}]"),
                message: format!(
                    "'{t}' is not offered in region {region} (DescribeInstanceTypes: InvalidInstanceType); choose types the region offers (aws ec2 describe-instance-type-offerings)"
                ),
            }),
        }
    }
    if errors.is_empty() {
        Ok(per_type)
    } else {
        Err(InvalidRunSpec { errors }.into())
    }
}

/// The running and pending instances, with the vCPUs of their types.
struct Active {
    instances: Vec<crate::aws::InstanceView>,
    vcpus: std::collections::HashMap<String, u32>,
}

async fn active_instances<E: Compute>(ec2: &E) -> Result<Active, Error> {
    let instances = ec2
        .instances(&[], &[InstanceState::Pending, InstanceState::Running])
        .await?;
    let mut types: Vec<String> = instances.iter().map(|i| i.instance_type.clone()).collect();
    types.sort();
    types.dedup();
    let vcpus = ec2.vcpus(&types).await?;
    Ok(Active { instances, vcpus })
}

/// vCPUs of running and pending instances, counted in the quota each one draws on, except
/// those of runs holding a reservation there (inside it already).
fn outside_usage(active: &Active, held: &BTreeMap<String, Held>) -> BTreeMap<&'static str, u32> {
    vcpus::outside_usage(
        active.instances.iter().map(|i| {
            (
                i.instance_type.as_str(),
                i.market,
                i.tags
                    .get(ephemera_core::tags::EXECUTION)
                    .map(String::as_str),
            )
        }),
        &active.vcpus,
        held,
    )
}

/// Whose reservations: the run's execution, in the function's region.
struct Mine<'a> {
    region: &'a str,
    execution: &'a str,
    held: &'a BTreeMap<String, Held>,
}

/// Once the quotas have room, the run reserves its need in every quota of the markets it will
/// launch into, in one conditional transaction: when another run of the stack took the room
/// since it was read, the run waits and checks again. A run that does not start holds nothing
/// (a reservation left by a call whose answer was lost is given back).
async fn reserve<R: VcpuReservations>(
    r: &R,
    mine: &Mine<'_>,
    lines: &[QuotaLine],
    verdict: QuotaVerdict,
    reason: String,
) -> Result<(QuotaVerdict, String), Error> {
    let markets = match verdict {
        QuotaVerdict::Enough => quota::markets_with_room(lines),
        _ => vec![],
    };
    let claims: Vec<Claim> = lines
        .iter()
        .filter(|l| markets.contains(&l.market))
        .map(|l| Claim::new(&l.code, l.needed_vcpus, l.applied, l.usage_vcpus))
        .collect();
    let stale: Vec<&str> = mine
        .held
        .values()
        .filter(|h| h.own(mine.execution).is_some())
        .filter(|h| !claims.iter().any(|c| c.code == h.code))
        .map(|h| h.code.as_str())
        .collect();
    if !stale.is_empty() {
        r.release(mine.region, mine.execution, &stale).await?;
    }
    if claims.is_empty() {
        return Ok((verdict, reason));
    }
    if r.reserve(mine.region, mine.execution, &claims, mine.held)
        .await?
    {
        let list: Vec<String> = claims
            .iter()
            .map(|c| format!("{} {}", c.vcpus, c.code))
            .collect();
        tracing::info!(reserved = ?list, "vCPUs reserved");
        return Ok((verdict, format!("{reason}; reserved {}", list.join(", "))));
    }
    tracing::info!("another run of the stack reserved the room first; waiting");
    // Nothing is held while waiting (a reservation of a call whose answer was lost included).
    let own: Vec<&str> = mine
        .held
        .values()
        .filter(|h| h.own(mine.execution).is_some())
        .map(|h| h.code.as_str())
        .collect();
    if !own.is_empty() {
        r.release(mine.region, mine.execution, &own).await?;
    }
    Ok((
        QuotaVerdict::Waiting,
        format!(
            "{reason}; but another run of the stack reserved the room between the read and this run's reservation: checking again"
        ),
    ))
}

/// What one poll reads each quota against.
struct Poll<'a> {
    spec: &'a RunSpec,
    previous: Option<&'a QuotaState>,
    /// In use outside the stack's reservations.
    usage: &'a BTreeMap<&'static str, u32>,
    bounds: &'a Bounds,
    /// What the stack's runs hold in each quota.
    held: &'a BTreeMap<String, Held>,
    /// This run's execution: its own reservation is not another's.
    execution: Option<&'a str>,
    now: DateTime<Utc>,
}

/// One quota: its applied value against what is used and needed, its open request followed
/// (an approval raises the applied value read next) or an increase requested once.
async fn quota_line<Q: QuotaService>(
    quotas: &Q,
    poll: &Poll<'_>,
    need: quota::QuotaNeed,
) -> Result<QuotaLine, Error> {
    let previous = poll
        .previous
        .and_then(|p| p.quotas.iter().find(|l| l.code == need.code))
        .and_then(|l| l.request.clone());
    let followed = match previous {
        Some(r) if quota::request_progress(&r.status) == Ok(RequestProgress::Pending) => {
            Some(quotas.request_status(&r.id, poll.now).await?)
        }
        other => other,
    };
    let crate::aws::Applied {
        value: applied,
        is_default,
    } = quotas.applied(&need.code).await?;
    let used = poll.usage.get(need.code.as_str()).copied().unwrap_or(0);
    let reserved = poll
        .held
        .get(&need.code)
        .map_or(0, |h| h.others(poll.execution));
    // Requested only when the quota is short beside the usage outside the stack: the other
    // runs' reservations come back when they end (`quota::room`, which `ephemera plan` uses too).
    let room = quota::room(applied, used, reserved, need.needed_vcpus);
    let fits = room.fits;
    let (request, barred) = match followed {
        Some(r) => (Some(r), None),
        None if room.short && poll.spec.quota.request_increase => {
            match file_or_follow(quotas, poll, &need.code, room.desired).await? {
                Ok(r) => (Some(r), None),
                Err(why) => (None, Some(why)),
            }
        }
        None => (None, None),
    };
    Ok(QuotaLine {
        code: need.code,
        market: need.market,
        applied,
        is_default,
        usage_vcpus: used,
        reserved_vcpus: reserved,
        needed_vcpus: need.needed_vcpus,
        fits,
        request,
        barred,
    })
}

/// A short quota with no request of this run's: the account's history read first, an open
/// request (another run's, a person's, or this check's before a retry) followed, a new one
/// filed unless a recent denial or the stack's cap bars it (`Err` says why).
async fn file_or_follow<Q: QuotaService>(
    quotas: &Q,
    poll: &Poll<'_>,
    code: &str,
    desired: f64,
) -> Result<Result<quota::QuotaRequest, String>, Error> {
    let history = quotas.history(code, poll.now).await?;
    Ok(
        match quota_request::filing(&history, desired, poll.bounds, poll.now) {
            Filing::Follow(open) => {
                tracing::info!(code, request = %open.id, status = %open.status, "following the open quota request");
                Ok(open)
            }
            Filing::File(desired) => {
                tracing::info!(code, desired, "requesting a quota increase");
                Ok(quotas.request_increase(code, desired, poll.now).await?)
            }
            Filing::Barred(why) => {
                tracing::info!(code, %why, "no quota increase may be requested");
                Err(why)
            }
        },
    )
}

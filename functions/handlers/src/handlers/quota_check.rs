//! quota-check: are there enough vCPUs in every quota the run may draw on? If not, request an
//! increase once and follow that request until approved, denied or past the deadline.

use chrono::{DateTime, Duration, Utc};
use ephemera_core::deployment::Deployment;
use ephemera_core::instance_state::InstanceState;
use ephemera_core::quota::{self, QuotaLine, QuotaState, QuotaVerdict, RequestProgress};
use ephemera_core::runspec::FieldError;
use ephemera_core::InvalidRunSpec;
use serde::Deserialize;

use super::parse_spec;
use crate::aws::{pricing, Compute, PriceList, QuotaService};
use crate::error::Error;

#[derive(Debug, Deserialize)]
pub struct Input {
    pub run: serde_json::Value,
    /// The previous poll's output; absent on the first check.
    #[serde(default)]
    pub quota: Option<QuotaState>,
}

/// What the deployment supplies (environment of the function).
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub region: String,
    /// What the template grants the run: buckets, topics, the worker's profile.
    pub deployment: Deployment,
}

/// What quota-check reads: instance types and usage, the quotas, and the candidates' prices.
pub struct Clients<'a, E, Q, P> {
    pub ec2: &'a E,
    pub quotas: &'a Q,
    pub prices: &'a P,
}

pub async fn handle<E: Compute, Q: QuotaService, P: PriceList>(
    clients: Clients<'_, E, Q, P>,
    config: &Config,
    input: Input,
    now: DateTime<Utc>,
) -> Result<QuotaState, Error> {
    let Clients {
        ec2,
        quotas,
        prices,
    } = clients;
    let spec = parse_spec(&input.run)?;
    let region = &config.region;
    config.deployment.check(&spec)?;
    let types = &spec.worker.instance_types;
    let vcpus = ec2.vcpus(types).await?;
    let mut per_type = vec![];
    let mut errors = vec![];
    for (i, t) in types.iter().enumerate() {
        match vcpus.get(t) {
            Some(&v) => per_type.push((t.clone(), v)),
            None => errors.push(FieldError {
                field: format!("worker.instance_types[{i}]"),
                message: format!(
                    "'{t}' is not offered in region {} (DescribeInstanceTypes: InvalidInstanceType); choose types the region offers (aws ec2 describe-instance-type-offerings)",
                    region
                ),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(InvalidRunSpec { errors }.into());
    }
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

    // Usage: vCPUs of running and pending instances, counted in the quota each one draws on.
    let active = ec2
        .instances(&[], &[InstanceState::Pending, InstanceState::Running])
        .await?;
    let mut active_types: Vec<String> = active.iter().map(|i| i.instance_type.clone()).collect();
    active_types.sort();
    active_types.dedup();
    let active_vcpus = ec2.vcpus(&active_types).await?;
    let usage = quota::usage(
        active.iter().map(|i| (i.instance_type.as_str(), i.market)),
        &active_vcpus,
    );

    let prev = input.quota.as_ref();
    let started_at = prev.map_or(now, |p| p.started_at);
    let polls = prev.map_or(0, |p| p.polls + 1);
    let deadline = started_at + Duration::seconds(spec.quota.max_wait_seconds as i64);

    let mut lines = vec![];
    for need in needs {
        // Follow an open request first: an approval raises the applied value read next.
        let previous = prev
            .and_then(|p| p.quotas.iter().find(|l| l.code == need.code))
            .and_then(|l| l.request.clone());
        let followed = match previous {
            Some(r) if quota::request_progress(&r.status) == Ok(RequestProgress::Pending) => {
                Some(quotas.request_status(&r.id, now).await?)
            }
            other => other,
        };
        let crate::aws::Applied {
            value: applied,
            is_default,
        } = quotas.applied(&need.code).await?;
        let used = usage.get(need.code.as_str()).copied().unwrap_or(0);
        let fits = quota::fits(applied, used, need.needed_vcpus);
        let request = match followed {
            Some(r) => Some(r),
            None if !fits && spec.quota.request_increase => {
                let desired = quota::desired_value(applied, used, need.needed_vcpus);
                tracing::info!(code = %need.code, desired, "requesting a quota increase");
                Some(quotas.request_increase(&need.code, desired, now).await?)
            }
            None => None,
        };
        lines.push(QuotaLine {
            code: need.code,
            market: need.market,
            applied,
            is_default,
            usage_vcpus: used,
            needed_vcpus: need.needed_vcpus,
            fits,
            request,
        });
    }

    let (verdict, reason) = quota::decide(&lines, spec.quota.request_increase, now, deadline);
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
    tracing::info!(?verdict, %reason, wait_seconds, polls, "quota checked");
    // The run's prices, once: every launch budgets with them and the report bills with them.
    let (prices, markets) = match verdict {
        QuotaVerdict::Enough => (
            pricing::type_prices(types, pricing::quotes_for(prices, &[], types, region).await),
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

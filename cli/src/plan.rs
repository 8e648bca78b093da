//! `ephemera plan RUNSPEC`: what a run would do now, with nothing launched and nothing
//! requested. This file only reads (through the adapters the Lambdas use); the plan itself is
//! `ephemera_core::plan::assemble`, over the functions CheckQuota and LaunchWorker decide with.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use ephemera_aws::{
    pricing, Compute, Ledger, LedgerTable, QuotaService, SpotPlacement, VcpuReservations,
};
use ephemera_core::cost::PricePoint;
use ephemera_core::instance_state::InstanceState;
use ephemera_core::plan::{self, Facts, Month, QuotaFacts, TypeScores};
use ephemera_core::quota_request::Bounds;
use ephemera_core::{ledger, placement, quota, vcpus, RunSpec};

use crate::errors::{CliError, Op};

/// What `plan` was asked.
pub struct Ask<'a> {
    pub runspec: &'a Path,
    pub json: bool,
    /// The stack's ledger table (the month's spend and the other runs' vCPU reservations).
    pub ledger: Option<String>,
    /// The stack's MonthlyBudgetUsd.
    pub monthly_budget_usd: Option<f64>,
}

fn aws_failure(action: &'static str, e: ephemera_aws::AwsError) -> CliError {
    Op::any(action).failed(&e)
}

/// Reads the facts, assembles the plan, prints it; the exit code is its verdict's.
pub async fn command(conf: &aws_config::SdkConfig, ask: Ask<'_>) -> Result<u8, CliError> {
    let region = crate::aws::region(conf);
    let text = std::fs::read_to_string(ask.runspec)
        .map_err(|e| CliError::Usage(format!("{}: {e}", ask.runspec.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{}: not JSON: {e}", ask.runspec.display())))?;
    let plan = match ephemera_core::admission::parse(&value) {
        Err(invalid) => plan::refused(
            value["run_id"].as_str(),
            &region,
            invalid
                .errors
                .iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect(),
        ),
        Ok(spec) => {
            let aws = ephemera_aws::Aws::from_conf(conf);
            let ledger = ask.ledger.map(|table| LedgerTable {
                client: aws.dynamodb.clone(),
                table,
            });
            let facts = read(&aws, &spec, ledger.as_ref(), ask.monthly_budget_usd).await?;
            plan::assemble(&spec, &facts)
        }
    };
    if ask.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
    } else {
        print!("{}", plan::text(&plan));
    }
    Ok(plan.verdict.exit_code())
}

/// Everything the plan needs, read; nothing written, requested or launched.
pub async fn read(
    aws: &ephemera_aws::Aws,
    spec: &RunSpec,
    ledger: Option<&LedgerTable>,
    monthly_budget_usd: Option<f64>,
) -> Result<Facts, CliError> {
    let now = Utc::now();
    let region = aws.region.clone();
    let types = &spec.worker.instance_types;
    let vcpus_of = aws
        .ec2
        .vcpus(types)
        .await
        .map_err(|e| aws_failure("ec2:DescribeInstanceTypes", e))?;
    let quotas = read_quotas(aws, spec, ledger, &vcpus_of, now).await?;
    let quotes = pricing::quotes_for(&aws.pricing, &[], types, &region).await;
    let on_demand = pricing::type_prices(types, quotes);
    let zones = aws
        .ec2
        .subnet_zones(&spec.worker.subnets)
        .await
        .map_err(|e| aws_failure("ec2:DescribeSubnets", e))?;
    let spot = read_spot(aws, types, &vcpus_of, &zones, now).await;
    let scores = read_scores(aws, spec, &vcpus_of).await;
    let month = match (ledger, monthly_budget_usd) {
        (Some(l), Some(budget_usd)) => {
            let month = ledger::month_of(now);
            let entries = l
                .entries(&month)
                .await
                .map_err(|e| aws_failure("dynamodb:Query", e))?;
            Some(Month {
                month,
                budget_usd,
                entries,
            })
        }
        _ => None,
    };
    let history = match ledger {
        Some(l) => read_history(l, now).await?,
        None => placement::History::new(),
    };
    Ok(Facts {
        region,
        now,
        vcpus: vcpus_of,
        quotas,
        // The stack's QuotaDenialCooloffHours and MaxQuotaRequestVcpus at their template
        // defaults: the CLI cannot read a deployed function's environment.
        bounds: Bounds::default(),
        on_demand,
        zones,
        spot,
        scores,
        month,
        history,
    })
}

/// The quotas the run draws on, with the usage and the reservations as CheckQuota reads them.
async fn read_quotas(
    aws: &ephemera_aws::Aws,
    spec: &RunSpec,
    ledger: Option<&LedgerTable>,
    vcpus_of: &HashMap<String, u32>,
    now: DateTime<Utc>,
) -> Result<BTreeMap<String, QuotaFacts>, CliError> {
    let per_type: Vec<(String, u32)> = spec
        .worker
        .instance_types
        .iter()
        .filter_map(|t| vcpus_of.get(t).map(|v| (t.clone(), *v)))
        .collect();
    let needs = quota::needs(
        &per_type,
        &spec.worker.market.markets(false),
        spec.worker.count,
    )
    .unwrap_or_default();
    let codes: Vec<&str> = needs.iter().map(|n| n.code.as_str()).collect();
    let held = match ledger {
        Some(l) => l
            .held(&aws.region, &codes)
            .await
            .map_err(|e| aws_failure("dynamodb:GetItem", e))?,
        None => BTreeMap::new(),
    };
    let active = aws
        .ec2
        .instances(&[], &[InstanceState::Pending, InstanceState::Running])
        .await
        .map_err(|e| aws_failure("ec2:DescribeInstances", e))?;
    let mut active_types: Vec<String> = active.iter().map(|i| i.instance_type.clone()).collect();
    active_types.sort();
    active_types.dedup();
    let active_vcpus = aws
        .ec2
        .vcpus(&active_types)
        .await
        .map_err(|e| aws_failure("ec2:DescribeInstanceTypes", e))?;
    let usage = vcpus::outside_usage(
        active.iter().map(|i| {
            (
                i.instance_type.as_str(),
                i.market,
                i.tags
                    .get(ephemera_core::tags::EXECUTION)
                    .map(String::as_str),
            )
        }),
        &active_vcpus,
        &held,
    );
    let mut quotas = BTreeMap::new();
    for code in &codes {
        let applied = aws
            .quotas
            .applied(code)
            .await
            .map_err(|e| aws_failure("servicequotas:GetServiceQuota", e))?;
        let history = aws.quotas.history(code, now).await.map_err(|e| {
            aws_failure(
                "servicequotas:ListRequestedServiceQuotaChangeHistoryByQuota",
                e,
            )
        })?;
        quotas.insert(
            code.to_string(),
            QuotaFacts {
                applied: applied.value,
                is_default: applied.is_default,
                usage_vcpus: usage.get(code).copied().unwrap_or(0),
                reserved_vcpus: held.get(*code).map_or(0, |h| h.others(None)),
                history,
            },
        );
    }
    Ok(quotas)
}

/// Spot prices over the last days, per type and zone; a history EC2 will not give is left out
/// (the candidate shows no range), never a failed plan.
async fn read_spot(
    aws: &ephemera_aws::Aws,
    types: &[String],
    vcpus_of: &HashMap<String, u32>,
    zones: &BTreeMap<String, placement::Zone>,
    now: DateTime<Utc>,
) -> BTreeMap<(String, String), Vec<PricePoint>> {
    let mut spot = BTreeMap::new();
    let from = now - Duration::days(plan::SPOT_HISTORY_DAYS);
    let mut zone_names: Vec<String> = zones.values().map(|z| z.name.clone()).collect();
    zone_names.sort();
    zone_names.dedup();
    for t in types.iter().filter(|t| vcpus_of.contains_key(*t)) {
        for z in &zone_names {
            if let Ok(points) = aws.ec2.spot_prices(t, z, from, now).await {
                spot.insert((t.clone(), z.clone()), points);
            }
        }
    }
    spot
}

/// One configuration a type (its vCPUs for every worker, one zone): a refusal (the rate, the
/// day's configurations, a role without the permission) leaves that type's score unknown.
async fn read_scores(
    aws: &ephemera_aws::Aws,
    spec: &RunSpec,
    vcpus_of: &HashMap<String, u32>,
) -> BTreeMap<String, TypeScores> {
    let mut scores = BTreeMap::new();
    for t in &spec.worker.instance_types {
        let Some(v) = vcpus_of.get(t) else { continue };
        let asked = aws
            .ec2
            .placement_scores(
                std::slice::from_ref(t),
                v.saturating_mul(spec.worker.count),
                &aws.region,
            )
            .await
            .map_err(|r| r.to_string());
        scores.insert(t.clone(), asked);
    }
    scores
}

/// The reclaims of recent runs, as LaunchWorker reads them: this month's and the month
/// before's (the month a run now would be booked in).
async fn read_history(l: &LedgerTable, now: DateTime<Utc>) -> Result<placement::History, CliError> {
    let this = ledger::month_of(now);
    let mut entries = vec![];
    for m in [Some(this.clone()), ledger::month_before(&this)]
        .into_iter()
        .flatten()
    {
        entries.extend(
            l.entries(&m)
                .await
                .map_err(|e| aws_failure("dynamodb:Query", e))?,
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

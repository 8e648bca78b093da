//! `ephemera plan`: what a run would do now, with nothing launched and nothing requested. The
//! CLI reads the facts (types, quotas, reservations, prices, placement scores, the ledger) and
//! this module assembles them with the functions CheckQuota and LaunchWorker decide with —
//! `quota::room`, `quota_request::filing`, `quota::decide`, `quota::markets_with_room`,
//! `capacity::markets_to_try`, `capacity::candidates`, `placement::rank`,
//! `budget::attempt_worst_case`,
//! `budget::first_admission`, `ledger::judge`, `admission::history_events`, `payload::bound` —
//! never a copy of them, so that the plan and the run cannot disagree
//! (`cli/tests/plan.rs` holds them to each other).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::budget::{self, AttemptWorstCase};
use crate::capacity;
use crate::cost::{PricePoint, TypePrice};
use crate::ledger::{self, Entry};
use crate::market::Market;
use crate::placement::{self, Ranking};
use crate::quota::{self, QuotaLine, QuotaRequest, QuotaVerdict};
use crate::quota_request::{self, Bounds, Filing, PastRequest};
use crate::runspec::RunSpec;
use crate::{admission, payload};

/// The id a request the plan would file stands under while `quota::decide` judges it: the check
/// files one and then waits on it, so the plan judges as if it had.
const WOULD_REQUEST: &str = "that CheckQuota would file";

/// One quota as read now.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaFacts {
    /// The quota's value in vCPUs (GetServiceQuota, else the AWS default).
    pub applied: f64,
    /// True when the account has no applied value and the AWS default was used.
    pub is_default: bool,
    /// vCPUs in use outside the stack's reservations (`vcpus::outside_usage`).
    pub usage_vcpus: u32,
    /// vCPUs the stack's other runs hold.
    pub reserved_vcpus: u32,
    /// The quota's increase requests (ListRequestedServiceQuotaChangeHistoryByQuota).
    pub history: Vec<PastRequest>,
}

pub use crate::placement::{TypeScores, Zone};

/// The month's budget and the ledger's entries of the month.
#[derive(Debug, Clone, PartialEq)]
pub struct Month {
    /// `YYYY-MM`.
    pub month: String,
    /// The stack's monthly budget (`MonthlyBudgetUsd`), in USD.
    pub budget_usd: f64,
    /// The ledger's entries of the month: every run's reservation or cost.
    pub entries: Vec<Entry>,
}

/// Everything the plan is assembled from, as read from AWS.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The region the run would go to.
    pub region: String,
    /// When the facts were read.
    pub now: DateTime<Utc>,
    /// DescribeInstanceTypes: each candidate type the region offers, with its vCPUs.
    pub vcpus: HashMap<String, u32>,
    /// By quota code; a quota the run needs and this lacks is a problem.
    pub quotas: BTreeMap<String, QuotaFacts>,
    /// The stack's bounds on increase requests.
    pub bounds: Bounds,
    /// The candidates' On-Demand prices (Price List API, else the dated table).
    pub on_demand: Vec<TypePrice>,
    /// DescribeSubnets: each subnet's zone; a subnet missing does not exist in the region.
    pub zones: BTreeMap<String, Zone>,
    /// The Spot price history of (type, zone name) over [`SPOT_HISTORY_DAYS`].
    pub spot: BTreeMap<(String, String), Vec<PricePoint>>,
    /// GetSpotPlacementScores per type (SingleAvailabilityZone, the run's vCPUs as target).
    pub scores: BTreeMap<String, TypeScores>,
    /// The ledger's month, when the stack's ledger was read.
    pub month: Option<Month>,
    /// The ledger's reclaims of recent runs (`placement::history`; empty without the ledger).
    pub history: placement::History,
}

impl Facts {
    /// What LaunchWorker reads from EC2 for its ranking, from what the plan read: each
    /// subnet's zone, the Spot price in force now of each type in each zone, the scores.
    pub fn observed(&self) -> placement::Observed {
        let mut spot: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for ((t, zone), history) in &self.spot {
            if let Some(p) = placement::price_now(history, self.now) {
                spot.entry(t.clone()).or_default().insert(zone.clone(), p);
            }
        }
        placement::Observed {
            zones: self.zones.clone(),
            spot,
            scores: self.scores.clone(),
            read_at: self.now,
        }
    }
}

/// How far back the Spot price range looks.
pub const SPOT_HISTORY_DAYS: i64 = 7;

/// What the run would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// CheckQuota would let it through and LaunchWorker would launch its first candidate.
    Start,
    /// CheckQuota would wait for vCPU quota (an increase requested or followed, or the stack's
    /// other runs to give room back).
    Wait,
    /// The run would be refused; `problems` names every reason.
    Refuse,
}

impl Verdict {
    /// `ephemera plan`'s exit code (docs/cli.md): 0 start, 3 wait, 4 refuse.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Start => 0,
            Verdict::Wait => 3,
            Verdict::Refuse => 4,
        }
    }

    /// The verdict as `ephemera plan` prints it ("would start now", …).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Start => "would start now",
            Verdict::Wait => "would wait for quota",
            Verdict::Refuse => "would be refused",
        }
    }
}

/// One quota the run draws on: CheckQuota's line, and the increase it would request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaPlan {
    /// CheckQuota's line for the quota: its value, usage, reservations, need and request.
    #[serde(flatten)]
    pub line: QuotaLine,
    /// The desired value CheckQuota would file a request for (none when it fits, when a request
    /// is open and followed, or when one is barred).
    pub would_request: Option<f64>,
}

/// A Spot price now and its range over the last days.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpotRange {
    /// The price in force now, in USD per hour.
    pub now_usd_per_hour: f64,
    /// The lowest price over the last [`SPOT_HISTORY_DAYS`], in USD per hour.
    pub min_usd_per_hour: f64,
    /// The highest price over the last [`SPOT_HISTORY_DAYS`], in USD per hour.
    pub max_usd_per_hour: f64,
}

/// One candidate (market × type × subnet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidatePlan {
    /// Its place in the order the first launch tries (1 first); None: the launch would not try
    /// it (its market has no room).
    pub order: Option<usize>,
    /// Spot or On-Demand.
    pub market: Market,
    /// The EC2 instance type (one of `worker.instance_types`).
    pub instance_type: String,
    /// The subnet id (one of `worker.subnets`).
    pub subnet: String,
    /// The subnet's zone; None when DescribeSubnets did not find the subnet.
    pub zone: Option<Zone>,
    /// The type's vCPUs; None when the region does not offer it.
    pub vcpus: Option<u32>,
    /// Spot only: 1–10, None when unknown (`score_note` says why).
    pub score: Option<u8>,
    /// Why the score is unknown (or that On-Demand has none).
    pub score_note: Option<String>,
    /// Spot only: the price in the subnet's zone now and over the last days.
    pub spot: Option<SpotRange>,
    /// The type's On-Demand price, in USD per hour; None when no source knows it.
    pub on_demand_usd_per_hour: Option<f64>,
    /// The vCPU quota it draws on and whether that has room.
    pub quota_code: Option<String>,
    /// Whether that quota has room for the run; None when it was not read.
    pub quota_fits: Option<bool>,
    /// Why it is where it is in the order, or why the first launch would not try it.
    pub why: String,
}

/// The money: what the run is expected to cost, its worst case against its cap, the month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostPlan {
    /// Every worker's first attempt at the first candidate's price (Spot's now, else
    /// On-Demand's) for its whole limits, with the run's orchestration.
    pub expected_usd: Option<f64>,
    /// Every worker's first attempt at its worst case (the dearest candidate On-Demand) and the
    /// run's orchestration: CheckQuota's admission (`budget::first_admission`).
    pub worst_case_usd: Option<f64>,
    /// One attempt's worst case and its terms.
    pub attempt: Option<AttemptWorstCase>,
    /// The run's cap, `limits.budget_usd`, in USD.
    pub budget_usd: f64,
    /// The month against the stack's monthly budget; None when the ledger was not read.
    pub month: Option<MonthPlan>,
}

/// The month's spending (the ledger) against the stack's monthly budget, with this run's first
/// attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonthPlan {
    /// `YYYY-MM`.
    pub month: String,
    /// The stack's monthly budget (`MonthlyBudgetUsd`), in USD.
    pub budget_usd: f64,
    /// Spent or reserved by the month's runs (the ledger).
    pub spent_usd: f64,
    /// What the month's budget has left, in USD.
    pub remainder_usd: f64,
    /// Whether the run's first attempts fit what is left (`ledger::judge`).
    pub fits: bool,
}

/// The bounds Step Functions sets, against the run's most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundsPlan {
    /// The most execution history events the run can make (`admission::history_events`).
    pub history_events: u64,
    /// The most allowed: Step Functions' 25,000 less a margin (`admission::MAX_HISTORY_EVENTS`).
    pub max_history_events: u64,
    /// The run document at its fullest, in bytes (`payload::bound`).
    pub document_bytes: usize,
    /// Step Functions' quota on a state's input or output, in bytes (256 KiB).
    pub document_limit_bytes: usize,
}

/// `ephemera plan`'s answer (its `--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The RunSpec's `run_id` (empty when it did not parse).
    pub run_id: String,
    /// The region the plan was made for.
    pub region: String,
    /// What the run would do.
    pub verdict: Verdict,
    /// CheckQuota's reason (`quota::decide`).
    pub quota_reason: String,
    /// Every reason the run would be refused (empty unless refused).
    pub problems: Vec<String>,
    /// What the run would wait for (when it would wait).
    pub waiting_for: Option<String>,
    /// Each vCPU quota the run draws on, as CheckQuota would judge it.
    pub quotas: Vec<QuotaPlan>,
    /// The markets the first launch would try, in order.
    pub markets: Vec<Market>,
    /// The rule the order follows.
    pub order_rule: String,
    /// LaunchWorker's ranking of the candidates it tries (`placement::rank`), with its facts.
    pub ranking: Option<Ranking>,
    /// Every candidate (market × type × subnet), tried or not.
    pub candidates: Vec<CandidatePlan>,
    /// What the run would cost against its cap and the month's budget.
    pub cost: CostPlan,
    /// The run's history and document sizes against Step Functions' limits.
    pub bounds: BoundsPlan,
}

impl Plan {
    /// The candidate the run would launch first, when it would start.
    pub fn first(&self) -> Option<&CandidatePlan> {
        self.candidates.iter().find(|c| c.order == Some(1))
    }
}

/// The plan of a RunSpec that parsed, from the facts.
pub fn assemble(spec: &RunSpec, facts: &Facts) -> Plan {
    let mut problems: Vec<String> = vec![];
    let types = &spec.worker.instance_types;
    let needs = needs(spec, facts, &mut problems);
    // CheckQuota's admission against the cap, before any increase.
    let cap = budget::Cap::of(spec, &facts.region);
    let admitted = first_admission(spec, facts, &cap, &mut problems);
    let deadline = facts.now + Duration::seconds(spec.quota.max_wait_seconds as i64);
    let quotas = quota_plans(spec, facts, needs, &mut problems);
    let lines: Vec<QuotaLine> = quotas.iter().map(|q| q.line.clone()).collect();
    let (quota_verdict, quota_reason) = judge_quotas(spec, facts, &lines, deadline, &mut problems);
    let with_room = match quota_verdict {
        QuotaVerdict::Enough => quota::markets_with_room(&lines),
        _ => vec![],
    };

    // LaunchWorker's order: the markets with room, then types × subnets ranked as
    // capacity.order says, by the same function from the same facts.
    let markets = capacity::markets_to_try(spec.worker.market, false, &with_room);
    let written = capacity::candidates(types, &spec.worker.subnets, &markets);
    let ranking = rank(spec, facts, &written);
    let all = capacity::candidates(
        types,
        &spec.worker.subnets,
        &spec.worker.market.markets(false),
    );
    let candidates: Vec<CandidatePlan> = all
        .iter()
        .map(|c| candidate(spec, facts, &lines, &ranking, &markets, c))
        .collect();

    let expected_usd = expected_usd(spec, facts, &candidates, &cap);
    let first_usd = admitted.first_usd;
    let month = month_plan(facts, first_usd, &mut problems);

    let bounds = bounds(spec);

    let verdict = if !problems.is_empty() {
        Verdict::Refuse
    } else if quota_verdict == QuotaVerdict::Waiting {
        Verdict::Wait
    } else {
        Verdict::Start
    };
    let waiting_for = (verdict == Verdict::Wait).then(|| waiting(&quotas, &quota_reason));
    Plan {
        run_id: spec.run_id.clone(),
        region: facts.region.clone(),
        verdict,
        quota_reason,
        problems,
        waiting_for,
        quotas,
        markets,
        order_rule: order_rule(&ranking),
        ranking: Some(ranking),
        candidates,
        cost: CostPlan {
            expected_usd,
            worst_case_usd: admitted.worst_case_usd,
            attempt: admitted.worst,
            budget_usd: cap.budget_usd,
            month,
        },
        bounds,
    }
}

/// CheckQuota's verdict on the quotas and its reason (`quota::decide`); a verdict that refuses
/// the run is one of its problems.
fn judge_quotas(
    spec: &RunSpec,
    facts: &Facts,
    lines: &[QuotaLine],
    deadline: DateTime<Utc>,
    problems: &mut Vec<String>,
) -> (QuotaVerdict, String) {
    let (quota_verdict, quota_reason) = if lines.is_empty() && !problems.is_empty() {
        (
            QuotaVerdict::Denied,
            "the quotas were not judged".to_string(),
        )
    } else {
        quota::decide(lines, spec.quota.request_increase, facts.now, deadline)
    };
    if matches!(
        quota_verdict,
        QuotaVerdict::Denied | QuotaVerdict::DeadlinePassed
    ) {
        problems.push(format!("vCPU quota: {quota_reason}"));
    }
    (quota_verdict, quota_reason)
}

/// The `written` candidates as LaunchWorker ranks them (`placement::rank`), from the facts
/// read.
fn rank(spec: &RunSpec, facts: &Facts, written: &[capacity::Candidate]) -> Ranking {
    let observed = facts.observed();
    placement::rank(
        spec.capacity.order,
        written,
        &placement::Facts {
            observed: Ok(&observed),
            vcpus: &facts.vcpus,
            on_demand: &facts.on_demand,
            history: &facts.history,
        },
    )
}

/// The run's history and document sizes against Step Functions' limits.
fn bounds(spec: &RunSpec) -> BoundsPlan {
    let bound = payload::bound(spec);
    BoundsPlan {
        history_events: admission::history_events(spec),
        max_history_events: admission::MAX_HISTORY_EVENTS,
        document_bytes: bound.document,
        document_limit_bytes: payload::STATE_QUOTA_BYTES,
    }
}

/// The check's first step (quota_check::offered_types): every type offered and every subnet
/// there, each one that is not a problem named; then the vCPUs each quota must hold.
fn needs(spec: &RunSpec, facts: &Facts, problems: &mut Vec<String>) -> Vec<quota::QuotaNeed> {
    let types = &spec.worker.instance_types;
    let mut per_type = vec![];
    for (i, t) in types.iter().enumerate() {
        match facts.vcpus.get(t) {
            Some(&v) => per_type.push((t.clone(), v)),
            None => problems.push(format!(
                "worker.instance_types[{i}]: '{t}' is not offered in region {} (DescribeInstanceTypes: InvalidInstanceType)",
                facts.region
            )),
        }
    }
    for (i, s) in spec.worker.subnets.iter().enumerate() {
        if !facts.zones.contains_key(s) {
            problems.push(format!(
                "worker.subnets[{i}]: '{s}' does not exist in region {} (DescribeSubnets); every launch into it would fail",
                facts.region
            ));
        }
    }
    match quota::needs(
        &per_type,
        &spec.worker.market.markets(false),
        spec.worker.count,
    ) {
        Ok(n) => n,
        Err(m) => {
            problems.push(format!("worker.instance_types: {m}"));
            vec![]
        }
    }
}

/// CheckQuota's admission against the cap, before any increase: every worker's first attempt
/// at the dearest candidate's On-Demand price.
struct Admitted {
    /// The attempt's worst case at the dearest candidate (None when a type is unpriced).
    worst: Option<AttemptWorstCase>,
    /// Every worker's first attempt and the run's orchestration, admitted or not.
    worst_case_usd: Option<f64>,
    /// The same, when the cap admits it.
    first_usd: Option<f64>,
}

fn first_admission(
    spec: &RunSpec,
    facts: &Facts,
    cap: &budget::Cap,
    problems: &mut Vec<String>,
) -> Admitted {
    let types = &spec.worker.instance_types;
    let price_of = |t: &str| {
        facts
            .on_demand
            .iter()
            .find(|p| p.instance_type == t)
            .map(|p| p.usd_per_hour)
    };
    let mut dearest: Option<(&String, f64)> = None;
    for (i, t) in types.iter().enumerate() {
        match price_of(t) {
            Some(p) => {
                if dearest.is_none_or(|(_, d)| p > d) {
                    dearest = Some((t, p));
                }
            }
            None => problems.push(format!(
                "worker.instance_types[{i}]: no On-Demand price is known for {t} in {} (Price List API or the dated table), so limits.budget_usd cannot be kept",
                facts.region
            )),
        }
    }
    let all_priced = types.iter().all(|t| price_of(t).is_some());
    let worst = dearest
        .filter(|_| all_priced)
        .map(|(t, p)| budget::attempt_worst_case(spec, t, p, &facts.region));
    let mut worst_case_usd = None;
    let mut first_usd = None;
    if let Some(w) = &worst {
        match budget::first_admission(spec, w, cap) {
            Ok(first) => {
                worst_case_usd = Some(first);
                first_usd = Some(first);
            }
            Err(refused) => {
                worst_case_usd = Some(refused.worst_case_usd);
                problems.push(format!(
                    "limits.budget_usd: ${:.2} cannot cover every worker's first attempt, ${:.4} ({}); CheckQuota would refuse the run (Ephemera.OverBudget)",
                    cap.budget_usd, refused.worst_case_usd, refused.detail
                ));
            }
        }
    }

    Admitted {
        worst,
        worst_case_usd,
        first_usd,
    }
}

/// The quotas, as the check judges them, with nothing requested: each one's room, and the
/// increase a run now would follow or file (or why none may be filed).
fn quota_plans(
    spec: &RunSpec,
    facts: &Facts,
    needs: Vec<quota::QuotaNeed>,
    problems: &mut Vec<String>,
) -> Vec<QuotaPlan> {
    let mut quotas = vec![];
    for need in needs {
        let Some(q) = facts.quotas.get(&need.code) else {
            problems.push(format!(
                "the vCPU quota {} ({}) could not be read",
                need.code,
                need.market.as_str()
            ));
            continue;
        };
        let room = quota::room(
            q.applied,
            q.usage_vcpus,
            q.reserved_vcpus,
            need.needed_vcpus,
        );
        let (request, barred, would_request) = if room.short && spec.quota.request_increase {
            match quota_request::filing(&q.history, room.desired, &facts.bounds, facts.now) {
                Filing::Follow(open) => (Some(open), None, None),
                Filing::File(desired) => (
                    Some(QuotaRequest {
                        id: WOULD_REQUEST.into(),
                        case_id: None,
                        desired,
                        status: "PENDING".into(),
                        requested_at: facts.now,
                    }),
                    None,
                    Some(desired),
                ),
                Filing::Barred(why) => (None, Some(why), None),
            }
        } else {
            (None, None, None)
        };
        quotas.push(QuotaPlan {
            line: QuotaLine {
                code: need.code,
                market: need.market,
                applied: q.applied,
                is_default: q.is_default,
                usage_vcpus: q.usage_vcpus,
                reserved_vcpus: q.reserved_vcpus,
                needed_vcpus: need.needed_vcpus,
                fits: room.fits,
                request,
                barred,
            },
            would_request,
        });
    }
    quotas
}

/// The expected cost: the first candidate's price for the attempt's whole limits, every worker,
/// and the run's orchestration.
fn expected_usd(
    spec: &RunSpec,
    facts: &Facts,
    candidates: &[CandidatePlan],
    cap: &budget::Cap,
) -> Option<f64> {
    let first = candidates.iter().find(|c| c.order == Some(1));
    first.and_then(|c| {
        let price = match c.market {
            Market::Spot => c
                .spot
                .map(|s| s.now_usd_per_hour)
                .or(c.on_demand_usd_per_hour),
            Market::OnDemand => c.on_demand_usd_per_hour,
        }?;
        let one = budget::attempt_worst_case(spec, &c.instance_type, price, &facts.region);
        Some(crate::cost::usd(
            f64::from(spec.worker.count) * one.usd + cap.overhead_usd,
        ))
    })
}

/// The month: LaunchWorker's guard over the ledger, with the run's first attempts (`first_usd`).
fn month_plan(
    facts: &Facts,
    first_usd: Option<f64>,
    problems: &mut Vec<String>,
) -> Option<MonthPlan> {
    let month = facts.month.as_ref().map(|m| {
        let spent = ledger::month_to_date(&m.entries);
        let this_run = first_usd.unwrap_or(0.0);
        let fits = matches!(
            ledger::judge(&m.entries, "ephemera plan", 1, this_run, m.budget_usd),
            ledger::Verdict::Within { .. }
        );
        MonthPlan {
            month: m.month.clone(),
            budget_usd: m.budget_usd,
            spent_usd: crate::cost::usd(spent),
            remainder_usd: crate::cost::usd(m.budget_usd - spent),
            fits,
        }
    });
    if let Some(m) = month.as_ref().filter(|m| !m.fits) {
        problems.push(format!(
            "the month's budget: ${:.2} of ${:.2} is spent or reserved in {}, ${:.2} left, and the run's first attempts hold ${:.4}: LaunchWorker would refuse the launch (Ephemera.OverMonthlyBudget)",
            m.spent_usd,
            m.budget_usd,
            m.month,
            m.remainder_usd,
            first_usd.unwrap_or(0.0)
        ));
    }

    month
}

/// The order as written (`capacity::candidates`).
const ORDER_RULE: &str = "as written: the markets with quota room (Spot before On-Demand under spot-then-on-demand), then worker.instance_types in the RunSpec's order, then worker.subnets in its order";

/// The order under price-capacity (`placement::rank`).
const PRICE_CAPACITY_RULE: &str = "price-capacity: the markets with quota room (Spot before On-Demand under spot-then-on-demand), within each the lowest price per vCPU-hour first, a Spot one divided by its placement score over 10 and multiplied by 1/(1 - reclaims/(launches + 1)) of the ledger's recent runs there; ties as written";

fn order_rule(r: &Ranking) -> String {
    match (&r.fallback, r.order) {
        (Some(why), _) => {
            format!("price-capacity fell back to the written order ({why}); {ORDER_RULE}")
        }
        (None, crate::runspec::CapacityOrder::PriceCapacity) => PRICE_CAPACITY_RULE.into(),
        (None, crate::runspec::CapacityOrder::AsWritten) => ORDER_RULE.into(),
    }
}

/// What a waiting run waits for: each short quota and the increase asked or followed.
fn waiting(quotas: &[QuotaPlan], reason: &str) -> String {
    let short: Vec<String> = quotas
        .iter()
        .filter(|q| !q.line.fits)
        .map(|q| {
            let l = &q.line;
            let more = (f64::from(l.usage_vcpus + l.reserved_vcpus + l.needed_vcpus) - l.applied)
                .max(0.0)
                .ceil();
            let how = match (&q.would_request, &l.request) {
                (Some(d), _) => format!("an increase to {d} would be requested"),
                (None, Some(r)) => format!(
                    "request {} for {} is {} since {}",
                    r.id,
                    r.desired,
                    r.status,
                    r.requested_at.to_rfc3339()
                ),
                (None, None) => "the stack's other runs to give room back".into(),
            };
            format!(
                "{} ({}): {more} more vCPUs; {how}",
                l.code,
                l.market.as_str()
            )
        })
        .collect();
    match short.is_empty() {
        true => reason.to_string(),
        false => short.join("; "),
    }
}

fn candidate(
    spec: &RunSpec,
    facts: &Facts,
    lines: &[QuotaLine],
    ranking: &Ranking,
    markets: &[Market],
    c: &capacity::Candidate,
) -> CandidatePlan {
    let ranked = ranking.candidates.iter().position(|r| &r.candidate() == c);
    let order = ranked.map(|i| i + 1);
    let weighted = ranked.and_then(|i| ranking.candidates[i].weighted);
    let zone = facts.zones.get(&c.subnet).cloned();
    let code = crate::catalog::quota_class(&c.instance_type)
        .and_then(|k| crate::catalog::quota_code(k, c.market))
        .map(str::to_string);
    let quota_fits = code
        .as_ref()
        .and_then(|code| lines.iter().find(|l| &l.code == code))
        .map(|l| l.fits);
    let (score, score_note) = placement_score(facts, c, zone.as_ref());
    let spot = zone.as_ref().and_then(|z| {
        let history = facts.spot.get(&(c.instance_type.clone(), z.name.clone()))?;
        spot_range(history, facts.now)
    });
    let spot = match c.market {
        Market::Spot => spot,
        Market::OnDemand => None,
    };
    let why = match order {
        Some(_) => why_there(spec, markets, c, weighted),
        None => why_not_tried(c, code.as_deref(), quota_fits),
    };
    CandidatePlan {
        order,
        market: c.market,
        instance_type: c.instance_type.clone(),
        subnet: c.subnet.clone(),
        zone,
        vcpus: facts.vcpus.get(&c.instance_type).copied(),
        score,
        score_note,
        spot,
        on_demand_usd_per_hour: facts
            .on_demand
            .iter()
            .find(|p| p.instance_type == c.instance_type)
            .map(|p| p.usd_per_hour),
        quota_code: code,
        quota_fits,
        why,
    }
}

/// A Spot candidate's placement score in its zone, or why it has none.
fn placement_score(
    facts: &Facts,
    c: &capacity::Candidate,
    zone: Option<&Zone>,
) -> (Option<u8>, Option<String>) {
    match (c.market, zone) {
        (Market::OnDemand, _) => (None, Some("On-Demand: no placement score".into())),
        (Market::Spot, None) => (
            None,
            Some("score unknown: the subnet's zone is unknown".into()),
        ),
        (Market::Spot, Some(z)) => match facts.scores.get(&c.instance_type) {
            Some(Ok(by_zone)) => match by_zone.get(&z.id) {
                Some(&s) => (Some(s), None),
                None => (
                    None,
                    Some(format!("score unknown: EC2 scored no zone {}", z.id)),
                ),
            },
            Some(Err(why)) => (None, Some(format!("score unknown: {why}"))),
            None => (None, Some("score unknown: not asked".into())),
        },
    }
}

/// Why a candidate the first launch tries is where it is: its market, type and subnet in the
/// RunSpec's order, and the expected cost it was ranked by.
fn why_there(
    spec: &RunSpec,
    markets: &[Market],
    c: &capacity::Candidate,
    weighted: Option<f64>,
) -> String {
    let t = spec
        .worker
        .instance_types
        .iter()
        .position(|t| t == &c.instance_type)
        .unwrap_or(0);
    let s = spec
        .worker
        .subnets
        .iter()
        .position(|s| s == &c.subnet)
        .unwrap_or(0);
    let m = markets.iter().position(|m| *m == c.market).unwrap_or(0);
    let weight = weighted.map_or(String::new(), |w| {
        format!(", ${w:.5} per vCPU-hour weighted")
    });
    format!(
        "market {} of {} ({}), worker.instance_types[{t}], worker.subnets[{s}]{weight}",
        m + 1,
        markets.len(),
        c.market.as_str()
    )
}

/// Why the first launch would not try a candidate: its quota has no room, or it is not needed.
fn why_not_tried(c: &capacity::Candidate, code: Option<&str>, quota_fits: Option<bool>) -> String {
    match code {
        Some(code) if quota_fits == Some(false) => format!(
            "not tried first: {code} ({}) has no room, so the launch tries only the markets with room",
            c.market.as_str()
        ),
        _ => "not tried by the first launch".into(),
    }
}

/// The price in force now (the newest point at or before `now`) and the range over the points.
pub fn spot_range(history: &[PricePoint], now: DateTime<Utc>) -> Option<SpotRange> {
    let current = placement::price_now(history, now)?;
    let prices = history.iter().map(|p| p.usd_per_hour);
    Some(SpotRange {
        now_usd_per_hour: current,
        min_usd_per_hour: prices.clone().fold(f64::INFINITY, f64::min),
        max_usd_per_hour: prices.fold(f64::NEG_INFINITY, f64::max),
    })
}

/// The plan of a RunSpec that does not parse: refused, every problem named.
pub fn refused(run_id: Option<&str>, region: &str, problems: Vec<String>) -> Plan {
    Plan {
        run_id: run_id.unwrap_or_default().to_string(),
        region: region.to_string(),
        verdict: Verdict::Refuse,
        quota_reason: "the RunSpec is invalid: the quotas were not judged".into(),
        problems,
        waiting_for: None,
        quotas: vec![],
        markets: vec![],
        order_rule: ORDER_RULE.into(),
        ranking: None,
        candidates: vec![],
        cost: CostPlan {
            expected_usd: None,
            worst_case_usd: None,
            attempt: None,
            budget_usd: 0.0,
            month: None,
        },
        bounds: BoundsPlan {
            history_events: 0,
            max_history_events: admission::MAX_HISTORY_EVENTS,
            document_bytes: 0,
            document_limit_bytes: payload::STATE_QUOTA_BYTES,
        },
    }
}

fn usd(x: Option<f64>) -> String {
    x.map_or("unknown".into(), |x| format!("${x:.4}"))
}

/// The plan as a person reads it.
pub fn text(p: &Plan) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "plan for run '{}' in {}: {}",
        p.run_id,
        p.region,
        p.verdict.as_str()
    ));
    if let Some(w) = &p.waiting_for {
        line(format!("  waiting for: {w}"));
    }
    for problem in &p.problems {
        line(format!("  refused: {problem}"));
    }
    if !p.quotas.is_empty() {
        quota_text(p, &mut line);
    }
    if !p.candidates.is_empty() {
        candidate_text(p, &mut line);
    }
    line(format!(
        "cost: expected {} (the first candidate's price, every worker's first attempt, at most its limits); worst case {} against limits.budget_usd ${:.2}",
        usd(p.cost.expected_usd),
        usd(p.cost.worst_case_usd),
        p.cost.budget_usd
    ));
    if let Some(m) = &p.cost.month {
        line(format!(
            "month {}: ${:.2} of ${:.2} spent or reserved, ${:.2} left: {}",
            m.month,
            m.spent_usd,
            m.budget_usd,
            m.remainder_usd,
            if m.fits {
                "the run fits"
            } else {
                "the run does not fit"
            }
        ));
    }
    line(format!(
        "bounds: {} of {} history events, {} of {} bytes of run document",
        p.bounds.history_events,
        p.bounds.max_history_events,
        p.bounds.document_bytes,
        p.bounds.document_limit_bytes
    ));
    out
}

/// The quotas CheckQuota judges, a line each, and its reason.
fn quota_text(p: &Plan, line: &mut impl FnMut(String)) {
    line("vCPU quotas (CheckQuota):".into());
    for q in &p.quotas {
        let l = &q.line;
        let room = l.applied - f64::from(l.usage_vcpus + l.reserved_vcpus);
        let tail = match (&q.would_request, &l.request, &l.barred) {
            (Some(d), _, _) => format!("; would request an increase to {d}"),
            (None, Some(r), _) => format!("; follows request {} ({})", r.id, r.status),
            (None, None, Some(b)) => format!("; no request: {b}"),
            _ => String::new(),
        };
        line(format!(
            "  {} {}: room {room} of {} (in use {}, reserved by other runs {}), need {}: {}{tail}",
            l.code,
            l.market.as_str(),
            l.applied,
            l.usage_vcpus,
            l.reserved_vcpus,
            l.needed_vcpus,
            if l.fits { "fits" } else { "short" }
        ));
    }
    line(format!("  {}", p.quota_reason));
}

/// Every candidate in the order the launch tries them, those it would not try last.
fn candidate_text(p: &Plan, line: &mut impl FnMut(String)) {
    line(format!(
        "candidates, in the order the launch tries them ({}):",
        p.order_rule
    ));
    let mut ordered: Vec<&CandidatePlan> = p.candidates.iter().collect();
    ordered.sort_by_key(|c| c.order.unwrap_or(usize::MAX));
    for c in ordered {
        let order = c.order.map_or("  -".into(), |o| format!("{o:>3}"));
        let zone = c.zone.as_ref().map_or("?".into(), |z| z.name.clone());
        let score = match (c.score, &c.score_note) {
            (Some(s), _) => format!("score {s}"),
            (None, Some(n)) => n.clone(),
            (None, None) => "score unknown".into(),
        };
        let spot = c.spot.map_or(String::new(), |s| {
            format!(
                ", spot ${:.4}/h (7 days ${:.4}–${:.4})",
                s.now_usd_per_hour, s.min_usd_per_hour, s.max_usd_per_hour
            )
        });
        line(format!(
            "{order}. {} {} {} ({zone}): {score}{spot}, on-demand {}/h; {}",
            c.market.as_str(),
            c.instance_type,
            c.subnet,
            usd(c.on_demand_usd_per_hour),
            c.why
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap()
    }

    fn spec(f: impl FnOnce(&mut serde_json::Value)) -> RunSpec {
        let mut v = crate::runspec::tests::sample();
        f(&mut v);
        RunSpec::parse(&v).unwrap()
    }

    fn facts(spec: &RunSpec, applied: f64) -> Facts {
        let types = &spec.worker.instance_types;
        let mut vcpus = HashMap::new();
        let mut on_demand = vec![];
        for t in types {
            let info = crate::catalog::lookup(t).unwrap();
            vcpus.insert(t.clone(), info.vcpus);
            on_demand.push(TypePrice {
                instance_type: t.clone(),
                usd_per_hour: info.on_demand_hourly,
                source: "table".into(),
            });
        }
        let per_type: Vec<(String, u32)> = types.iter().map(|t| (t.clone(), vcpus[t])).collect();
        let mut quotas = BTreeMap::new();
        for n in quota::needs(
            &per_type,
            &spec.worker.market.markets(false),
            spec.worker.count,
        )
        .unwrap()
        {
            quotas.insert(
                n.code,
                QuotaFacts {
                    applied,
                    is_default: true,
                    usage_vcpus: 0,
                    reserved_vcpus: 0,
                    history: vec![],
                },
            );
        }
        let zones: BTreeMap<String, Zone> = spec
            .worker
            .subnets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s.clone(),
                    Zone {
                        name: format!("us-east-1{}", (b'a' + i as u8) as char),
                        id: format!("use1-az{}", i + 1),
                    },
                )
            })
            .collect();
        let mut spot = BTreeMap::new();
        let mut scores = BTreeMap::new();
        for t in types {
            let mut by_zone = BTreeMap::new();
            for (i, z) in zones.values().enumerate() {
                spot.insert(
                    (t.clone(), z.name.clone()),
                    vec![
                        PricePoint {
                            at: now() - Duration::days(7),
                            usd_per_hour: 0.10,
                        },
                        PricePoint {
                            at: now() - Duration::days(1),
                            usd_per_hour: 0.12,
                        },
                    ],
                );
                by_zone.insert(z.id.clone(), 9 - i as u8);
            }
            scores.insert(t.clone(), Ok(by_zone));
        }
        Facts {
            region: "us-east-1".into(),
            now: now(),
            vcpus,
            quotas,
            bounds: Bounds::default(),
            on_demand,
            zones,
            spot,
            scores,
            month: None,
            history: placement::History::new(),
        }
    }

    #[test]
    fn with_room_it_starts_on_the_first_candidate_as_launch_worker_orders_them() {
        let s = spec(|_| {});
        let p = assemble(&s, &facts(&s, 10_000.0));
        assert_eq!(p.verdict, Verdict::Start, "{}", text(&p));
        assert!(p.problems.is_empty());
        let first = p.first().unwrap();
        let order = capacity::candidates(
            &s.worker.instance_types,
            &s.worker.subnets,
            &capacity::markets_to_try(s.worker.market, false, &p.markets),
        );
        assert_eq!(first.instance_type, order[0].instance_type);
        assert_eq!(first.subnet, order[0].subnet);
        assert_eq!(first.market, order[0].market);
        // Every candidate tried has its place, in LaunchWorker's order.
        let tried: Vec<usize> = p.candidates.iter().filter_map(|c| c.order).collect();
        assert_eq!(tried.len(), order.len());
        if first.market == Market::Spot {
            assert_eq!(first.score, Some(9));
            let r = first.spot.unwrap();
            assert_eq!(
                (r.now_usd_per_hour, r.min_usd_per_hour, r.max_usd_per_hour),
                (0.12, 0.10, 0.12)
            );
        }
        assert!(p.cost.expected_usd.unwrap() <= p.cost.worst_case_usd.unwrap());
        assert!(text(&p).contains("would start now"), "{}", text(&p));
        assert_eq!(p.verdict.exit_code(), 0);
    }

    #[test]
    fn short_of_quota_it_waits_and_names_the_increase_it_would_request() {
        let s = spec(|v| v["quota"]["request_increase"] = serde_json::json!(true));
        let p = assemble(&s, &facts(&s, 1.0));
        assert_eq!(p.verdict, Verdict::Wait, "{}", text(&p));
        assert_eq!(p.verdict.exit_code(), 3);
        let q = &p.quotas[0];
        assert_eq!(
            q.would_request,
            Some(quota::desired_value(1.0, 0, q.line.needed_vcpus))
        );
        let w = p.waiting_for.as_deref().unwrap();
        assert!(w.contains("would be requested"), "{w}");
        // The check files nothing until the plan runs it: no first candidate is launched yet.
        assert!(p.first().is_some_and(|c| c.order == Some(1)));
    }

    #[test]
    fn every_problem_refuses_at_once() {
        let s = spec(|v| {
            v["quota"]["request_increase"] = serde_json::json!(false);
            v["limits"]["budget_usd"] = serde_json::json!(0.01);
        });
        let mut f = facts(&s, 1.0);
        let gone = s.worker.subnets[0].clone();
        f.zones.remove(&gone);
        f.month = Some(Month {
            month: "2026-12".into(),
            budget_usd: 0.001,
            entries: vec![],
        });
        let p = assemble(&s, &f);
        assert_eq!(p.verdict, Verdict::Refuse);
        assert_eq!(p.verdict.exit_code(), 4);
        let all = p.problems.join("\n");
        for needle in [
            "worker.subnets[0]",
            "limits.budget_usd",
            "quota.request_increase is false",
        ] {
            assert!(all.contains(needle), "{needle}: {all}");
        }
        assert!(text(&p).contains("would be refused"));
    }

    #[test]
    fn a_score_ec2_refused_is_unknown_not_a_failure() {
        let s = spec(|_| {});
        let mut f = facts(&s, 10_000.0);
        for v in f.scores.values_mut() {
            *v = Err("MaxConfigLimitExceeded: no new configurations for 24 hours".into());
        }
        let p = assemble(&s, &f);
        assert_eq!(p.verdict, Verdict::Start);
        let spot = p.candidates.iter().find(|c| c.market == Market::Spot);
        if let Some(c) = spot {
            assert_eq!(c.score, None);
            assert!(c
                .score_note
                .as_deref()
                .unwrap()
                .contains("MaxConfigLimitExceeded"));
        }
    }

    #[test]
    fn under_price_capacity_the_plan_orders_as_placement_ranks_and_a_dearer_first_choice_moves_down(
    ) {
        let s = spec(|v| v["capacity"] = serde_json::json!({"order": "price-capacity"}));
        let mut f = facts(&s, 10_000.0);
        // The user's first choice, c7g.4xlarge in the first subnet's zone, at more than twice the
        // others' Spot price.
        let dear = (s.worker.instance_types[0].clone(), "us-east-1a".to_string());
        f.spot.insert(
            dear,
            vec![PricePoint {
                at: now() - Duration::days(1),
                usd_per_hour: 0.30,
            }],
        );
        let p = assemble(&s, &f);
        assert_eq!(p.verdict, Verdict::Start, "{}", text(&p));
        let order = |t: usize, sub: usize| {
            p.candidates
                .iter()
                .find(|c| {
                    c.market == Market::Spot
                        && c.instance_type == s.worker.instance_types[t]
                        && c.subnet == s.worker.subnets[sub]
                })
                .and_then(|c| c.order)
                .unwrap()
        };
        // Equal prices per vCPU-hour elsewhere: the zone scoring 9 before the one scoring 8,
        // ties as written, the dear one last of the Spot candidates.
        assert_eq!(
            [order(1, 0), order(0, 1), order(1, 1), order(0, 0)],
            [1, 2, 3, 4],
            "{}",
            text(&p)
        );
        let r = p.ranking.as_ref().unwrap();
        assert_eq!(r.fallback, None);
        assert_eq!(r.tried()[0].instance_type, s.worker.instance_types[1]);
        assert!(
            p.order_rule.starts_with("price-capacity"),
            "{}",
            p.order_rule
        );
        // The same RunSpec as written keeps the user's order.
        let w = spec(|_| {});
        let p = assemble(&w, &facts(&w, 10_000.0));
        assert_eq!(p.first().unwrap().instance_type, w.worker.instance_types[0]);
        assert!(p.order_rule.starts_with("as written"));
    }

    #[test]
    fn the_spot_range_is_the_price_in_force_and_the_extremes() {
        let at = |d: i64, usd: f64| PricePoint {
            at: now() - Duration::days(d),
            usd_per_hour: usd,
        };
        let r = spot_range(&[at(8, 0.2), at(3, 0.05), at(1, 0.1)], now()).unwrap();
        assert_eq!(
            (r.now_usd_per_hour, r.min_usd_per_hour, r.max_usd_per_hour),
            (0.1, 0.05, 0.2)
        );
        assert_eq!(spot_range(&[], now()), None);
    }
}

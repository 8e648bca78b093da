//! Quota arithmetic: which vCPU quotas a run needs, whether they fit, what to request,
//! how a request's status reads, and how long to wait before asking again.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{self, QuotaClass};
use crate::market::Market;

/// One quota the run may draw on: the largest candidate that would land in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaNeed {
    /// The Service Quotas code (`L-…`).
    pub code: String,
    /// The market whose instances count in it.
    pub market: Market,
    /// The vCPUs the run needs in it: its largest candidate's vCPUs times the workers.
    pub needed_vcpus: u32,
    /// The candidate types that land in it.
    pub instance_types: Vec<String>,
}

/// Groups candidates by quota code. Every quota the market policy may use must have room for
/// its largest candidate times the run's `workers`, so that any fallback each worker's launch
/// takes can succeed.
pub fn needs(
    types_vcpus: &[(String, u32)],
    markets: &[Market],
    workers: u32,
) -> Result<Vec<QuotaNeed>, String> {
    let mut by_code: BTreeMap<(Market, &'static str), QuotaNeed> = BTreeMap::new();
    for &market in markets {
        for (t, vcpus) in types_vcpus {
            let class: QuotaClass = catalog::quota_class(t)
                .ok_or_else(|| format!("no vCPU quota is known for instance type {t}"))?;
            let code = catalog::quota_code(class, market)
                .ok_or_else(|| format!("{t} cannot be bought as {}", market.as_str()))?;
            let need = by_code.entry((market, code)).or_insert_with(|| QuotaNeed {
                code: code.to_string(),
                market,
                needed_vcpus: 0,
                instance_types: vec![],
            });
            need.needed_vcpus = need.needed_vcpus.max(vcpus.saturating_mul(workers));
            need.instance_types.push(t.clone());
        }
    }
    Ok(by_code.into_values().collect())
}

/// The vCPUs in use in each quota: every pending or running instance, (type, market), counted
/// in the quota its type and market draw on (types no quota is known for count nowhere).
pub fn usage<'a>(
    active: impl IntoIterator<Item = (&'a str, Market)>,
    vcpus: &std::collections::HashMap<String, u32>,
) -> BTreeMap<&'static str, u32> {
    let mut usage = BTreeMap::new();
    for (t, market) in active {
        if let Some(code) = catalog::quota_class(t).and_then(|c| catalog::quota_code(c, market)) {
            *usage.entry(code).or_default() += vcpus.get(t).copied().unwrap_or(0);
        }
    }
    usage
}

/// One quota read against the run's need: whether it fits beside everything held (`fits`),
/// whether it is short beside the usage outside the stack alone (`short`: the other runs'
/// reservations come back when they end, so only then is an increase worth asking for), and the
/// value such a request would ask (`desired`). quota-check and `ephemera plan` both judge a
/// quota with this, so the plan says what the check would do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    /// The need fits beside the usage outside the stack and the other runs' reservations.
    pub fits: bool,
    /// The need does not fit beside the usage outside the stack alone: only then is an increase
    /// worth requesting.
    pub short: bool,
    /// The quota value a request would ask for, in vCPUs ([`desired_value`]).
    pub desired: f64,
}

/// The quota of `applied` vCPUs against `usage` outside the stack, `reserved` by the stack's other
/// runs and the run's `needed`.
pub fn room(applied: f64, usage: u32, reserved: u32, needed: u32) -> Room {
    Room {
        fits: fits(applied, usage + reserved, needed),
        short: !fits(applied, usage, needed),
        desired: desired_value(applied, usage + reserved, needed),
    }
}

/// Whether `needed` more vCPUs fit beside `usage` in a quota of `applied`.
pub fn fits(applied: f64, usage: u32, needed: u32) -> bool {
    (usage as f64 + needed as f64) <= applied + 1e-9
}

/// The value to ask for: usage + needed as a whole number of vCPUs, and always above the
/// applied value (Service Quotas refuses a desired value not above the current one).
pub fn desired_value(applied: f64, usage: u32, needed: u32) -> f64 {
    let want = (usage as f64 + needed as f64).ceil();
    want.max(applied.floor() + 1.0)
}

/// Capped exponential backoff: min × 2^polls, at most max.
pub fn backoff_seconds(polls: u32, min: u64, max: u64) -> u64 {
    let factor = 1u64.checked_shl(polls.min(32)).unwrap_or(u64::MAX);
    min.saturating_mul(factor).min(max).max(1)
}

/// The next wait, never past the deadline (and at least one second).
pub fn next_wait(
    polls: u32,
    min: u64,
    max: u64,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> u64 {
    let left = (deadline - now).num_seconds().max(1) as u64;
    backoff_seconds(polls, min, max).min(left)
}

/// What a Service Quotas request status means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestProgress {
    /// PENDING or CASE_OPENED: not decided yet; the run waits on it.
    Pending,
    /// APPROVED: the quota's applied value should now have room.
    Approved,
    /// DENIED, NOT_APPROVED or INVALID_REQUEST: the increase will not come.
    Denied,
    /// CASE_CLOSED: closed without a clear word; the applied value tells.
    Closed,
}

/// What a Service Quotas request status (`PENDING`, `APPROVED`, …) means for the run; an unknown
/// status is an error naming it.
pub fn request_progress(status: &str) -> Result<RequestProgress, String> {
    Ok(match status {
        "PENDING" | "CASE_OPENED" => RequestProgress::Pending,
        "APPROVED" => RequestProgress::Approved,
        "DENIED" | "NOT_APPROVED" | "INVALID_REQUEST" => RequestProgress::Denied,
        "CASE_CLOSED" => RequestProgress::Closed,
        other => return Err(format!("unknown quota request status {other}")),
    })
}

/// An increase request for a vCPU quota, as Service Quotas lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaRequest {
    /// The request's id in Service Quotas.
    pub id: String,
    /// The AWS Support case opened for it, if any.
    #[serde(default)]
    pub case_id: Option<String>,
    /// The quota value asked for, in vCPUs.
    pub desired: f64,
    /// Its status as Service Quotas says it (`PENDING`, `CASE_OPENED`, `APPROVED`, …).
    pub status: String,
    /// When it was filed.
    pub requested_at: DateTime<Utc>,
}

/// One quota as last seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaLine {
    /// The Service Quotas code (`L-…`).
    pub code: String,
    /// The market whose instances count in it.
    pub market: Market,
    /// The quota's value in vCPUs (the applied value, else the AWS default).
    pub applied: f64,
    /// True when the account has no applied value and the AWS default was used.
    pub is_default: bool,
    /// vCPUs in use outside the stack's reservations (instances of no run that holds one here:
    /// another tool's, or the stack's from before reservations; `vcpus::outside_usage`).
    pub usage_vcpus: u32,
    /// vCPUs the stack's other runs hold here (their reservations, `crate::vcpus`): room they
    /// give back when they end.
    #[serde(default)]
    pub reserved_vcpus: u32,
    /// The vCPUs the run needs in it: its largest candidate's vCPUs times the workers.
    pub needed_vcpus: u32,
    /// The need fits beside the usage outside and the other runs' reservations.
    pub fits: bool,
    /// The increase request filed for it or followed, if any.
    #[serde(default)]
    pub request: Option<QuotaRequest>,
    /// Why no request may be filed for it (a recent denial, the stack's cap:
    /// `quota_request::filing`); the market cannot be served while it is short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub barred: Option<String>,
}

/// What quota-check decided (`$.quota.verdict`, read by the `QuotaVerdict` Choice state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaVerdict {
    /// Every quota the run needs has room (for its last-resort market, at least): launch.
    Enough,
    /// A quota is short: wait for an increase request, or for the stack's other runs to give room
    /// back.
    Waiting,
    /// A quota is short and cannot become enough (a request denied, barred or not allowed): the run
    /// is refused.
    Denied,
    /// Still short when `quota.max_wait_seconds` passed: the run is refused.
    DeadlinePassed,
}

/// The quota part of the run document (`$.quota`), passed back in on every poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaState {
    /// What quota-check decided.
    pub verdict: QuotaVerdict,
    /// Why, in words: each quota's usage and need against its value, or what it waits for.
    pub reason: String,
    /// Seconds to wait before the next check (read by the Wait state's `SecondsPath`).
    pub wait_seconds: u64,
    /// How many checks were made before this one (0 on the first).
    pub polls: u32,
    /// When the first check was made: the wait's start.
    pub started_at: DateTime<Utc>,
    /// When this check was made.
    pub checked_at: DateTime<Utc>,
    /// When the wait ends: `started_at` plus `quota.max_wait_seconds`.
    pub deadline: DateTime<Utc>,
    /// Every quota the run needs, as this check saw it.
    pub quotas: Vec<QuotaLine>,
    /// The run's workers, `1..=worker.count`: the items the state machine's Map state fans out
    /// over (the quotas above have room for all of them).
    #[serde(default)]
    pub workers: Vec<u32>,
    /// The candidates' On-Demand prices, read once when the quotas have room (empty before).
    #[serde(default)]
    pub prices: Vec<crate::cost::TypePrice>,
    /// The markets with room in every quota they draw on (empty before): each launch tries
    /// only these (`capacity::markets_to_try`).
    #[serde(default)]
    pub markets: Vec<Market>,
}

/// The markets whose every quota line fits, in the order the lines name them.
pub fn markets_with_room(lines: &[QuotaLine]) -> Vec<Market> {
    let mut out: Vec<Market> = vec![];
    for l in lines {
        if !out.contains(&l.market)
            && lines
                .iter()
                .filter(|o| o.market == l.market)
                .all(|o| o.fits)
        {
            out.push(l.market);
        }
    }
    out
}

/// The verdict from the quotas as seen now.
///
/// A run draws on one market, or on Spot with On-Demand as its fallback (spot-then-on-demand):
/// a worker Spot cannot place, or whose Spot instance is reclaimed, launches On-Demand. So the
/// run starts only when its last resort (On-Demand when the policy has it) has room, and then
/// with every market that has room: a short or denied Spot quota never holds up a run that
/// On-Demand can serve, and Spot room alone never starts a run that asked for a fallback, whose
/// workers would be lost in a Spot shortage for want of On-Demand quota (issue 32, part 5). The
/// fallback's room is waited for, and requested when `quota.request_increase` allows; a
/// fallback that cannot be had refuses the run.
pub fn decide(
    lines: &[QuotaLine],
    request_allowed: bool,
    now: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> (QuotaVerdict, String) {
    let mut markets: Vec<Market> = lines.iter().map(|l| l.market).collect();
    markets.dedup();
    let mut verdicts = vec![];
    for m in &markets {
        let of: Vec<&QuotaLine> = lines.iter().filter(|l| l.market == *m).collect();
        verdicts.push((*m, decide_market(&of, request_allowed)));
    }
    let last_resort = if markets.contains(&Market::OnDemand) {
        Market::OnDemand
    } else {
        Market::Spot
    };
    let fallback = markets.len() > 1;
    let Some((_, last)) = verdicts.iter().find(|(m, _)| *m == last_resort) else {
        return (QuotaVerdict::Enough, "no vCPU quota to check".into());
    };
    match last {
        MarketQuota::Fits => {
            let start = verdicts
                .iter()
                .find(|(_, v)| matches!(v, MarketQuota::Fits))
                .map_or(last_resort, |(m, _)| *m);
            (QuotaVerdict::Enough, enough(lines, &verdicts, start))
        }
        MarketQuota::Denied(_) => {
            let denied: Vec<&str> = verdicts
                .iter()
                .filter_map(|(_, v)| match v {
                    MarketQuota::Denied(d) => Some(d.as_str()),
                    _ => None,
                })
                .collect();
            let mut why = denied.join("; ");
            if fallback {
                why.push_str(&format!(
                    "; the run's fallback ({}) must have room for its workers as well, so that none is lost in a Spot shortage: set worker.market to \"spot\" to run without a fallback",
                    last_resort.as_str()
                ));
            }
            (QuotaVerdict::Denied, why)
        }
        MarketQuota::Waiting(w) => {
            let mut waiting = w.clone();
            if fallback {
                let first_fits = verdicts
                    .iter()
                    .any(|(m, v)| *m != last_resort && matches!(v, MarketQuota::Fits));
                if first_fits {
                    waiting.push_str(&format!(
                        "; spot has room, but the run's fallback ({}) must have room for its workers as well",
                        last_resort.as_str()
                    ));
                }
            }
            if now >= deadline {
                return (
                    QuotaVerdict::DeadlinePassed,
                    format!(
                        "quota.max_wait_seconds passed at {}: {waiting}",
                        deadline.to_rfc3339()
                    ),
                );
            }
            (QuotaVerdict::Waiting, waiting)
        }
    }
}

/// The reason of an Enough verdict: every quota's usage and need against its value, and the
/// markets left short (the run starts with `m`).
fn enough(lines: &[QuotaLine], verdicts: &[(Market, MarketQuota)], m: Market) -> String {
    let list: Vec<String> = lines
        .iter()
        .map(|l| {
            format!(
                "{} {}: {}{} + {} {} {}",
                l.code,
                l.market.as_str(),
                l.usage_vcpus,
                match l.reserved_vcpus {
                    0 => String::new(),
                    r => format!(" + {r} reserved"),
                },
                l.needed_vcpus,
                if l.fits { "<=" } else { ">" },
                l.applied
            )
        })
        .collect();
    let short: Vec<&str> = verdicts
        .iter()
        .filter(|(_, v)| !matches!(v, MarketQuota::Fits))
        .map(|(m, _)| m.as_str())
        .collect();
    let tail = if short.is_empty() {
        String::new()
    } else {
        format!(
            "; {} short, so the run starts with {}",
            short.join(", "),
            m.as_str()
        )
    };
    format!("enough vCPUs ({}){tail}", list.join(", "))
}

/// One market's quotas: all fit, some wait on a request, or one cannot be had.
enum MarketQuota {
    Fits,
    Waiting(String),
    Denied(String),
}

fn decide_market(lines: &[&QuotaLine], request_allowed: bool) -> MarketQuota {
    let mut waiting = vec![];
    for l in lines.iter().filter(|l| !l.fits) {
        if fits(l.applied, l.usage_vcpus, l.needed_vcpus) {
            // Short only for what the stack's other runs hold: they give it back when they
            // end. Waited for, never requested over, never a denial.
            waiting.push(format!(
                "{} ({}) needs {} + {} vCPUs beside {} reserved by the stack's other runs, quota is {}; waiting for them to end",
                l.code,
                l.market.as_str(),
                l.usage_vcpus,
                l.needed_vcpus,
                l.reserved_vcpus,
                l.applied
            ));
            continue;
        }
        let gap = format!(
            "{} ({}) needs {} + {} vCPUs, quota is {}",
            l.code,
            l.market.as_str(),
            l.usage_vcpus,
            l.needed_vcpus,
            l.applied
        );
        match &l.request {
            None if l.barred.is_some() => {
                let why = l.barred.as_deref().unwrap_or_default();
                return MarketQuota::Denied(format!("{gap}; {why}"));
            }
            None if !request_allowed => {
                return MarketQuota::Denied(format!("{gap}, and quota.request_increase is false"))
            }
            None => waiting.push(format!("{gap}; no request yet")),
            Some(r) => match request_progress(&r.status) {
                Ok(RequestProgress::Pending) => {
                    waiting.push(format!("{gap}; request {} is {}", r.id, r.status))
                }
                Ok(RequestProgress::Denied) | Ok(RequestProgress::Closed) => {
                    return MarketQuota::Denied(format!(
                        "{gap}; request {} ended {}",
                        r.id, r.status
                    ))
                }
                // AWS says the applied value "is set to the new value" once the request is
                // resolved, not that both change at once
                // (https://docs.aws.amazon.com/servicequotas/latest/userguide/request-quota-increase.html),
                // and the two are read by separate calls: an approval that covers the need is
                // waited for, until the run's deadline; one that does not (usage grew since)
                // cannot fit.
                Ok(RequestProgress::Approved)
                    if r.desired + 1e-9 >= (l.usage_vcpus + l.needed_vcpus) as f64 =>
                {
                    waiting.push(format!(
                        "{gap}; request {} was approved for {}, waiting for the applied value to follow",
                        r.id, r.desired
                    ))
                }
                Ok(RequestProgress::Approved) => {
                    return MarketQuota::Denied(format!(
                        "{gap}; request {} was approved for {}, which is still short",
                        r.id, r.desired
                    ))
                }
                Err(e) => return MarketQuota::Denied(format!("{gap}; {e}")),
            },
        }
    }
    if waiting.is_empty() {
        MarketQuota::Fits
    } else {
        MarketQuota::Waiting(waiting.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn line(applied: f64, usage: u32, needed: u32, request: Option<&str>) -> QuotaLine {
        QuotaLine {
            code: "L-34B43A08".into(),
            market: Market::Spot,
            applied,
            is_default: false,
            usage_vcpus: usage,
            reserved_vcpus: 0,
            needed_vcpus: needed,
            fits: fits(applied, usage, needed),
            request: request.map(|s| QuotaRequest {
                id: "req-1".into(),
                case_id: None,
                desired: 32.0,
                status: s.into(),
                requested_at: t(0),
            }),
            barred: None,
        }
    }

    #[test]
    fn a_short_spot_quota_never_holds_up_what_on_demand_can_serve() {
        let d = t(3600);
        let spot = |req: Option<&str>| line(8.0, 0, 16, req);
        let od = |applied: f64| QuotaLine {
            code: "L-1216C47A".into(),
            market: Market::OnDemand,
            ..line(applied, 0, 16, None)
        };
        // Spot denied, On-Demand fits: the run starts, saying why.
        let (v, why) = decide(&[spot(Some("DENIED")), od(64.0)], true, t(0), d);
        assert_eq!(v, QuotaVerdict::Enough, "{why}");
        assert!(
            why.contains("spot short, so the run starts with on-demand"),
            "{why}"
        );
        // Spot pending, On-Demand fits: no wait.
        let (v, _) = decide(&[spot(Some("PENDING")), od(64.0)], true, t(0), d);
        assert_eq!(v, QuotaVerdict::Enough);
        // Spot denied, On-Demand pending: wait for On-Demand, do not fail.
        let mut odp = od(8.0);
        odp.request = line(8.0, 0, 16, Some("PENDING")).request;
        let (v, why) = decide(&[spot(Some("DENIED")), odp.clone()], true, t(0), d);
        assert_eq!(v, QuotaVerdict::Waiting, "{why}");
        // Both denied: denied, naming both.
        let mut odd = od(8.0);
        odd.request = line(8.0, 0, 16, Some("DENIED")).request;
        let (v, why) = decide(&[spot(Some("DENIED")), odd], true, t(0), d);
        assert_eq!(v, QuotaVerdict::Denied);
        assert!(
            why.contains("L-34B43A08") && why.contains("L-1216C47A"),
            "{why}"
        );
    }

    /// Issue 32, part 5: Spot room alone never starts a run whose fallback is On-Demand.
    #[test]
    fn a_run_with_a_fallback_waits_for_the_fallbacks_room_too() {
        let d = t(3600);
        let spot = line(64.0, 0, 16, None);
        let od = |applied: f64, request: Option<&str>| QuotaLine {
            code: "L-1216C47A".into(),
            market: Market::OnDemand,
            ..line(applied, 0, 16, request)
        };
        // Spot has room, On-Demand is short: the increase is asked for (no request yet) and
        // waited for; the run does not start on Spot alone.
        let (v, why) = decide(&[spot.clone(), od(8.0, None)], true, t(0), d);
        assert_eq!(v, QuotaVerdict::Waiting, "{why}");
        assert!(why.contains("L-1216C47A (on-demand) needs 0 + 16"), "{why}");
        assert!(
            why.contains("spot has room, but the run's fallback"),
            "{why}"
        );
        let (v, _) = decide(&[spot.clone(), od(8.0, Some("PENDING"))], true, t(0), d);
        assert_eq!(v, QuotaVerdict::Waiting);
        // The fallback cannot be had: refused, saying how to run without one.
        let (v, why) = decide(&[spot.clone(), od(8.0, None)], false, t(0), d);
        assert_eq!(v, QuotaVerdict::Denied, "{why}");
        assert!(why.contains("worker.market to \"spot\""), "{why}");
        let (v, _) = decide(&[spot.clone(), od(8.0, Some("DENIED"))], true, t(0), d);
        assert_eq!(v, QuotaVerdict::Denied);
        // Both have room: both markets, Spot first.
        let both = [spot.clone(), od(64.0, None)];
        let (v, why) = decide(&both, true, t(0), d);
        assert_eq!(v, QuotaVerdict::Enough, "{why}");
        assert_eq!(
            markets_with_room(&both),
            vec![Market::Spot, Market::OnDemand]
        );
        // A run on Spot alone needs Spot alone.
        let (v, _) = decide(std::slice::from_ref(&spot), false, t(0), d);
        assert_eq!(v, QuotaVerdict::Enough);
    }

    /// Issue 32, part 4: the stack's other runs' reservations are waited for, never requested
    /// over and never a denial; the usage outside them is what a request covers.
    #[test]
    fn room_held_by_the_stacks_other_runs_is_waited_for() {
        let d = t(3600);
        let mut held = line(64.0, 0, 16, None);
        held.reserved_vcpus = 64;
        held.fits = fits(held.applied, held.usage_vcpus + held.reserved_vcpus, 16);
        assert!(!held.fits);
        // Even without permission to ask: the room comes back when they end.
        let (v, why) = decide(std::slice::from_ref(&held), false, t(0), d);
        assert_eq!(v, QuotaVerdict::Waiting, "{why}");
        assert!(
            why.contains("64 reserved by the stack's other runs"),
            "{why}"
        );
        // Until the run's deadline, as any wait.
        let (v, _) = decide(std::slice::from_ref(&held), false, d, d);
        assert_eq!(v, QuotaVerdict::DeadlinePassed);
        // Short beside the usage outside alone: requested (or refused) as before.
        let mut short = line(32.0, 20, 16, None);
        short.reserved_vcpus = 8;
        short.fits = false;
        let (v, why) = decide(std::slice::from_ref(&short), false, t(0), d);
        assert_eq!(v, QuotaVerdict::Denied, "{why}");
        // The Enough reason says what the others hold.
        let mut ok = line(64.0, 0, 16, None);
        ok.reserved_vcpus = 32;
        let (v, why) = decide(&[ok], true, t(0), d);
        assert_eq!(v, QuotaVerdict::Enough);
        assert!(why.contains("0 + 32 reserved + 16 <= 64"), "{why}");
    }

    #[test]
    fn an_approval_the_applied_value_has_not_followed_yet_is_waited_for() {
        let d = t(3600);
        // Approved for 32; the applied value still reads 8.
        let (v, why) = decide(&[line(8.0, 0, 16, Some("APPROVED"))], true, t(0), d);
        assert_eq!(v, QuotaVerdict::Waiting, "{why}");
        assert!(why.contains("waiting for the applied value"), "{why}");
        // Until the deadline, as any wait.
        let (v, _) = decide(&[line(8.0, 0, 16, Some("APPROVED"))], true, d, d);
        assert_eq!(v, QuotaVerdict::DeadlinePassed);
        // Approved for less than the run needs now (usage grew): it cannot fit.
        let (v, why) = decide(&[line(8.0, 20, 16, Some("APPROVED"))], true, t(0), d);
        assert_eq!(v, QuotaVerdict::Denied, "{why}");
        assert!(why.contains("which is still short"), "{why}");
    }

    #[test]
    fn needs_group_by_code_and_take_the_largest() {
        let types = vec![
            ("c7g.4xlarge".to_string(), 16),
            ("m7g.8xlarge".to_string(), 32),
            ("g5.xlarge".to_string(), 4),
        ];
        let n = needs(&types, &[Market::Spot, Market::OnDemand], 1).unwrap();
        let find = |code: &str| n.iter().find(|q| q.code == code).unwrap().needed_vcpus;
        assert_eq!(find("L-34B43A08"), 32);
        assert_eq!(find("L-1216C47A"), 32);
        assert_eq!(find("L-3819A6DF"), 4);
        assert_eq!(find("L-DB2E81BA"), 4);
        assert_eq!(n.len(), 4);
        assert!(needs(&[("hpc7g.4xlarge".into(), 16)], &[Market::Spot], 1).is_err());
        // Each of the run's workers may land on the largest candidate.
        let three = needs(&types, &[Market::Spot], 3).unwrap();
        let find = |code: &str| three.iter().find(|q| q.code == code).unwrap().needed_vcpus;
        assert_eq!(find("L-34B43A08"), 96);
        assert_eq!(find("L-3819A6DF"), 12);
    }

    #[test]
    fn usage_counts_each_instance_in_its_own_quota() {
        let vcpus: std::collections::HashMap<String, u32> = [
            ("c7g.4xlarge".to_string(), 16),
            ("g5.xlarge".to_string(), 4),
        ]
        .into();
        let u = usage(
            [
                ("c7g.4xlarge", Market::Spot),
                ("c7g.4xlarge", Market::Spot),
                ("c7g.4xlarge", Market::OnDemand),
                ("g5.xlarge", Market::Spot),
                ("q9.unknown", Market::Spot),
            ],
            &vcpus,
        );
        assert_eq!(u.get("L-34B43A08"), Some(&32));
        assert_eq!(u.get("L-1216C47A"), Some(&16));
        assert_eq!(u.get("L-3819A6DF"), Some(&4));
        assert_eq!(u.len(), 3);
    }

    #[test]
    fn arithmetic() {
        assert!(fits(32.0, 16, 16));
        assert!(!fits(32.0, 17, 16));
        assert_eq!(desired_value(32.0, 20, 16), 36.0);
        // Never ask for the value already applied.
        assert_eq!(desired_value(40.0, 10, 16), 41.0);
        assert_eq!(desired_value(5.5, 4, 2), 6.0);
    }

    #[test]
    fn backoff_is_capped_exponential() {
        let seq: Vec<u64> = (0..8).map(|p| backoff_seconds(p, 60, 900)).collect();
        assert_eq!(seq, vec![60, 120, 240, 480, 900, 900, 900, 900]);
        assert_eq!(backoff_seconds(200, 60, 900), 900);
        assert_eq!(next_wait(3, 60, 900, t(0), t(100)), 100);
        assert_eq!(next_wait(0, 60, 900, t(200), t(100)), 1);
    }

    #[test]
    fn statuses() {
        for s in ["PENDING", "CASE_OPENED"] {
            assert_eq!(request_progress(s), Ok(RequestProgress::Pending));
        }
        for s in ["DENIED", "NOT_APPROVED", "INVALID_REQUEST"] {
            assert_eq!(request_progress(s), Ok(RequestProgress::Denied));
        }
        assert_eq!(request_progress("APPROVED"), Ok(RequestProgress::Approved));
        assert_eq!(request_progress("CASE_CLOSED"), Ok(RequestProgress::Closed));
        assert!(request_progress("MAYBE").is_err());
    }

    #[test]
    fn verdicts() {
        let d = t(1000);
        assert_eq!(
            decide(&[line(64.0, 0, 16, None)], true, t(0), d).0,
            QuotaVerdict::Enough
        );
        assert_eq!(
            decide(&[line(8.0, 0, 16, None)], true, t(0), d).0,
            QuotaVerdict::Waiting
        );
        let (v, why) = decide(&[line(8.0, 0, 16, None)], false, t(0), d);
        assert_eq!(v, QuotaVerdict::Denied);
        assert!(why.contains("request_increase is false"), "{why}");
        // A line no request may be filed for is denied, naming why.
        let mut barred = line(8.0, 0, 16, None);
        barred.barred = Some("request r was DENIED on 2026-12-01".into());
        let (v, why) = decide(&[barred], true, t(0), d);
        assert_eq!(v, QuotaVerdict::Denied);
        assert!(why.contains("was DENIED on 2026-12-01"), "{why}");
        assert_eq!(
            decide(&[line(8.0, 0, 16, Some("CASE_OPENED"))], true, t(0), d).0,
            QuotaVerdict::Waiting
        );
        assert_eq!(
            decide(&[line(8.0, 0, 16, Some("CASE_OPENED"))], true, t(1000), d).0,
            QuotaVerdict::DeadlinePassed
        );
        let (v, why) = decide(&[line(8.0, 0, 16, Some("DENIED"))], true, t(0), d);
        assert_eq!(v, QuotaVerdict::Denied);
        assert!(why.contains("req-1 ended DENIED"), "{why}");
        // Approved and re-read: the applied value now fits.
        assert_eq!(
            decide(&[line(32.0, 0, 16, Some("APPROVED"))], true, t(0), d).0,
            QuotaVerdict::Enough
        );
    }
}

//! Placement: the order a launch tries its candidates in under `capacity.order`, and the
//! reclaim history it weighs them with. LaunchWorker and `ephemera plan` both rank with
//! [`rank`], from the same kind of facts ([`Observed`], [`History`]), so the plan names the
//! candidate the run tries first.
//!
//! The rule (`price-capacity`), within each market, the markets in their order (Spot before
//! On-Demand, as [`crate::capacity::markets_to_try`] says):
//!
//! - the price is per vCPU-hour (the Spot price in force now for Spot, the On-Demand price for
//!   On-Demand, over the type's vCPUs): a worker uses every core, so a type with twice the
//!   vCPUs at twice the price is the same buy;
//! - a Spot candidate's price is divided by its placement score over 10 (EC2's 1–10 chance that
//!   the request is filled in that zone): a zone scoring 1 must be ten times cheaper than one
//!   scoring 10 to come first. A zone EC2 left out of its answer (it lists the best ten) counts
//!   as 1;
//! - a Spot candidate's price is multiplied by the attempts a reclaim rate makes expected,
//!   `1 / (1 - r)`, with `r = reclaims / (launches + 1)` over the ledger's recent runs of that
//!   type in that zone (the `+ 1` keeps one reclaim in one launch from ruling a zone out for
//!   good);
//! - equal weights keep the written order (the sort is stable), and On-Demand is never
//!   reclaimed nor scored: its candidates go by price alone.
//!
//! When a Spot price or a type's scores could not be read (throttled, refused, denied), the
//! ranking keeps the written order and says why ([`Ranking::fallback`]): a partial ranking
//! would weigh a candidate without its facts against others with theirs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::capacity::Candidate;
use crate::cost::{PricePoint, TypePrice};
use crate::market::Market;
use crate::runspec::CapacityOrder;

/// A subnet's zone: its name and its id (placement scores name zones by id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zone {
    /// The zone's name (`us-east-1b`): Spot prices and the ledger name zones so.
    pub name: String,
    /// The zone's id (`use1-az2`): placement scores name zones so.
    pub id: String,
}

/// Spot placement scores of one instance type, per zone id, or why none is known.
pub type TypeScores = Result<BTreeMap<String, u8>, String>;

/// What a ranking reads from EC2, read once for a run (LaunchWorker caches it in the run's
/// ledger item, so the run's other workers and its relaunches ask EC2 nothing again).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// Each subnet's zone (DescribeSubnets); a subnet missing does not exist.
    pub zones: BTreeMap<String, Zone>,
    /// The Spot price in force when read, by type, then zone name; missing: not read.
    pub spot: BTreeMap<String, BTreeMap<String, f64>>,
    /// GetSpotPlacementScores by type (SingleAvailabilityZone, the run's vCPUs as target).
    pub scores: BTreeMap<String, TypeScores>,
    /// When it was read from EC2.
    pub read_at: DateTime<Utc>,
}

/// The Spot price in force at `now`: the newest point at or before it (AWS includes the price
/// in force at a window's start).
pub fn price_now(history: &[PricePoint], now: DateTime<Utc>) -> Option<f64> {
    history
        .iter()
        .filter(|p| p.at <= now)
        .max_by_key(|p| p.at)
        .map(|p| p.usd_per_hour)
}

/// One Spot launch as the ledger books it (the run's item, `placements`), or its reclaim: a
/// relaunch after Spot took the instance books the attempt again with `reclaimed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// Which of the run's workers launched it (`1..=worker.count`).
    pub slot: u32,
    /// Which of that worker's launches it was.
    pub attempt: u32,
    /// The EC2 instance type launched.
    pub instance_type: String,
    /// The zone's name (`us-east-1b`).
    pub zone: String,
    /// Spot took the instance back (booked by the relaunch after it).
    pub reclaimed: bool,
}

/// How many of the ledger's most recent runs the reclaim rate counts.
pub const RECENT_RUNS: usize = 50;

/// What the ledger saw of one type in one zone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Spot attempts launched there.
    pub launches: u32,
    /// Of them, those Spot took back.
    pub reclaims: u32,
    /// The runs they belong to.
    pub runs: u32,
}

impl Seen {
    /// The expected attempts per useful one, `1 / (1 - r)` with `r = reclaims / (launches + 1)`.
    pub fn attempts_factor(&self) -> f64 {
        let n = f64::from(self.launches) + 1.0;
        let k = f64::from(self.reclaims.min(self.launches));
        n / (n - k)
    }
}

/// By type, then zone name.
pub type History = BTreeMap<String, BTreeMap<String, Seen>>;

/// One run as the history reads it: its execution, when it started, what it booked.
pub struct RunPlacements<'a> {
    /// The run's Step Functions execution ARN.
    pub execution: &'a str,
    /// When the run started, from its ledger item; None for an item written before it was kept.
    pub started_at: Option<DateTime<Utc>>,
    /// The Spot launches and reclaims its ledger item booked.
    pub placed: &'a [Placed],
}

/// The reclaim history of the [`RECENT_RUNS`] most recent runs that launched on Spot. An
/// attempt booked twice (a retried call, its reclaim) counts once, reclaimed if either says so.
pub fn history<'a>(runs: impl IntoIterator<Item = RunPlacements<'a>>) -> History {
    let mut runs: Vec<RunPlacements<'a>> =
        runs.into_iter().filter(|r| !r.placed.is_empty()).collect();
    // Newest first; a run without its start (written before it was kept) last.
    runs.sort_by_key(|r| std::cmp::Reverse(r.started_at));
    runs.truncate(RECENT_RUNS);
    let mut out = History::new();
    for run in runs {
        let mut attempts: BTreeMap<(u32, u32), (&Placed, bool)> = BTreeMap::new();
        for p in run.placed {
            let e = attempts.entry((p.slot, p.attempt)).or_insert((p, false));
            e.1 |= p.reclaimed;
        }
        let mut counted: BTreeSet<(&str, &str)> = BTreeSet::new();
        for (p, reclaimed) in attempts.values() {
            let seen = out
                .entry(p.instance_type.clone())
                .or_default()
                .entry(p.zone.clone())
                .or_default();
            seen.launches += 1;
            seen.reclaims += u32::from(*reclaimed);
            if counted.insert((&p.instance_type, &p.zone)) {
                seen.runs += 1;
            }
        }
    }
    out
}

/// One candidate with what it was weighed by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    /// Spot or On-Demand.
    pub market: Market,
    /// The EC2 instance type.
    pub instance_type: String,
    /// The subnet id.
    pub subnet: String,
    /// The zone's name, when known.
    #[serde(default)]
    pub zone: Option<String>,
    /// Spot only; None when EC2 did not score the zone (weighed as 1).
    #[serde(default)]
    pub score: Option<u8>,
    /// The price it was weighed at (Spot's now, or On-Demand's).
    #[serde(default)]
    pub usd_per_hour: Option<f64>,
    /// The type's vCPUs (DescribeInstanceTypes), that the price is divided by.
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Spot only: the ledger's recent runs there.
    #[serde(default)]
    pub seen: Seen,
    /// The expected cost it was ranked by: USD per vCPU-hour, weighted. None as written.
    #[serde(default)]
    pub weighted: Option<f64>,
}

impl Ranked {
    /// The candidate it ranks, without its facts.
    pub fn candidate(&self) -> Candidate {
        Candidate {
            market: self.market,
            instance_type: self.instance_type.clone(),
            subnet: self.subnet.clone(),
        }
    }

    /// "c7g.4xlarge in us-east-1b: score 9, $0.2100/h, 0 reclaims in 14 runs".
    pub fn line(&self) -> String {
        let place = self.zone.as_deref().unwrap_or(&self.subnet);
        let mut facts = vec![];
        if self.market == Market::Spot {
            facts.push(match self.score {
                Some(s) => format!("score {s}"),
                None => "not scored".into(),
            });
        }
        if let Some(p) = self.usd_per_hour {
            facts.push(format!("${p:.4}/h"));
        }
        if self.market == Market::Spot && self.weighted.is_some() {
            facts.push(format!(
                "{} reclaim{} in {} run{}",
                self.seen.reclaims,
                if self.seen.reclaims == 1 { "" } else { "s" },
                self.seen.runs,
                if self.seen.runs == 1 { "" } else { "s" }
            ));
        }
        let facts = match facts.is_empty() {
            true => String::new(),
            false => format!(": {}", facts.join(", ")),
        };
        format!("{} in {place}{facts}", self.instance_type)
    }
}

/// The order a launch tries, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranking {
    /// `capacity.order` as the RunSpec asked it.
    pub order: CapacityOrder,
    /// Why `price-capacity` kept the written order (a fact that could not be read).
    #[serde(default)]
    pub fallback: Option<String>,
    /// Every candidate, in the order to try.
    pub candidates: Vec<Ranked>,
}

/// How much of a fallback's reason the run document keeps.
pub const FALLBACK_KEPT: usize = 200;

/// How much of [`Choice::line`] an attempt keeps (the run document's and the report's): a
/// fallback's reason past it is in launch-worker's log. 112: a usual line whole ("tried
/// c6g.4xlarge in us-east-1b first: score 9, $0.1950/h, 0 reclaims in 0 runs (spot, 8
/// ranked)"), and forty workers with two relaunches each still inside the run document's
/// bound (`payload`, `tests/tests/run_cap.rs`).
pub const LINE_KEPT: usize = 112;

/// What the run document keeps of a ranking: the rule, any fallback, the first candidate with
/// its facts, and how many were ranked (every one is in launch-worker's log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// `capacity.order` as the RunSpec asked it.
    pub order: CapacityOrder,
    /// Why `price-capacity` kept the written order, cut at [`FALLBACK_KEPT`].
    #[serde(default)]
    pub fallback: Option<String>,
    /// The candidate tried first, with its facts; None when there was none.
    #[serde(default)]
    pub first: Option<Ranked>,
    /// How many candidates were ranked.
    pub ranked: u32,
}

impl Choice {
    /// "tried c7g.4xlarge in us-east-1b first: score 9, $0.2100/h, 0 reclaims in 14 runs
    /// (spot, 12 ranked)", or "written order (scores of c7g.4xlarge:
    /// RequestLimitExceeded: …): tried c7g.4xlarge in subnet-… first (spot)": short, since every
    /// attempt of a run keeps one ([`LINE_KEPT`]), the reason first so that a cut keeps it.
    pub fn line(&self) -> String {
        let market = self.first.as_ref().map_or("", |f| f.market.as_str());
        if let Some(why) = &self.fallback {
            let what = self.first.as_ref().map_or("no candidate".into(), |f| {
                format!(
                    "{} in {}",
                    f.instance_type,
                    f.zone.as_deref().unwrap_or(&f.subnet)
                )
            });
            return format!("written order ({why}): tried {what} first ({market})");
        }
        // Scores and reclaims in the facts say price-capacity: only the other rule is named,
        // to keep the line short (forty workers' attempts carry one each).
        let how = match self.order {
            crate::runspec::CapacityOrder::PriceCapacity => {
                format!("{market}, {} ranked", self.ranked)
            }
            other => format!("{market}, {}, {} ranked", other.as_str(), self.ranked),
        };
        match &self.first {
            Some(f) => {
                let line = f.line();
                let (what, facts) = line.split_once(": ").unwrap_or((&line, ""));
                let facts = match facts.is_empty() {
                    true => String::new(),
                    false => format!(": {facts}"),
                };
                format!("tried {what} first{facts} ({how})")
            }
            None => format!("no candidate ranked ({how})"),
        }
    }
}

impl Ranking {
    /// The candidates in the order to try.
    pub fn tried(&self) -> Vec<Candidate> {
        self.candidates.iter().map(Ranked::candidate).collect()
    }

    /// What the run document keeps of this ranking.
    pub fn choice(&self) -> Choice {
        Choice {
            order: self.order,
            fallback: self
                .fallback
                .as_deref()
                .map(|f| crate::caps::cap(f, FALLBACK_KEPT)),
            first: self.candidates.first().cloned(),
            ranked: u32::try_from(self.candidates.len()).unwrap_or(u32::MAX),
        }
    }
}

/// The facts a ranking weighs, beside the candidates.
pub struct Facts<'a> {
    /// What EC2 said, or why it could not be read.
    pub observed: Result<&'a Observed, String>,
    /// Each candidate type's vCPUs (DescribeInstanceTypes).
    pub vcpus: &'a HashMap<String, u32>,
    /// The candidates' On-Demand prices (the run's `$.quota.prices`, or the plan's).
    pub on_demand: &'a [TypePrice],
    /// The ledger's reclaims of the recent runs, by type and zone ([`history`]).
    pub history: &'a History,
}

/// The candidates (in the written order, markets first: `capacity::candidates`) in the order
/// `order` tries them. `as-written` reads nothing and keeps them as they are.
pub fn rank(order: CapacityOrder, written: &[Candidate], facts: &Facts<'_>) -> Ranking {
    let as_written = |fallback: Option<String>| Ranking {
        order,
        fallback,
        candidates: written
            .iter()
            .map(|c| Ranked {
                market: c.market,
                instance_type: c.instance_type.clone(),
                subnet: c.subnet.clone(),
                zone: None,
                score: None,
                usd_per_hour: None,
                vcpus: None,
                seen: Seen::default(),
                weighted: None,
            })
            .collect(),
    };
    if order == CapacityOrder::AsWritten {
        return as_written(None);
    }
    let observed = match &facts.observed {
        Ok(o) => o,
        Err(why) => return as_written(Some(why.clone())),
    };
    match weigh_all(written, observed, facts) {
        Ok(mut ranked) => {
            // Stable, within each market: equal weights keep the written order, and the
            // markets keep theirs.
            let market_at = |m: Market| written.iter().position(|c| c.market == m);
            ranked.sort_by(|a, b| {
                market_at(a.market)
                    .cmp(&market_at(b.market))
                    .then(key(a).cmp(&key(b)))
            });
            Ranking {
                order,
                fallback: None,
                candidates: ranked,
            }
        }
        Err(why) => as_written(Some(why)),
    }
}

/// A weight compared at a billionth of a dollar per vCPU-hour: two candidates that differ only
/// in a float's last bits are a tie, which keeps the written order.
fn key(r: &Ranked) -> i64 {
    r.weighted.map_or(i64::MAX, |w| (w * 1e9).round() as i64)
}

fn weigh_all(
    written: &[Candidate],
    observed: &Observed,
    facts: &Facts<'_>,
) -> Result<Vec<Ranked>, String> {
    written.iter().map(|c| weigh(c, observed, facts)).collect()
}

fn weigh(c: &Candidate, observed: &Observed, facts: &Facts<'_>) -> Result<Ranked, String> {
    let zone = observed.zones.get(&c.subnet);
    let vcpus = facts
        .vcpus
        .get(&c.instance_type)
        .copied()
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("the vCPUs of {} are unknown", c.instance_type))?;
    let on_demand = facts
        .on_demand
        .iter()
        .find(|p| p.instance_type == c.instance_type)
        .map(|p| p.usd_per_hour);
    let mut r = Ranked {
        market: c.market,
        instance_type: c.instance_type.clone(),
        subnet: c.subnet.clone(),
        zone: zone.map(|z| z.name.clone()),
        score: None,
        usd_per_hour: None,
        vcpus: Some(vcpus),
        seen: Seen::default(),
        weighted: None,
    };
    match c.market {
        Market::OnDemand => {
            let p = on_demand
                .ok_or_else(|| format!("no On-Demand price of {} is known", c.instance_type))?;
            r.usd_per_hour = Some(p);
            r.weighted = Some(p / f64::from(vcpus));
        }
        Market::Spot => {
            let zone = zone.ok_or_else(|| format!("the zone of subnet {} is unknown", c.subnet))?;
            let scores = match observed.scores.get(&c.instance_type) {
                Some(Ok(s)) => s,
                Some(Err(why)) => return Err(format!("scores of {}: {why}", c.instance_type)),
                None => return Err(format!("scores of {}: not asked", c.instance_type)),
            };
            let price = observed
                .spot
                .get(&c.instance_type)
                .and_then(|z| z.get(&zone.name))
                .copied()
                .ok_or_else(|| {
                    format!(
                        "Spot price of {} in {}: not read",
                        c.instance_type, zone.name
                    )
                })?;
            r.score = scores.get(&zone.id).copied();
            r.usd_per_hour = Some(price);
            r.seen = facts
                .history
                .get(&c.instance_type)
                .and_then(|z| z.get(&zone.name))
                .copied()
                .unwrap_or_default();
            let score = f64::from(r.score.unwrap_or(1).clamp(1, 10));
            r.weighted = Some(price / f64::from(vcpus) * (10.0 / score) * r.seen.attempts_factor());
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap()
    }

    const TYPES: [&str; 2] = ["c7g.4xlarge", "c6g.4xlarge"];
    const SUBNETS: [&str; 2] = ["subnet-a", "subnet-b"];

    fn written(markets: &[Market]) -> Vec<Candidate> {
        let types: Vec<String> = TYPES.iter().map(|t| t.to_string()).collect();
        let subnets: Vec<String> = SUBNETS.iter().map(|s| s.to_string()).collect();
        crate::capacity::candidates(&types, &subnets, markets)
    }

    /// Every candidate alike: 16 vCPUs, Spot $0.20/h, On-Demand $0.58/h, score 8, no history.
    fn observed() -> Observed {
        let zones: BTreeMap<String, Zone> = SUBNETS
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    s.to_string(),
                    Zone {
                        name: format!("us-east-1{}", (b'a' + i as u8) as char),
                        id: format!("use1-az{}", i + 1),
                    },
                )
            })
            .collect();
        let mut spot = BTreeMap::new();
        let mut scores = BTreeMap::new();
        for t in TYPES {
            spot.insert(
                t.to_string(),
                zones.values().map(|z| (z.name.clone(), 0.20)).collect(),
            );
            scores.insert(
                t.to_string(),
                Ok(zones.values().map(|z| (z.id.clone(), 8)).collect()),
            );
        }
        Observed {
            zones,
            spot,
            scores,
            read_at: now(),
        }
    }

    fn vcpus() -> HashMap<String, u32> {
        TYPES.iter().map(|t| (t.to_string(), 16)).collect()
    }

    fn on_demand() -> Vec<TypePrice> {
        TYPES
            .iter()
            .map(|t| TypePrice {
                instance_type: t.to_string(),
                usd_per_hour: 0.58,
                source: "table".into(),
            })
            .collect()
    }

    fn ranked(o: &Observed, history: &History, markets: &[Market]) -> Vec<String> {
        let (v, od) = (vcpus(), on_demand());
        let r = rank(
            CapacityOrder::PriceCapacity,
            &written(markets),
            &Facts {
                observed: Ok(o),
                vcpus: &v,
                on_demand: &od,
                history,
            },
        );
        assert_eq!(r.fallback, None);
        r.candidates
            .iter()
            .map(|c| format!("{}/{}/{}", c.market.as_str(), c.instance_type, c.subnet))
            .collect()
    }

    fn written_names(markets: &[Market]) -> Vec<String> {
        written(markets)
            .iter()
            .map(|c| format!("{}/{}/{}", c.market.as_str(), c.instance_type, c.subnet))
            .collect()
    }

    #[test]
    fn ties_keep_the_written_order_and_on_demand_stays_after_spot() {
        let both = [Market::Spot, Market::OnDemand];
        assert_eq!(
            ranked(&observed(), &History::new(), &both),
            written_names(&both)
        );
        // On-Demand far cheaper than any Spot candidate still comes after them.
        let mut o = observed();
        for z in o.spot.values_mut() {
            for p in z.values_mut() {
                *p = 5.0;
            }
        }
        let r = ranked(&o, &History::new(), &both);
        assert!(r[..4].iter().all(|c| c.starts_with("spot/")), "{r:?}");
        assert!(r[4..].iter().all(|c| c.starts_with("on-demand/")), "{r:?}");
    }

    #[test]
    fn a_dearer_first_choice_moves_down() {
        let mut o = observed();
        o.spot
            .get_mut("c7g.4xlarge")
            .unwrap()
            .insert("us-east-1a".into(), 0.30);
        let r = ranked(&o, &History::new(), &[Market::Spot]);
        assert_eq!(
            r,
            [
                "spot/c7g.4xlarge/subnet-b",
                "spot/c6g.4xlarge/subnet-a",
                "spot/c6g.4xlarge/subnet-b",
                "spot/c7g.4xlarge/subnet-a"
            ]
        );
        // Per vCPU-hour: a type with twice the vCPUs at twice the price is a tie.
        let mut v = vcpus();
        v.insert("c6g.4xlarge".into(), 32);
        let mut o = observed();
        for p in o.spot.get_mut("c6g.4xlarge").unwrap().values_mut() {
            *p = 0.40;
        }
        let od = on_demand();
        let r = rank(
            CapacityOrder::PriceCapacity,
            &written(&[Market::Spot]),
            &Facts {
                observed: Ok(&o),
                vcpus: &v,
                on_demand: &od,
                history: &History::new(),
            },
        );
        assert_eq!(r.tried(), written(&[Market::Spot]));
        assert_eq!(r.candidates[2].weighted, r.candidates[0].weighted);
    }

    #[test]
    fn a_low_score_moves_down_unless_the_price_makes_up_for_it() {
        let mut o = observed();
        o.scores.insert(
            "c7g.4xlarge".into(),
            Ok([("use1-az1".to_string(), 1), ("use1-az2".to_string(), 8)].into()),
        );
        let r = ranked(&o, &History::new(), &[Market::Spot]);
        assert_eq!(r.last().unwrap(), "spot/c7g.4xlarge/subnet-a", "{r:?}");
        assert_eq!(r[0], "spot/c7g.4xlarge/subnet-b");
        // Score 1 against 8 is a factor of 8: a price nine times lower comes first again.
        o.spot
            .get_mut("c7g.4xlarge")
            .unwrap()
            .insert("us-east-1a".into(), 0.20 / 9.0);
        assert_eq!(
            ranked(&o, &History::new(), &[Market::Spot])[0],
            "spot/c7g.4xlarge/subnet-a"
        );
        // A zone EC2 did not score weighs as 1.
        let mut o = observed();
        o.scores.insert(
            "c7g.4xlarge".into(),
            Ok([("use1-az2".to_string(), 8)].into()),
        );
        let r = ranked(&o, &History::new(), &[Market::Spot]);
        assert_eq!(r.last().unwrap(), "spot/c7g.4xlarge/subnet-a", "{r:?}");
    }

    #[test]
    fn reclaim_history_moves_a_candidate_down() {
        let placed = |attempt, reclaimed| Placed {
            slot: 1,
            attempt,
            instance_type: "c7g.4xlarge".into(),
            zone: "us-east-1a".into(),
            reclaimed,
        };
        // Two runs: one reclaimed on its first attempt (booked at launch, then as reclaimed),
        // one not.
        let first = [placed(1, false), placed(1, true)];
        let second = [placed(1, false)];
        let h = history([
            RunPlacements {
                execution: "e1",
                started_at: Some(now()),
                placed: &first,
            },
            RunPlacements {
                execution: "e2",
                started_at: Some(now()),
                placed: &second,
            },
        ]);
        let seen = h["c7g.4xlarge"]["us-east-1a"];
        assert_eq!(
            seen,
            Seen {
                launches: 2,
                reclaims: 1,
                runs: 2
            }
        );
        assert_eq!(seen.attempts_factor(), 1.5);
        let r = ranked(&observed(), &h, &[Market::Spot]);
        assert_eq!(r.last().unwrap(), "spot/c7g.4xlarge/subnet-a", "{r:?}");
        assert_eq!(r[0], "spot/c7g.4xlarge/subnet-b");
        // Launches without a reclaim leave it where it was.
        let h = history([RunPlacements {
            execution: "e2",
            started_at: Some(now()),
            placed: &second,
        }]);
        assert_eq!(
            ranked(&observed(), &h, &[Market::Spot]),
            written_names(&[Market::Spot])
        );
    }

    #[test]
    fn the_history_counts_the_most_recent_runs_only() {
        let old = [Placed {
            slot: 1,
            attempt: 1,
            instance_type: "c7g.4xlarge".into(),
            zone: "us-east-1a".into(),
            reclaimed: true,
        }];
        let fresh = [Placed {
            reclaimed: false,
            ..old[0].clone()
        }];
        let names: Vec<String> = (0..RECENT_RUNS).map(|i| format!("e{i}")).collect();
        let mut runs: Vec<RunPlacements> = names
            .iter()
            .map(|e| RunPlacements {
                execution: e,
                started_at: Some(now()),
                placed: &fresh,
            })
            .collect();
        runs.push(RunPlacements {
            execution: "older",
            started_at: Some(now() - chrono::Duration::days(20)),
            placed: &old,
        });
        let h = history(runs);
        assert_eq!(h["c7g.4xlarge"]["us-east-1a"].reclaims, 0);
        assert_eq!(h["c7g.4xlarge"]["us-east-1a"].runs, RECENT_RUNS as u32);
    }

    #[test]
    fn a_fact_that_could_not_be_read_keeps_the_written_order_and_says_why() {
        let (v, od, h) = (vcpus(), on_demand(), History::new());
        let both = [Market::Spot, Market::OnDemand];
        let mut o = observed();
        o.spot
            .get_mut("c7g.4xlarge")
            .unwrap()
            .insert("us-east-1a".into(), 9.0);
        o.scores.insert(
            "c6g.4xlarge".into(),
            Err("RequestLimitExceeded: Request limit exceeded.".into()),
        );
        let facts = Facts {
            observed: Ok(&o),
            vcpus: &v,
            on_demand: &od,
            history: &h,
        };
        let r = rank(CapacityOrder::PriceCapacity, &written(&both), &facts);
        assert_eq!(r.tried(), written(&both));
        let why = r.fallback.as_deref().unwrap();
        assert!(
            why.contains("c6g.4xlarge") && why.contains("RequestLimitExceeded"),
            "{why}"
        );
        let line = r.choice().line();
        assert!(
            line.starts_with(
                "written order (scores of c6g.4xlarge: RequestLimitExceeded: Request limit exceeded.): tried c7g.4xlarge in subnet-a first (spot)"
            ),
            "{line}"
        );
        // Nothing read at all (DescribeSubnets denied): the same.
        let facts = Facts {
            observed: Err("ec2:DescribeSubnets: UnauthorizedOperation".into()),
            ..facts
        };
        let r = rank(CapacityOrder::PriceCapacity, &written(&both), &facts);
        assert_eq!(r.tried(), written(&both));
        assert!(r.fallback.unwrap().contains("UnauthorizedOperation"));
        // As written reads nothing and ranks nothing.
        let r = rank(CapacityOrder::AsWritten, &written(&both), &facts);
        assert_eq!((r.tried(), r.fallback), (written(&both), None));
    }

    #[test]
    fn the_choice_names_the_first_candidate_and_its_facts() {
        let mut o = observed();
        o.spot
            .get_mut("c7g.4xlarge")
            .unwrap()
            .insert("us-east-1a".into(), 0.21);
        let (v, od) = (vcpus(), on_demand());
        let h: History = [(
            "c7g.4xlarge".to_string(),
            [(
                "us-east-1b".to_string(),
                Seen {
                    launches: 14,
                    reclaims: 0,
                    runs: 14,
                },
            )]
            .into(),
        )]
        .into();
        let r = rank(
            CapacityOrder::PriceCapacity,
            &written(&[Market::Spot, Market::OnDemand]),
            &Facts {
                observed: Ok(&o),
                vcpus: &v,
                on_demand: &od,
                history: &h,
            },
        );
        assert_eq!(
            r.choice().line(),
            "tried c7g.4xlarge in us-east-1b first: score 8, $0.2000/h, 0 reclaims in 14 runs (spot, 8 ranked)"
        );
        assert_eq!(price_now(&[], now()), None);
        let at = |h: i64, usd| PricePoint {
            at: now() - chrono::Duration::hours(h),
            usd_per_hour: usd,
        };
        assert_eq!(
            price_now(&[at(3, 0.1), at(1, 0.2), at(-1, 0.3)], now()),
            Some(0.2)
        );
    }
}

//! The cost model: EC2 per-second billing with a 60 s minimum, the Spot price integral over the
//! billed interval, EBS GiB-seconds and the orchestration's own cost.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::{
    GP3_USD_PER_GIB_MONTH, HOURS_PER_MONTH, LAMBDA_ARM_USD_PER_GB_SECOND, LAMBDA_USD_PER_REQUEST,
    SFN_USD_PER_TRANSITION,
};

/// EC2's minimum charge per instance launch, in seconds: shorter lives are billed as 60 s.
pub const MINIMUM_BILLED_SECONDS: i64 = 60;

/// Seconds EC2 bills for an instance that ran from `start` to `end` (whole seconds, 60 s minimum).
pub fn billed_seconds(start: DateTime<Utc>, end: DateTime<Utc>) -> i64 {
    let ms = (end - start).num_milliseconds().max(0);
    let secs = (ms + 999) / 1000;
    secs.max(MINIMUM_BILLED_SECONDS)
}

/// A candidate type's On-Demand price, read once per run (quota-check, when the quotas have
/// room) and carried in `$.quota.prices` to every launch and to the report: forty workers
/// would otherwise ask the Price List API forty times for the same figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypePrice {
    /// The EC2 instance type (`c7g.large`).
    pub instance_type: String,
    /// Its On-Demand price in the run's region, in USD per hour.
    pub usd_per_hour: f64,
    /// `price-list-api`, or the dated fallback table (cut at `caps::DETAIL_KEPT`).
    pub source: String,
}

/// One entry of DescribeSpotPriceHistory: the price in force from `at` on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PricePoint {
    /// When this price came into force.
    pub at: DateTime<Utc>,
    /// The Spot price from `at` on, in USD per hour.
    pub usd_per_hour: f64,
}

/// ∫ price(t) dt over [start, start + billed) in USD. The price in force at a moment is the last
/// point at or before it; before the first point the first point's price applies (AWS returns the
/// price in force at the window's start as a point dated earlier, so this only matters for gaps).
pub fn spot_cost(history: &[PricePoint], start: DateTime<Utc>, billed: i64) -> Option<f64> {
    if history.is_empty() {
        return None;
    }
    let mut points = history.to_vec();
    points.sort_by_key(|p| p.at);
    let end = start + Duration::seconds(billed);
    let mut total = 0.0;
    for (k, point) in points.iter().enumerate() {
        let from = if k == 0 { start } else { point.at.max(start) };
        let to = points.get(k + 1).map_or(end, |next| next.at.min(end));
        if to > from {
            total += point.usd_per_hour * (to - from).num_milliseconds() as f64 / 3_600_000.0;
        }
    }
    Some(total)
}

/// What `billed` seconds cost at `usd_per_hour`, in USD.
pub fn on_demand_cost(usd_per_hour: f64, billed: i64) -> f64 {
    usd_per_hour * billed as f64 / 3600.0
}

/// gp3 volume cost for `seconds` (EBS bills per second, GiB-month = 730 h).
pub fn ebs_cost(gib: u32, seconds: i64) -> f64 {
    gib as f64 * GP3_USD_PER_GIB_MONTH * seconds.max(0) as f64 / (HOURS_PER_MONTH * 3600.0)
}

/// What the state machine and its Lambdas cost one run, from the execution's history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Orchestration {
    /// The state transitions Step Functions billed.
    pub state_transitions: u64,
    /// The Lambda invocations the execution made.
    pub lambda_invocations: u64,
    /// The Lambdas' compute: their running seconds times their memory in GB.
    pub lambda_gb_seconds: f64,
    /// The sum of the three at the catalog's prices, in USD.
    pub usd: f64,
}

/// The orchestration's cost at the catalog's prices (`SFN_USD_PER_TRANSITION`, the Lambda request
/// and arm GB-second prices).
pub fn orchestration_cost(transitions: u64, invocations: u64, gb_seconds: f64) -> Orchestration {
    Orchestration {
        state_transitions: transitions,
        lambda_invocations: invocations,
        lambda_gb_seconds: gb_seconds,
        usd: transitions as f64 * SFN_USD_PER_TRANSITION
            + invocations as f64 * LAMBDA_USD_PER_REQUEST
            + gb_seconds * LAMBDA_ARM_USD_PER_GB_SECOND,
    }
}

/// The worst case before launch: the dearest candidate On-Demand for the whole max runtime
/// (Spot never bills above On-Demand, since ephemera does not set a higher max price), plus EBS.
pub fn estimate(max_on_demand_hourly: f64, volume_gib: u32, max_runtime_seconds: u64) -> f64 {
    let secs = (max_runtime_seconds as i64).max(MINIMUM_BILLED_SECONDS);
    on_demand_cost(max_on_demand_hourly, secs) + ebs_cost(volume_gib, secs)
}

/// Rounds to a tenth of a cent's hundredth, enough for a report.
pub fn usd(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn p(s: i64, price: f64) -> PricePoint {
        PricePoint {
            at: t(s),
            usd_per_hour: price,
        }
    }

    #[test]
    fn sixty_second_minimum_and_rounding_up() {
        assert_eq!(billed_seconds(t(0), t(5)), 60);
        assert_eq!(billed_seconds(t(0), t(60)), 60);
        assert_eq!(billed_seconds(t(0), t(61)), 61);
        assert_eq!(
            billed_seconds(t(0), t(100) + Duration::milliseconds(1)),
            101
        );
        assert_eq!(billed_seconds(t(10), t(0)), 60);
    }

    #[test]
    fn constant_price() {
        // 0.36 $/h for one hour = 0.36 $.
        let c = spot_cost(&[p(-5000, 0.36)], t(0), 3600).unwrap();
        assert!((c - 0.36).abs() < 1e-12, "{c}");
    }

    #[test]
    fn price_change_mid_run() {
        // 0.30 $/h for the first 1800 s, then 0.60 $/h for 1800 s:
        // 0.30 * 0.5 + 0.60 * 0.5 = 0.45 $.
        let h = [p(-100, 0.30), p(1800, 0.60)];
        let c = spot_cost(&h, t(0), 3600).unwrap();
        assert!((c - 0.45).abs() < 1e-12, "{c}");
        // Two changes, unsorted input: 0.2 for 600 s, 0.4 for 1200 s, 0.1 for 1800 s
        // = 0.2/6 + 0.4/3 + 0.1/2 = 0.0333.. + 0.1333.. + 0.05 = 0.21666..
        let h = [p(1800, 0.1), p(-1, 0.2), p(600, 0.4)];
        let c = spot_cost(&h, t(0), 3600).unwrap();
        assert!((c - (0.2 / 6.0 + 0.4 / 3.0 + 0.05)).abs() < 1e-12, "{c}");
    }

    #[test]
    fn changes_outside_the_interval_are_ignored() {
        let h = [p(-7200, 9.0), p(-10, 0.72), p(7200, 5.0)];
        let c = spot_cost(&h, t(0), 60).unwrap();
        // 60 s minimum at 0.72 $/h = 0.012 $.
        assert!((c - 0.012).abs() < 1e-12, "{c}");
    }

    #[test]
    fn first_point_after_start_applies_from_start() {
        let c = spot_cost(&[p(100, 0.36)], t(0), 3600).unwrap();
        assert!((c - 0.36).abs() < 1e-12, "{c}");
        assert_eq!(spot_cost(&[], t(0), 60), None);
    }

    #[test]
    fn ebs_and_on_demand_and_estimate() {
        // 100 GiB for 730 h = 8 $.
        assert!((ebs_cost(100, 730 * 3600) - 8.0).abs() < 1e-9);
        assert!((on_demand_cost(0.58, 1800) - 0.29).abs() < 1e-12);
        // 0.58 $/h for 4 h + 30 GiB for 4 h.
        let e = estimate(0.58, 30, 4 * 3600);
        assert!((e - (2.32 + 30.0 * 0.08 * 4.0 / 730.0)).abs() < 1e-9, "{e}");
        let o = orchestration_cost(40, 10, 2.0);
        assert!((o.usd - (0.001 + 0.000002 + 0.0000266668)).abs() < 1e-12);
    }
}

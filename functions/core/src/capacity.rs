//! Capacity fallback: the order in which launch candidates are tried, what an EC2 error means
//! for the next candidate, and the ClientToken that makes a retried launch return the same instance.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::market::{Market, MarketPolicy};

/// One place a launch may try: a market, an instance type and a subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Spot or On-Demand.
    pub market: Market,
    /// The EC2 instance type (one of `worker.instance_types`).
    pub instance_type: String,
    /// The subnet id (one of `worker.subnets`).
    pub subnet: String,
}

/// The markets a launch tries, in order: the policy's (On-Demand alone after a Spot reclaim)
/// among those quota-check found room in (`with_room`). A market without room would refuse
/// every one of its candidates (MaxSpotInstanceCountExceeded, VcpuLimitExceeded), a
/// RunInstances call each from the account's bucket, before the launch got to the other.
/// When the reclaim's On-Demand has no room, Spot (with room) is tried rather than nothing.
/// Without `with_room` (an input from before quota-check said it), the policy's markets.
pub fn markets_to_try(policy: MarketPolicy, relaunch: bool, with_room: &[Market]) -> Vec<Market> {
    if with_room.is_empty() {
        return policy.markets(relaunch);
    }
    let among = |ms: Vec<Market>| -> Vec<Market> {
        ms.into_iter().filter(|m| with_room.contains(m)).collect()
    };
    let first = among(policy.markets(relaunch));
    if !first.is_empty() {
        return first;
    }
    let any = among(policy.markets(false));
    if any.is_empty() {
        policy.markets(relaunch)
    } else {
        any
    }
}

/// Market first (Spot before On-Demand), then the user's type order, then subnets.
pub fn candidates(types: &[String], subnets: &[String], markets: &[Market]) -> Vec<Candidate> {
    let mut out = vec![];
    for &market in markets {
        for t in types {
            for s in subnets {
                out.push(Candidate {
                    market,
                    instance_type: t.clone(),
                    subnet: s.clone(),
                });
            }
        }
    }
    out
}

/// What a RunInstances error means for the launch's other candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchErrorKind {
    /// No capacity for this type/AZ/market now: try the next candidate.
    Capacity,
    /// An account limit other than the vCPU quotas (InstanceLimitExceeded, a per-type count):
    /// try the next candidate, whose limit may differ.
    Limit,
    /// A vCPU quota refused the launch (`crate::vcpus::is_quota_refusal`): every candidate
    /// drawing on the same quota would be refused too, so they are skipped; when no other
    /// candidate launches, the worker waits for the quota and launches again rather than being
    /// lost (`crate::vcpus::after_refusal`).
    Quota,
    /// The whole market is closed to this account for now (no Spot service-linked role and no
    /// permission to create it): skip the market's other candidates, try the next market.
    Market,
    /// EC2 throttled the call or failed on its side: ask again, after a backoff. The ClientToken
    /// makes the same request the same launch. Throttling is per account and region, so another
    /// candidate would be throttled too
    /// (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html).
    Transient,
    /// A mistake that no other candidate fixes (bad AMI, permissions): stop.
    Fatal,
}

/// How long one launch keeps waiting out EC2's throttle on RunInstances before it gives the
/// call back to its state's Retry: RunInstances has a bucket of 5 requests refilled at 2 a
/// second per account and region
/// (<https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html>), so forty
/// workers walking ten Spot candidates each through a shortage ask for four hundred calls,
/// over three minutes of the account's RunInstances. Within launch-worker's 300 s timeout.
pub const THROTTLE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(180);

/// The wait after the `n`th throttled call (from 0): full jitter over a ceiling doubling from
/// 1 s up to 20 s (`draw` in 0..1), so that throttled launches spread over the refill instead
/// of asking again together.
pub fn throttle_wait(n: u32, draw: f64) -> std::time::Duration {
    let ceiling = 2_f64.powi(n.min(8) as i32).min(20.0);
    std::time::Duration::from_secs_f64(ceiling * draw.clamp(0.0, 1.0)).max(THROTTLE_WAIT_FLOOR)
}

/// No wait shorter than a refill (EC2 adds RunInstances tokens at 2 a second).
const THROTTLE_WAIT_FLOOR: std::time::Duration = std::time::Duration::from_millis(500);

/// True for EC2's throttle (as opposed to its other transient answers).
pub fn is_throttle(code: &str) -> bool {
    code == "RequestLimitExceeded"
}

/// Classifies an EC2 RunInstances error code (and, for a parameter error, its message).
pub fn classify(code: &str, message: &str) -> LaunchErrorKind {
    match code {
        "InsufficientInstanceCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "SpotMaxPriceTooLow"
        | "Unsupported"
        | "InsufficientFreeAddressesInSubnet"
        | "InvalidAvailabilityZone" => LaunchErrorKind::Capacity,
        // A fresh account has no Spot service-linked role until a principal allowed to create
        // it launches Spot (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/service-linked-roles-spot-instance-requests.html).
        "AuthFailure.ServiceLinkedRoleCreationNotPermitted" => LaunchErrorKind::Market,
        c if crate::vcpus::is_quota_refusal(c) => LaunchErrorKind::Quota,
        "InstanceLimitExceeded" => LaunchErrorKind::Limit,
        // EC2's throttling and server-side codes
        // (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html).
        "RequestLimitExceeded" | "InternalError" | "Unavailable" | "ServiceUnavailable" => {
            LaunchErrorKind::Transient
        }
        // An AZ that cannot take the type is reported as a parameter error.
        "InvalidParameterValue" | "InvalidParameterCombination"
            if message.contains("Availability Zone") && message.contains("not supported") =>
        {
            LaunchErrorKind::Capacity
        }
        _ => LaunchErrorKind::Fatal,
    }
}

/// What one candidate answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tried {
    /// The candidate's market.
    pub market: Market,
    /// The candidate's instance type.
    pub instance_type: String,
    /// The candidate's subnet id.
    pub subnet: String,
    /// RunInstances' error code (`InsufficientInstanceCapacity`, …), cut at `caps::CODE_KEPT`.
    pub code: String,
    /// RunInstances' error message, cut at `caps::TRIED_MESSAGE_KEPT`.
    pub message: String,
}

impl std::fmt::Display for Tried {
    /// `spot c7g.4xlarge in subnet-1: InsufficientInstanceCapacity`: the candidate and EC2's code.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} in {}: {}",
            self.market.as_str(),
            self.instance_type,
            self.subnet,
            self.code
        )
    }
}

/// Whether any candidate was refused by a vCPU quota: then the launch is a quota verdict (the
/// worker waits for room), not a shortage of capacity (the worker is lost).
pub fn refused_for_quota(tried: &[Tried]) -> bool {
    tried
        .iter()
        .any(|t| crate::vcpus::is_quota_refusal(&t.code))
}

/// RunInstances' ClientToken (at most 64 ASCII characters): one per execution, worker, attempt
/// and candidate, so a retried call for the same candidate returns the same instance, and two
/// candidates (or two workers on one candidate) never collide with IdempotentParameterMismatch
/// or share an instance.
pub fn client_token(execution: &str, worker: u32, attempt: u32, candidate: &Candidate) -> String {
    client_token_after_waits(execution, worker, attempt, candidate, 0)
}

/// [`client_token`] for a launch after the worker waited `quota_waits` times for vCPU quota:
/// each wait re-enters LaunchWorker, whose tags (the deadline) are then new, so its requests are
/// new ones (the same token with other parameters is IdempotentParameterMismatch). The same as
/// [`client_token`] before any wait.
pub fn client_token_after_waits(
    execution: &str,
    worker: u32,
    attempt: u32,
    candidate: &Candidate,
    quota_waits: u32,
) -> String {
    let mut h = Sha256::new();
    h.update(execution.as_bytes());
    h.update([0]);
    h.update(worker.to_be_bytes());
    h.update(attempt.to_be_bytes());
    h.update(candidate.market.as_str().as_bytes());
    h.update([0]);
    h.update(candidate.instance_type.as_bytes());
    h.update([0]);
    h.update(candidate.subnet.as_bytes());
    if quota_waits > 0 {
        h.update([0]);
        h.update(quota_waits.to_be_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("eph-{attempt}-{}", &hex[..48])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_market_type_subnet() {
        let c = candidates(
            &["a.large".into(), "b.large".into()],
            &["s1".into(), "s2".into()],
            &[Market::Spot, Market::OnDemand],
        );
        let names: Vec<String> = c
            .iter()
            .map(|c| format!("{}/{}/{}", c.market.as_str(), c.instance_type, c.subnet))
            .collect();
        assert_eq!(
            names,
            vec![
                "spot/a.large/s1",
                "spot/a.large/s2",
                "spot/b.large/s1",
                "spot/b.large/s2",
                "on-demand/a.large/s1",
                "on-demand/a.large/s2",
                "on-demand/b.large/s1",
                "on-demand/b.large/s2"
            ]
        );
    }

    #[test]
    fn classification() {
        use LaunchErrorKind::*;
        for c in [
            "InsufficientInstanceCapacity",
            "SpotMaxPriceTooLow",
            "InsufficientHostCapacity",
            "Unsupported",
        ] {
            assert_eq!(classify(c, ""), Capacity, "{c}");
        }
        // A vCPU quota's refusal is a quota verdict, not a candidate without capacity.
        assert_eq!(classify("VcpuLimitExceeded", ""), Quota);
        assert_eq!(classify("MaxSpotInstanceCountExceeded", ""), Quota);
        assert_eq!(classify("InstanceLimitExceeded", ""), Limit);
        assert!(refused_for_quota(&[Tried {
            market: crate::market::Market::OnDemand,
            instance_type: "c7g.large".into(),
            subnet: "s".into(),
            code: "VcpuLimitExceeded".into(),
            message: String::new(),
        }]));
        assert!(!refused_for_quota(&[]));
        assert_eq!(
            classify(
                "InvalidParameterValue",
                "Your requested instance type is not supported in your requested Availability Zone"
            ),
            Capacity
        );
        assert_eq!(classify("InvalidParameterValue", "bad volume size"), Fatal);
        assert_eq!(classify("InvalidAMIID.NotFound", ""), Fatal);
        assert_eq!(classify("UnauthorizedOperation", ""), Fatal);
        // Throttling is the account's, not the candidate's: the same launch again, later.
        assert!(is_throttle("RequestLimitExceeded") && !is_throttle("InternalError"));
        let waits: Vec<f64> = (0..8)
            .map(|n| throttle_wait(n, 1.0).as_secs_f64())
            .collect();
        assert_eq!(waits, vec![1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0, 20.0]);
        assert_eq!(
            throttle_wait(3, 0.0).as_millis(),
            500,
            "never sooner than a refill"
        );
        assert_eq!(throttle_wait(3, 0.5).as_secs_f64(), 4.0);
        for c in [
            "RequestLimitExceeded",
            "InternalError",
            "Unavailable",
            "ServiceUnavailable",
        ] {
            assert_eq!(classify(c, ""), Transient, "{c}");
        }
        assert_eq!(
            classify("AuthFailure.ServiceLinkedRoleCreationNotPermitted", ""),
            Market
        );
    }

    #[test]
    fn tokens_are_stable_distinct_and_short() {
        let c1 = Candidate {
            market: Market::Spot,
            instance_type: "c7g.large".into(),
            subnet: "subnet-1".into(),
        };
        let mut c2 = c1.clone();
        c2.market = Market::OnDemand;
        let exec = "arn:aws:states:us-east-1:123456789012:execution:ephemera:run-1";
        assert_eq!(client_token(exec, 1, 1, &c1), client_token(exec, 1, 1, &c1));
        assert_ne!(client_token(exec, 1, 1, &c1), client_token(exec, 1, 2, &c1));
        assert_ne!(client_token(exec, 1, 1, &c1), client_token(exec, 1, 1, &c2));
        assert_ne!(
            client_token(exec, 1, 1, &c1),
            client_token(&exec.replace("run-1", "run-2"), 1, 1, &c1)
        );
        // After a wait for quota, a new request; before any, the same token as ever.
        assert_eq!(
            client_token_after_waits(exec, 1, 1, &c1, 0),
            client_token(exec, 1, 1, &c1)
        );
        assert_ne!(
            client_token_after_waits(exec, 1, 1, &c1, 1),
            client_token(exec, 1, 1, &c1)
        );
        // Two workers of one run on the same candidate are two instances.
        assert_ne!(client_token(exec, 1, 1, &c1), client_token(exec, 2, 1, &c1));
        // EC2 refuses a ClientToken over 64 ASCII characters: the longest one this can make,
        // the last attempt number of a long execution ARN on a long type and subnet, fits.
        let long = Candidate {
            market: Market::OnDemand,
            instance_type: "u7in-32tb.224xlarge".into(),
            subnet: "subnet-0123456789abcdef0".into(),
        };
        let t = client_token(
            &format!("{exec}{}", "-x".repeat(100)),
            u32::MAX,
            u32::MAX,
            &long,
        );
        assert!(t.len() <= 64 && t.is_ascii(), "{} characters: {t}", t.len());
    }

    #[test]
    fn a_launch_tries_only_the_markets_with_room() {
        use Market::{OnDemand, Spot};
        let both = MarketPolicy::SpotThenOnDemand;
        assert_eq!(
            markets_to_try(both, false, &[Spot, OnDemand]),
            [Spot, OnDemand]
        );
        // quota-check's "spot short, so the run starts with on-demand".
        assert_eq!(markets_to_try(both, false, &[OnDemand]), [OnDemand]);
        assert_eq!(markets_to_try(both, false, &[Spot]), [Spot]);
        // After a reclaim On-Demand, unless it has no room.
        assert_eq!(markets_to_try(both, true, &[Spot, OnDemand]), [OnDemand]);
        assert_eq!(markets_to_try(both, true, &[Spot]), [Spot]);
        // Nothing said: the policy's.
        assert_eq!(markets_to_try(both, false, &[]), [Spot, OnDemand]);
        assert_eq!(
            markets_to_try(MarketPolicy::Spot, false, &[OnDemand]),
            [Spot]
        );
    }
}

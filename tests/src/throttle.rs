//! AWS's account-wide rate limits, as the front door plays them (each test's region is an
//! account of its own): Parameter Store's shared throughput, a new account's Lambda
//! concurrency and EC2's request and resource buckets. moto plays none of them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Parameter Store's default throughput: 40 transactions a second, shared by GetParameter,
/// GetParameters, GetParametersByPath and PutParameter for the account and region
/// (https://docs.aws.amazon.com/cli/latest/reference/ssm/put-parameter.html,
/// https://repost.aws/knowledge-center/ssm-parameter-store-rate-exceeded); past it, each
/// call is `ThrottlingException: Rate exceeded`.
pub const SSM_PARAMETER_TPS: f64 = 40.0;
pub const SSM_PARAMETER_ACTIONS: [&str; 4] = [
    "GetParameter",
    "GetParameters",
    "GetParametersByPath",
    "PutParameter",
];

/// A new account's Lambda concurrency: "new AWS accounts have reduced concurrency and memory
/// quotas" (10; https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html);
/// an invocation past it is refused with 429 `TooManyRequestsException`, which Step Functions
/// raises as `Lambda.TooManyRequestsException`.
pub const NEW_ACCOUNT_LAMBDA_CONCURRENCY: u32 = 10;

/// EC2's request bucket of one action, (size, refilled a second): "each API is evaluated
/// individually" (<https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html>,
/// "Request token bucket sizes and refill rates"). RunInstances and TerminateInstances have
/// rows of their own; Describe* calls with a filter or a page are non-mutating (100, 20);
/// other mutating calls (50, 5). Past it: 503 `RequestLimitExceeded`.
pub fn ec2_request_bucket(action: &str) -> (f64, f64) {
    match action {
        "RunInstances" | "StartInstances" => (5.0, 2.0),
        "TerminateInstances" => (100.0, 5.0),
        "CreateTags" => (100.0, 10.0),
        a if a.starts_with("Describe") || a.starts_with("Get") => (100.0, 20.0),
        _ => (50.0, 5.0),
    }
}

/// EC2's resource bucket of an action that starts or ends instances, one token an instance
/// (same page, "Resource token bucket sizes and refill rates").
pub fn ec2_resource_bucket(action: &str) -> Option<(f64, f64)> {
    match action {
        "RunInstances" | "StartInstances" => Some((1000.0, 2.0)),
        "TerminateInstances" | "StopInstances" => Some((1000.0, 20.0)),
        _ => None,
    }
}

/// A token bucket: `rate` a second, holding at most `rate` (one second's burst).
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
pub struct Throttles {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
    in_flight: Mutex<HashMap<String, u32>>,
    /// Every refusal: (region, what).
    refused: Mutex<Vec<(String, String)>>,
    /// Every call that asked a bucket, served or refused: (region, what) → how many.
    asked: Mutex<HashMap<(String, String), usize>>,
}

impl Throttles {
    /// Takes one of `rate` a second from `region`'s `group`; false when none is left.
    pub fn take(&self, region: &str, group: &str, rate: f64, what: &str) -> bool {
        self.take_from(region, group, (rate, rate), what)
    }

    /// Takes one token from `region`'s `group`, a bucket of `(size, refilled a second)`.
    pub fn take_from(&self, region: &str, group: &str, bucket: (f64, f64), what: &str) -> bool {
        self.take_n(region, group, bucket, 1.0, what)
    }

    /// Takes `n` tokens at once (a resource bucket: one an instance), or none.
    pub fn take_n(
        &self,
        region: &str,
        group: &str,
        (size, rate): (f64, f64),
        n: f64,
        what: &str,
    ) -> bool {
        *self
            .asked
            .lock()
            .unwrap()
            .entry((region.to_string(), what.to_string()))
            .or_default() += 1;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap();
        let b = buckets
            .entry((region.to_string(), group.to_string()))
            .or_insert(Bucket {
                tokens: size,
                at: now,
            });
        b.tokens = (b.tokens + rate * (now - b.at).as_secs_f64()).min(size);
        b.at = now;
        if b.tokens >= n {
            b.tokens -= n;
            true
        } else {
            self.refuse(region, what);
            false
        }
    }

    /// Starts an invocation in `region` if fewer than `limit` run; the guard ends it.
    pub fn enter<'a>(&'a self, region: &str, limit: u32, what: &str) -> Option<InFlight<'a>> {
        let mut in_flight = self.in_flight.lock().unwrap();
        let n = in_flight.entry(region.to_string()).or_default();
        if *n >= limit {
            drop(in_flight);
            self.refuse(region, what);
            return None;
        }
        *n += 1;
        Some(InFlight {
            throttles: self,
            region: region.to_string(),
        })
    }

    fn refuse(&self, region: &str, what: &str) {
        self.refused
            .lock()
            .unwrap()
            .push((region.to_string(), what.to_string()));
    }

    /// How many calls of `what` asked `region`'s buckets, served or refused.
    pub fn asked(&self, region: &str, what: &str) -> usize {
        self.asked
            .lock()
            .unwrap()
            .get(&(region.to_string(), what.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// What was refused in `region`: (what, how many times).
    pub fn refused_in(&self, region: &str) -> Vec<(String, usize)> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (r, what) in self.refused.lock().unwrap().iter() {
            if r == region {
                *counts.entry(what.clone()).or_default() += 1;
            }
        }
        let mut v: Vec<(String, usize)> = counts.into_iter().collect();
        v.sort();
        v
    }
}

/// One invocation under way; ends when dropped.
pub struct InFlight<'a> {
    throttles: &'a Throttles,
    region: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(n) = self
            .throttles
            .in_flight
            .lock()
            .unwrap()
            .get_mut(&self.region)
        {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_then_refuses_until_it_refills() {
        let t = Throttles::default();
        let taken = (0..100)
            .filter(|_| t.take("r", "ssm", 40.0, "GetParameter"))
            .count();
        assert!((40..=41).contains(&taken), "{taken}");
        assert!(t.take("other", "ssm", 40.0, "GetParameter"), "per region");
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(t.take("r", "ssm", 40.0, "GetParameter"), "refilled");
        assert_eq!(t.refused_in("r")[0].0, "GetParameter");
    }

    #[test]
    fn a_bucket_holds_its_size_and_refills_at_its_rate() {
        let t = Throttles::default();
        let taken = (0..30)
            .filter(|_| t.take_from("r", "p", (10.0, 5.0), "GetProducts"))
            .count();
        assert!((10..=11).contains(&taken), "{taken}");
        std::thread::sleep(std::time::Duration::from_millis(450));
        let refilled = (0..30)
            .filter(|_| t.take_from("r", "p", (10.0, 5.0), "GetProducts"))
            .count();
        assert!((2..=3).contains(&refilled), "{refilled}");
        assert_eq!(t.asked("r", "GetProducts"), 60);
    }

    #[test]
    fn concurrency_is_counted_while_invocations_run() {
        let t = Throttles::default();
        let a = t.enter("r", 2, "f").unwrap();
        let _b = t.enter("r", 2, "f").unwrap();
        assert!(t.enter("r", 2, "f").is_none());
        drop(a);
        assert!(t.enter("r", 2, "f").is_some());
        assert_eq!(t.refused_in("r"), vec![("f".to_string(), 1)]);
    }
}

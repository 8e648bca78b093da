//! AWS's account-wide rate limits, as the front door plays them (each test's region is an
//! account of its own): Parameter Store's shared throughput and a new account's Lambda
//! concurrency. moto plays neither.

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

/// A token bucket: `rate` a second, holding at most `rate` (one second's burst).
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
pub struct Throttles {
    buckets: Mutex<HashMap<(String, &'static str), Bucket>>,
    in_flight: Mutex<HashMap<String, u32>>,
    /// Every refusal: (region, what).
    refused: Mutex<Vec<(String, String)>>,
}

impl Throttles {
    /// Takes one of `rate` a second from `region`'s `group`; false when none is left.
    pub fn take(&self, region: &str, group: &'static str, rate: f64, what: &str) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap();
        let b = buckets
            .entry((region.to_string(), group))
            .or_insert(Bucket {
                tokens: rate,
                at: now,
            });
        b.tokens = (b.tokens + rate * (now - b.at).as_secs_f64()).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
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

//! The run's SSM parameters, through which the worker and the state machine signal each other:
//! the worker says "started", the state machine hands each instance its task token.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A run's SSM path and the parameters under it; the worker's role may touch only its own run's.
/// The Lambdas name it by run id; the worker gets the path itself in its user data
/// (`--ssm-prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunParameters {
    path: String,
}

impl RunParameters {
    /// Where every run's parameters live.
    pub const ROOT: &'static str = "/ephemera/runs";

    /// The parameters of the run `run_id`, as the Lambdas name them.
    pub fn of_run(run_id: &str) -> RunParameters {
        RunParameters {
            path: format!("{}/{run_id}", Self::ROOT),
        }
    }

    /// The instance a parameter under [`Self::ROOT`] speaks for: `<root>/<run>/started/<instance>`,
    /// `<root>/<run>/task-token/<instance>` or `<root>/<run>/run-session/<instance>` (the sweeper
    /// deletes those of instances that are gone); None for any other name.
    pub fn instance_of(name: &str) -> Option<&str> {
        let rest = name.strip_prefix(Self::ROOT)?.strip_prefix('/')?;
        let mut parts = rest.rsplitn(3, '/');
        let (instance, kind, run) = (parts.next()?, parts.next()?, parts.next()?);
        let known = matches!(kind, "started" | "task-token" | "run-session");
        (known && !run.is_empty() && !instance.is_empty()).then_some(instance)
    }

    /// The path as passed on the worker's command line (a trailing `/` is allowed).
    pub fn at(path: &str) -> RunParameters {
        RunParameters {
            path: path.trim_end_matches('/').to_string(),
        }
    }

    /// The run's path, without a trailing `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where the worker on `instance_id` says [`Started`]; health-check reads it. One per
    /// instance: a run's workers start side by side, and one's signal must not hide another's.
    pub fn started(&self, instance_id: &str) -> String {
        format!("{}/started/{instance_id}", self.path)
    }

    /// Where the state machine hands `instance_id` its task token: one parameter per instance,
    /// so that it can carry its one reader ([`crate::tags::READER`]).
    pub fn task_token(&self, instance_id: &str) -> String {
        format!("{}/task-token/{instance_id}", self.path)
    }

    /// Where launch-worker hands `instance_id` its run's session of the run role
    /// ([`crate::RunSession`]): like the task token, a SecureString of this instance's own that
    /// only its role session may read ([`crate::tags::READER`]).
    pub fn run_session(&self, instance_id: &str) -> String {
        format!("{}/run-session/{instance_id}", self.path)
    }
}

/// The value of the "started" parameter. It names the instance because a signal left by an
/// earlier attempt must not count for the current one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    /// The instance the worker runs on.
    pub instance_id: String,
    /// The attempt (launch) of its worker the instance is.
    pub attempt: u32,
    /// When the worker started.
    pub at: DateTime<Utc>,
}

/// The longest a worker waits between two reads of its task token.
pub const TOKEN_POLL_MAX: Duration = Duration::from_secs(10);

/// How long a worker waits after its `n`th unanswered read of its task token (`n` from 0):
/// from half a second, half as long again each time, up to [`TOKEN_POLL_MAX`], of which a
/// quarter to a half is jitter (`draw` in 0..1, see [`token_poll_draw`]). Parameter Store serves
/// GetParameter, GetParameters and PutParameter at 40 transactions a second for the whole
/// account and region by default
/// (<https://docs.aws.amazon.com/cli/latest/reference/ssm/put-parameter.html>,
/// <https://repost.aws/knowledge-center/ssm-parameter-store-rate-exceeded>): forty workers
/// reading every second would take all of it from the state machine and from everyone else,
/// and workers booted together would read in step without the jitter.
pub fn token_poll_wait(n: u32, draw: f64) -> Duration {
    let ceiling = (0.5 * 1.5_f64.powi(n.min(16) as i32)).min(TOKEN_POLL_MAX.as_secs_f64());
    Duration::from_secs_f64(ceiling * (0.5 + 0.5 * draw.clamp(0.0, 1.0)))
}

/// A draw in 0..1 for [`token_poll_wait`], different for each instance and read (a hash, not a
/// secret: it only spreads the workers' reads apart).
pub fn token_poll_draw(instance_id: &str, n: u32) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (instance_id, n).hash(&mut h);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_finds_the_parameters_the_lambdas_name() {
        let lambdas = RunParameters::of_run("fx-2023");
        // The user data passes `path()`; the worker may be given it with a trailing slash.
        for given in [lambdas.path().to_string(), format!("{}/", lambdas.path())] {
            let worker = RunParameters::at(&given);
            assert_eq!(worker, lambdas);
        }
        assert_eq!(
            lambdas.started("i-0abc"),
            "/ephemera/runs/fx-2023/started/i-0abc"
        );
        assert_ne!(lambdas.started("i-0abc"), lambdas.started("i-0abd"));
        let a = lambdas.task_token("i-0abc");
        assert_eq!(a, "/ephemera/runs/fx-2023/task-token/i-0abc");
        assert_ne!(a, lambdas.task_token("i-0abd"));
        // SSM parameter names allow a-zA-Z0-9_.-/ only: the reader (with its `:`) is a tag.
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c)));
    }

    #[test]
    fn a_signal_names_its_instance_and_nothing_else_does() {
        let run = RunParameters::of_run("fx-2023");
        for name in [
            run.started("i-0abc"),
            run.task_token("i-0abc"),
            run.run_session("i-0abc"),
        ] {
            assert_eq!(RunParameters::instance_of(&name), Some("i-0abc"), "{name}");
        }
        for other in [
            "/ephemera/runs/fx-2023/notes/i-0abc",
            "/ephemera/runs/started/i-0abc",
            "/ephemera/runs/fx-2023/started/",
            "/ephemera/runsx/fx-2023/started/i-0abc",
            "/other/fx-2023/started/i-0abc",
        ] {
            assert_eq!(RunParameters::instance_of(other), None, "{other}");
        }
    }

    #[test]
    fn started_round_trips() {
        let s = Started {
            instance_id: "i-0abc".into(),
            attempt: 2,
            at: DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Started>(&json).unwrap(), s);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).unwrap(),
            serde_json::json!({"instance_id": "i-0abc", "attempt": 2, "at": "2026-11-30T12:00:00Z"})
        );
    }
    #[test]
    fn token_reads_back_off_with_jitter_to_a_few_a_second_for_forty_workers() {
        assert_eq!(token_poll_wait(0, 1.0), Duration::from_millis(500));
        assert_eq!(token_poll_wait(0, 0.0), Duration::from_millis(250));
        for n in 0..40 {
            assert!(token_poll_wait(n, 1.0) <= token_poll_wait(n + 1, 1.0));
            assert!(token_poll_wait(n, 1.0) <= TOKEN_POLL_MAX);
        }
        assert_eq!(token_poll_wait(1000, 1.0), TOKEN_POLL_MAX);
        // Forty workers that have waited a minute read at most 40 / 5 s = 8 times a second,
        // a fifth of the account's default 40.
        assert!(token_poll_wait(12, 0.0) >= TOKEN_POLL_MAX / 2);
        // The first minute: each worker reads at most this many times.
        let mut t = Duration::ZERO;
        let mut reads = 0;
        while t < Duration::from_secs(60) {
            t += token_poll_wait(reads, 0.0);
            reads += 1;
        }
        assert!(reads <= 20, "{reads}");
        let draws: Vec<f64> = (0..100).map(|n| token_poll_draw("i-0abc", n)).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        assert_ne!(token_poll_draw("i-0abc", 1), token_poll_draw("i-0abd", 1));
    }
}

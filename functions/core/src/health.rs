//! The boot verdict: is the worker up, still booting, or lost?

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::instance_state::InstanceState;

/// What health-check saw of the instance and the worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The instance's state, None if the instance is not found (or in a state EC2 added since).
    pub state: Option<InstanceState>,
    /// StateReason code, e.g. Server.SpotInstanceTermination.
    pub state_reason: Option<String>,
    /// Instance and system status checks: ok, impaired, initializing, insufficient-data.
    pub instance_status: Option<String>,
    /// The system status check, as `instance_status` reads.
    pub system_status: Option<String>,
    /// The worker wrote its "started" signal for this instance.
    pub worker_started: bool,
    /// When the instance was launched (the attempt's `launched_at`).
    pub launched_at: DateTime<Utc>,
    /// When health-check looked.
    pub now: DateTime<Utc>,
    /// `limits.boot_timeout_seconds`: how long after launch the worker may take to become healthy.
    pub boot_timeout_seconds: u64,
}

/// Why a booting worker is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The instance is ending (shutting down, terminated, stopping or stopped), and Spot did not
    /// take it.
    Terminated,
    /// Spot took the instance back while it booted (its state reason is `Server.SpotInstance…`).
    SpotReclaimed,
    /// The instance or system status check is impaired.
    Impaired,
    /// Not healthy by `limits.boot_timeout_seconds` after launch.
    BootDeadline,
}

/// The boot verdict ([`judge`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Health {
    /// Running, both status checks ok, the worker said "started".
    Healthy,
    /// Not yet, within the boot timeout.
    Booting {
        /// What is missing, in words: the state, the status checks, the worker's signal.
        waiting_for: String,
    },
    /// Lost: the instance will not become healthy.
    Failed {
        /// Which way it failed.
        failure: Failure,
        /// What was seen, in words (the state and its reason, the impaired check).
        reason: String,
    },
}

/// An EC2 state reason that says Spot took the instance back.
pub fn is_spot_reclaim(reason: &str) -> bool {
    reason.starts_with("Server.SpotInstance")
}

/// The boot verdict from what health-check saw: failed as soon as the instance is ending or
/// impaired, healthy when everything is, else booting until the boot deadline.
pub fn judge(o: &Observation) -> Health {
    // EC2 is eventually consistent: DescribeInstances may answer InvalidInstanceID.NotFound for
    // a while after RunInstances
    // (https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html), and a
    // terminated instance stays visible for about an hour, so an instance not found during its
    // boot is one not visible yet: it is waited for until the boot deadline like any other.
    let state = o.state.map_or("not visible yet", InstanceState::name);
    if o.state.is_some_and(InstanceState::is_ending) {
        let reason = o.state_reason.clone().unwrap_or_default();
        if is_spot_reclaim(&reason) {
            return Health::Failed {
                failure: Failure::SpotReclaimed,
                reason: format!("Spot reclaimed the instance while booting ({reason})"),
            };
        }
        return Health::Failed {
            failure: Failure::Terminated,
            reason: format!("the instance is {state} ({reason})"),
        };
    }
    for (which, s) in [
        ("instance", &o.instance_status),
        ("system", &o.system_status),
    ] {
        if s.as_deref() == Some("impaired") {
            return Health::Failed {
                failure: Failure::Impaired,
                reason: format!("the {which} status check is impaired"),
            };
        }
    }
    let mut missing = vec![];
    if o.state != Some(InstanceState::Running) {
        missing.push(format!("state {state}"));
    }
    if o.instance_status.as_deref() != Some("ok") || o.system_status.as_deref() != Some("ok") {
        missing.push(format!(
            "status checks (instance {}, system {})",
            o.instance_status.as_deref().unwrap_or("none"),
            o.system_status.as_deref().unwrap_or("none")
        ));
    }
    if !o.worker_started {
        missing.push("the worker's started signal".to_string());
    }
    if missing.is_empty() {
        return Health::Healthy;
    }
    let elapsed = (o.now - o.launched_at).num_seconds();
    if elapsed >= o.boot_timeout_seconds as i64 {
        return Health::Failed {
            failure: Failure::BootDeadline,
            reason: format!(
                "not healthy {elapsed} s after launch (limits.boot_timeout_seconds = {}): waiting for {}",
                o.boot_timeout_seconds,
                missing.join(", ")
            ),
        };
    }
    Health::Booting {
        waiting_for: missing.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn obs() -> Observation {
        let t0 = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        Observation {
            state: Some(InstanceState::Running),
            state_reason: None,
            instance_status: Some("ok".into()),
            system_status: Some("ok".into()),
            worker_started: true,
            launched_at: t0,
            now: t0 + chrono::Duration::seconds(100),
            boot_timeout_seconds: 600,
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(judge(&obs()), Health::Healthy);
        let mut o = obs();
        o.worker_started = false;
        o.state = Some(InstanceState::Pending);
        match judge(&o) {
            Health::Booting { waiting_for } => {
                assert!(waiting_for.contains("state pending"));
                assert!(waiting_for.contains("started signal"));
            }
            h => panic!("{h:?}"),
        }
        o.now = o.launched_at + chrono::Duration::seconds(600);
        assert!(matches!(
            judge(&o),
            Health::Failed {
                failure: Failure::BootDeadline,
                ..
            }
        ));
        let mut o = obs();
        o.system_status = Some("impaired".into());
        assert!(matches!(
            judge(&o),
            Health::Failed {
                failure: Failure::Impaired,
                ..
            }
        ));
        let mut o = obs();
        o.state = Some(InstanceState::Terminated);
        o.state_reason = Some("Server.SpotInstanceTermination".into());
        assert!(matches!(
            judge(&o),
            Health::Failed {
                failure: Failure::SpotReclaimed,
                ..
            }
        ));
        o.state_reason = Some("Client.UserInitiatedShutdown".into());
        assert!(matches!(
            judge(&o),
            Health::Failed {
                failure: Failure::Terminated,
                ..
            }
        ));
        // Not found right after launch: still booting, until the boot deadline.
        o.state = None;
        o.state_reason = None;
        assert!(
            matches!(&judge(&o), Health::Booting { waiting_for } if waiting_for.contains("not visible yet")),
            "{:?}",
            judge(&o)
        );
        o.now = o.launched_at + chrono::Duration::seconds(o.boot_timeout_seconds as i64);
        assert!(matches!(
            judge(&o),
            Health::Failed {
                failure: Failure::BootDeadline,
                ..
            }
        ));
    }
}

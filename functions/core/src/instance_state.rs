//! An EC2 instance's lifecycle state, as DescribeInstances names it
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_InstanceState.html>).

use serde::{Deserialize, Serialize};

/// An instance's lifecycle state (DescribeInstances' `State.Name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Launched, not yet running.
    Pending,
    /// Running: billed.
    Running,
    /// Being terminated.
    ShuttingDown,
    /// Terminated: no longer billed.
    Terminated,
    /// Being stopped.
    Stopping,
    /// Stopped: its volume is still billed, and it may be started again.
    Stopped,
}

impl InstanceState {
    /// Every state EC2 names.
    pub const ALL: [InstanceState; 6] = [
        InstanceState::Pending,
        InstanceState::Running,
        InstanceState::ShuttingDown,
        InstanceState::Terminated,
        InstanceState::Stopping,
        InstanceState::Stopped,
    ];
    /// States in which an instance may still be billed or come back: what cleanup and the
    /// sweeper look for.
    pub const LIVE: [InstanceState; 4] = [
        InstanceState::Pending,
        InstanceState::Running,
        InstanceState::Stopping,
        InstanceState::Stopped,
    ];

    /// EC2's name, as in DescribeInstances' `instance-state-name` filter.
    pub const fn name(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
        }
    }

    /// The state of EC2's name (`running`, `shutting-down`, …); None for a name this code does not
    /// know.
    pub fn from_name(name: &str) -> Option<InstanceState> {
        InstanceState::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Going or gone: the worker on it can no longer run.
    pub fn is_ending(self) -> bool {
        !matches!(self, InstanceState::Pending | InstanceState::Running)
    }

    /// Terminated or being terminated: nothing left to stop.
    pub fn is_terminating(self) -> bool {
        matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_ec2s_and_serde_agrees() {
        for s in InstanceState::ALL {
            assert_eq!(InstanceState::from_name(s.name()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
        assert_eq!(InstanceState::from_name("rebooting"), None);
        assert!(InstanceState::Stopped.is_ending() && !InstanceState::Running.is_ending());
        assert!(!InstanceState::Stopped.is_terminating());
    }
}

//! The Lambdas of template.yaml by name: the bins are named after them, and the harness's front
//! door finds the one an invocation names.

use crate::error::Error;

/// The Lambdas of template.yaml, each a binary of this crate named after it
/// (`src/bin/<name>.rs`) that links only its own handler and clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Function {
    QuotaCheck,
    SnapshotDatabase,
    LaunchWorker,
    HealthCheck,
    VerifyCompletion,
    TerminateWithCostReport,
    Sweeper,
    SpotInterruption,
}

impl Function {
    pub const ALL: [Function; 8] = [
        Function::QuotaCheck,
        Function::SnapshotDatabase,
        Function::LaunchWorker,
        Function::HealthCheck,
        Function::VerifyCompletion,
        Function::TerminateWithCostReport,
        Function::Sweeper,
        Function::SpotInterruption,
    ];

    /// The binary's name, and the function's in template.yaml (`Metadata.BuildProperties.Binary`).
    pub const fn name(self) -> &'static str {
        match self {
            Function::QuotaCheck => "quota-check",
            Function::SnapshotDatabase => "snapshot-database",
            Function::LaunchWorker => "launch-worker",
            Function::HealthCheck => "health-check",
            Function::VerifyCompletion => "verify-completion",
            Function::TerminateWithCostReport => "terminate-with-cost-report",
            Function::Sweeper => "sweeper",
            Function::SpotInterruption => "spot-interruption",
        }
    }
}

impl std::fmt::Display for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Function {
    type Err = Error;
    fn from_str(name: &str) -> Result<Function, Error> {
        Function::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Function::ALL.iter().map(|f| f.name()).collect();
                Error::Internal(format!(
                    "unknown function '{name}'; known: {}",
                    known.join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_is_found_by_its_name_and_no_other() {
        for f in Function::ALL {
            assert_eq!(f.name().parse::<Function>().unwrap(), f);
        }
        let names: std::collections::BTreeSet<&str> =
            Function::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names.len(), Function::ALL.len(), "names are distinct");
        let e = "launch".parse::<Function>().unwrap_err().to_string();
        assert!(e.contains("unknown function 'launch'"), "{e}");
        assert!(e.contains("launch-worker"), "{e}");
    }
}

//! The sweeper's rule: an instance ephemera launched is terminated when its execution no longer
//! runs, or when its deadline has passed, whatever the execution says.

use chrono::{DateTime, Utc};

/// Why an instance must go, or None to keep it. `execution_status` is None when the execution
/// cannot be found (deleted, or a tag pointing nowhere).
pub fn sweep_reason(
    execution_status: Option<&str>,
    deadline: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<String> {
    if let Some(d) = deadline {
        if now >= d {
            return Some(format!(
                "its ephemera:deadline {} has passed",
                d.to_rfc3339()
            ));
        }
    }
    match execution_status {
        Some("RUNNING") | Some("PENDING_REDRIVE") => match deadline {
            Some(_) => None,
            None => Some("it has no ephemera:deadline tag".into()),
        },
        Some(other) => Some(format!("its execution is {other}")),
        None => Some("its execution does not exist".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    #[test]
    fn rules() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let later = Some(now + Duration::hours(1));
        let earlier = Some(now - Duration::seconds(1));
        assert_eq!(sweep_reason(Some("RUNNING"), later, now), None);
        assert!(sweep_reason(Some("RUNNING"), earlier, now)
            .unwrap()
            .contains("deadline"));
        assert!(sweep_reason(Some("RUNNING"), None, now)
            .unwrap()
            .contains("no ephemera:deadline"));
        assert_eq!(
            sweep_reason(Some("FAILED"), later, now).as_deref(),
            Some("its execution is FAILED")
        );
        assert_eq!(
            sweep_reason(None, later, now).as_deref(),
            Some("its execution does not exist")
        );
    }
}

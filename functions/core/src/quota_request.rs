//! Bounds on quota increase requests: at most one open request per quota (whoever filed it),
//! none again for a while after a denial, and none above the deployment's cap.
//!
//! Every run of the stack, and any person in the account, may ask for the same EC2 vCPU quota.
//! AWS keeps one open request per quota (a second is refused with
//! `ResourceAlreadyExistsException`), but a denied quota can be asked again at once, and each
//! run that finds the quota short would: support cases pile up and the answer does not change.
//! The request history (`ListRequestedServiceQuotaChangeHistoryByQuota`) says both what is open
//! and what was denied, so each run reads it before it files.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::quota::{request_progress, QuotaRequest, RequestProgress};

/// The template's `QuotaDenialCooloffHours` default: a week. A denial is the account's answer,
/// not one run's, so the period is the deployment's (a template parameter), not a RunSpec
/// field any run's author could set to zero.
pub const DEFAULT_COOLOFF_HOURS: u32 = 168;

/// The template's `MaxQuotaRequestVcpus` default: the largest desired value any request asks.
pub const DEFAULT_MAX_REQUEST_VCPUS: u32 = 512;

/// One request of the quota's history, with when it last changed (its denial's date).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PastRequest {
    /// The request as Service Quotas lists it.
    pub request: QuotaRequest,
    /// When its status last changed (`LastUpdated`, else its creation): a denial's date.
    pub updated_at: DateTime<Utc>,
}

/// What the deployment allows a run to ask for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// After a denial, no new request for this long (from the denial's date).
    pub cooloff_hours: u32,
    /// No request's desired value above this (vCPUs).
    pub max_desired_vcpus: u32,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            cooloff_hours: DEFAULT_COOLOFF_HOURS,
            max_desired_vcpus: DEFAULT_MAX_REQUEST_VCPUS,
        }
    }
}

/// What a run short of a quota does about it.
#[derive(Debug, Clone, PartialEq)]
pub enum Filing {
    /// A request is open (filed by another run, a person, or a retry of this check): follow it.
    Follow(QuotaRequest),
    /// File a request for this desired value.
    File(f64),
    /// No request may be filed; why, naming what bars it and until when.
    Barred(String),
}

/// The newest open request (PENDING or CASE_OPENED), if any.
pub fn open_request(history: &[PastRequest]) -> Option<&PastRequest> {
    history
        .iter()
        .filter(|p| request_progress(&p.request.status) == Ok(RequestProgress::Pending))
        .max_by_key(|p| p.request.requested_at)
}

/// The newest resolved request when it is a denial: a later approval lifts it (the account
/// was given more since, so a larger need is a new question).
pub fn standing_denial(history: &[PastRequest]) -> Option<&PastRequest> {
    history
        .iter()
        .filter(|p| {
            !matches!(
                request_progress(&p.request.status),
                Ok(RequestProgress::Pending)
            )
        })
        .max_by_key(|p| p.updated_at)
        .filter(|p| request_progress(&p.request.status) == Ok(RequestProgress::Denied))
}

/// Follow what is open, else file `desired` unless a recent denial or the cap bars it.
pub fn filing(
    history: &[PastRequest],
    desired: f64,
    bounds: &Bounds,
    now: DateTime<Utc>,
) -> Filing {
    if let Some(open) = open_request(history) {
        return Filing::Follow(open.request.clone());
    }
    if let Some(denied) = standing_denial(history) {
        let again = denied.updated_at + Duration::hours(bounds.cooloff_hours as i64);
        if now < again {
            let r = &denied.request;
            let case = r
                .case_id
                .as_deref()
                .map(|c| format!(", case {c}"))
                .unwrap_or_default();
            return Filing::Barred(format!(
                "request {}{case} for {} vCPUs was {} on {}; no new request before {} (the stack's QuotaDenialCooloffHours is {})",
                r.id,
                r.desired,
                r.status,
                denied.updated_at.to_rfc3339(),
                again.to_rfc3339(),
                bounds.cooloff_hours
            ));
        }
    }
    if desired > bounds.max_desired_vcpus as f64 + 1e-9 {
        return Filing::Barred(format!(
            "it would need a request for {desired} vCPUs, above the stack's MaxQuotaRequestVcpus ({}); raise the parameter, or request the increase yourself (a run follows an open request)",
            bounds.max_desired_vcpus
        ));
    }
    Filing::File(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap() + Duration::hours(h)
    }

    fn past(id: &str, status: &str, filed: i64, updated: i64) -> PastRequest {
        PastRequest {
            request: QuotaRequest {
                id: id.into(),
                case_id: Some(format!("case-{id}")),
                desired: 64.0,
                status: status.into(),
                requested_at: t(filed),
            },
            updated_at: t(updated),
        }
    }

    #[test]
    fn an_open_request_is_followed_whoever_filed_it() {
        let b = Bounds::default();
        let h = vec![
            past("old", "DENIED", 0, 1),
            past("a", "PENDING", 10, 10),
            past("b", "CASE_OPENED", 20, 21),
        ];
        assert_eq!(
            filing(&h, 32.0, &b, t(22)),
            Filing::Follow(h[2].request.clone())
        );
        // Even above the cap: following files nothing.
        assert_eq!(
            filing(&h, 10_000.0, &b, t(22)),
            Filing::Follow(h[2].request.clone())
        );
    }

    #[test]
    fn a_denial_bars_a_new_request_for_the_period_and_says_until_when() {
        let b = Bounds {
            cooloff_hours: 24,
            max_desired_vcpus: 512,
        };
        let h = vec![past("x", "APPROVED", 0, 1), past("d", "DENIED", 2, 5)];
        let Filing::Barred(why) = filing(&h, 32.0, &b, t(28)) else {
            panic!("a denial 23 h ago bars a request")
        };
        assert!(why.contains("request d, case case-d"), "{why}");
        assert!(why.contains(&t(5).to_rfc3339()), "the denial's date: {why}");
        assert!(
            why.contains(&format!("no new request before {}", t(29).to_rfc3339())),
            "{why}"
        );
        assert!(why.contains("QuotaDenialCooloffHours"), "{why}");
        // Once the period has passed, a request is filed.
        assert_eq!(filing(&h, 32.0, &b, t(29)), Filing::File(32.0));
        // NOT_APPROVED and INVALID_REQUEST are denials too.
        for s in ["NOT_APPROVED", "INVALID_REQUEST"] {
            let h = vec![past("d", s, 2, 5)];
            assert!(matches!(filing(&h, 32.0, &b, t(6)), Filing::Barred(_)));
        }
    }

    #[test]
    fn an_approval_after_the_denial_lifts_it() {
        let b = Bounds::default();
        let h = vec![past("d", "DENIED", 0, 1), past("a", "APPROVED", 2, 3)];
        assert_eq!(filing(&h, 32.0, &b, t(4)), Filing::File(32.0));
        assert_eq!(standing_denial(&h), None);
        // A case closed without a word after the denial does not lift it.
        let h = vec![past("d", "DENIED", 0, 1)];
        assert_eq!(
            standing_denial(&h).map(|p| p.request.id.as_str()),
            Some("d")
        );
    }

    #[test]
    fn nothing_above_the_cap_is_requested() {
        let b = Bounds {
            cooloff_hours: 24,
            max_desired_vcpus: 64,
        };
        assert_eq!(filing(&[], 64.0, &b, t(0)), Filing::File(64.0));
        let Filing::Barred(why) = filing(&[], 65.0, &b, t(0)) else {
            panic!("65 > 64")
        };
        assert!(
            why.contains("65 vCPUs") && why.contains("MaxQuotaRequestVcpus (64)"),
            "{why}"
        );
        // An empty history with nothing open: file.
        assert_eq!(open_request(&[]), None);
    }
}

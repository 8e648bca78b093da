//! One run's session of the run role (`RunRole`), as launch-worker hands it to its instance and
//! the agent renews it (ARCHITECTURE.md, "One run's credentials").
//!
//! launch-worker writes it as JSON into the instance-only parameter
//! [`crate::RunParameters::run_session`] (a SecureString under the stack's own key, readable by
//! the instance's role session alone, as the task token is); never in user data, which anything
//! on the instance that reaches IMDS can read.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Temporary credentials of the run role, and the role to assume again to renew them.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSession {
    /// The run role's ARN: a renewal assumes it again from this session (role chaining).
    pub role_arn: String,
    /// AccessKeyId, SecretAccessKey and SessionToken as STS answered them.
    pub access_key_id: String,
    /// The secret half.
    pub secret_access_key: String,
    /// The session token.
    pub session_token: String,
    /// When STS says the session ends.
    pub expiration: DateTime<Utc>,
    /// The session policy it was vended with (JSON), passed again on each renewal: a session
    /// policy is not inherited, and a renewal without it would hold the role's wider reads.
    pub policy: String,
    /// The session policy the agent derives its job's session with (AssumeRole from this
    /// session): the run's objects and inputs and its log lines, no secret and no renewal, so a
    /// job's credentials die with the agent's. None from a launch-worker that predates it: the
    /// job then gets no credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_policy: Option<String>,
}

impl std::fmt::Debug for RunSession {
    // The secret and the token never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSession")
            .field("role_arn", &self.role_arn)
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// The most a renewal is done ahead of a session's end: well within what the agent's retries of
/// a throttled STS call take, and far inside role chaining's one hour.
pub const RENEW_AHEAD_MAX: Duration = Duration::from_secs(600);

/// When a session obtained at `obtained` and ending at `expires` is renewed: ten minutes before
/// its end, or a third of its life before it when it is shorter than half an hour, so that a
/// renewal always comes while the session can still assume the role again (an expired session
/// cannot: STS refuses its token).
pub fn renew_at(obtained: DateTime<Utc>, expires: DateTime<Utc>) -> DateTime<Utc> {
    let life = (expires - obtained).max(chrono::Duration::zero());
    let ahead = (life / 3).min(chrono::Duration::from_std(RENEW_AHEAD_MAX).unwrap_or(life));
    expires - ahead
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_long_session_is_renewed_ten_minutes_before_its_end() {
        let t0 = Utc::now();
        let end = t0 + chrono::Duration::hours(1);
        assert_eq!(renew_at(t0, end), end - chrono::Duration::minutes(10));
    }

    #[test]
    fn a_short_session_is_renewed_a_third_of_its_life_before_its_end() {
        let t0 = Utc::now();
        let end = t0 + chrono::Duration::seconds(30);
        assert_eq!(renew_at(t0, end), t0 + chrono::Duration::seconds(20));
        // An already ended session: renewed at once (at its end, which has passed).
        assert_eq!(
            renew_at(t0, t0 - chrono::Duration::seconds(5)),
            t0 - chrono::Duration::seconds(5)
        );
    }

    #[test]
    fn the_secret_is_not_in_its_debug_form() {
        let s = RunSession {
            role_arn: "arn:aws:iam::1:role/run".into(),
            access_key_id: "ASIA1".into(),
            secret_access_key: "the-secret".into(),
            session_token: "the-token".into(),
            expiration: Utc::now(),
            policy: "{}".into(),
            job_policy: Some("{\"Version\":\"2012-10-17\"}".into()),
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("the-secret") && !shown.contains("the-token"),
            "{shown}"
        );
        let back: RunSession = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}

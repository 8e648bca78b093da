//! The run's session of the run role (`RunRole`), which the agent signs its S3 and CloudWatch
//! Logs calls with instead of the instance role (ARCHITECTURE.md, "One run's credentials").
//!
//! launch-worker vends it (tagged `ephemera:run`, transitive, narrowed by the session policy the
//! RunSpec decides) into a parameter of this instance's own ([`RunParameters::run_session`]);
//! the agent reads it at start with its instance role, the one thing that role still reads for
//! it. Role chaining caps the session at one hour, so it is renewed before its end by assuming
//! the run role again *from the session itself*, with the same session policy: the tag comes
//! along and cannot be changed (STS AssumeRole, `TransitiveTagKeys`).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_credential_types::provider::{
    error::CredentialsError, future, ProvideCredentials, SharedCredentialsProvider,
};
use aws_credential_types::Credentials;
use chrono::{DateTime, Utc};
use ephemera_contract::session::{renew_at, RunSession};

/// How long before the renewal time the SDK's identity cache asks again for credentials (its
/// default buffer): the renewal is due once that window is reached, so the cache never holds a
/// session past its renewal time.
const CACHE_BUFFER: chrono::Duration = chrono::Duration::seconds(10);

/// How long a job's session lasts (`RunCredentials::for_job`): AssumeRole's least.
pub const JOB_SESSION_SECONDS: i32 = 900;

/// How long a renewal is tried for when STS fails transiently.
const RENEW_PATIENCE: Duration = Duration::from_secs(120);

struct Held {
    session: RunSession,
    obtained: DateTime<Utc>,
}

/// The run's session, renewed when due; a credentials provider for the SDK's clients.
#[derive(Clone)]
pub struct RunCredentials {
    held: Arc<tokio::sync::Mutex<Held>>,
    /// The instance's configuration (region, endpoint) the renewal's STS client is made from.
    base: aws_config::SdkConfig,
    /// RoleSessionName of every renewal: the instance id, so CloudTrail names the instance.
    session_name: String,
    renewals: Arc<std::sync::atomic::AtomicU32>,
}

impl std::fmt::Debug for RunCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCredentials")
            .field("session_name", &self.session_name)
            .finish_non_exhaustive()
    }
}

/// Whether a session obtained at `obtained`, ending at `expires`, is due for renewal at `now`.
pub fn due(now: DateTime<Utc>, obtained: DateTime<Utc>, expires: DateTime<Utc>) -> bool {
    now + CACHE_BUFFER >= renew_at(obtained, expires)
}

impl RunCredentials {
    /// The instance's region, which the job's config file names: a job as its own user cannot
    /// ask IMDS, and a container has none of the agent's environment.
    pub fn region(&self) -> Option<String> {
        self.base.region().map(|r| r.to_string())
    }

    pub fn new(
        session: RunSession,
        base: aws_config::SdkConfig,
        session_name: &str,
    ) -> RunCredentials {
        RunCredentials {
            held: Arc::new(tokio::sync::Mutex::new(Held {
                session,
                obtained: Utc::now(),
            })),
            base,
            session_name: session_name.to_string(),
            renewals: Arc::default(),
        }
    }

    /// How many times the session was renewed.
    pub fn renewals(&self) -> u32 {
        self.renewals.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The session's credentials, renewed first when due. The expiry given to the SDK is the
    /// renewal time, so that its cache asks again then, while the session can still renew.
    async fn current(&self) -> Result<Credentials, CredentialsError> {
        let mut held = self.held.lock().await;
        let now = Utc::now();
        if due(now, held.obtained, held.session.expiration) {
            let renewed = self
                .renew(&held.session)
                .await
                .map_err(|e| CredentialsError::provider_error(format!("{e:#}")))?;
            let n = self
                .renewals
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1;
            tracing::info!(renewals = n, expires = %renewed.expiration, "the run's session renewed");
            *held = Held {
                session: renewed,
                obtained: now,
            };
        }
        let s = &held.session;
        let refresh = renew_at(held.obtained, s.expiration);
        Ok(Credentials::new(
            &s.access_key_id,
            &s.secret_access_key,
            Some(s.session_token.clone()),
            Some(refresh.into()),
            "ephemera-run-session",
        ))
    }

    /// AssumeRole of the run role again, signed by `from` (role chaining: at most an hour).
    async fn renew(&self, from: &RunSession) -> Result<RunSession> {
        self.assume_from(from, &self.session_name, 3600).await
    }

    /// AssumeRole of `from`'s role, signed by `from`, with `from`'s policy, as `session_name`.
    async fn assume_from(
        &self,
        from: &RunSession,
        session_name: &str,
        seconds: i32,
    ) -> Result<RunSession> {
        let signer = Credentials::new(
            &from.access_key_id,
            &from.secret_access_key,
            Some(from.session_token.clone()),
            None,
            "ephemera-run-session",
        );
        let conf = aws_sdk_sts::config::Builder::from(&self.base)
            .credentials_provider(SharedCredentialsProvider::new(signer))
            .build();
        let sts = aws_sdk_sts::Client::from_conf(conf);
        let deadline = Instant::now() + RENEW_PATIENCE;
        let r = super::link::with_retries("AssumeRole", deadline, || {
            sts.assume_role()
                .role_arn(&from.role_arn)
                .role_session_name(session_name)
                .policy(&from.policy)
                .duration_seconds(seconds)
                .send()
        })
        .await
        .map_err(aws_sdk_sts::Error::from)
        .context("renewing the run's session (AssumeRole of the run role from itself)")?;
        let c = r
            .credentials()
            .context("AssumeRole answered without credentials")?;
        let expiration =
            DateTime::<Utc>::from_timestamp(c.expiration().secs(), c.expiration().subsec_nanos())
                .context("AssumeRole's expiration is out of range")?;
        Ok(RunSession {
            role_arn: from.role_arn.clone(),
            access_key_id: c.access_key_id().to_string(),
            secret_access_key: c.secret_access_key().to_string(),
            session_token: c.session_token().to_string(),
            expiration,
            policy: from.policy.clone(),
            job_policy: from.job_policy.clone(),
        })
    }

    /// A session for the agent's job (`exec --run-as`): the run role assumed from the agent's
    /// current session with the job's narrower policy (launch-worker's `job_policy`: no secret,
    /// no `sts:AssumeRole`, so the job can neither read the secrets nor outlive the agent by
    /// renewing itself). None when launch-worker sent no job policy.
    pub async fn for_job(&self) -> Result<Option<RunSession>> {
        let (role_arn, job_policy) = {
            let held = self.held.lock().await;
            match &held.session.job_policy {
                Some(p) => (held.session.role_arn.clone(), p.clone()),
                None => return Ok(None),
            }
        };
        let now = self
            .current()
            .await
            .map_err(|e| anyhow::anyhow!("the agent's session: {e}"))?;
        let from = RunSession {
            role_arn: role_arn.clone(),
            access_key_id: now.access_key_id().to_string(),
            secret_access_key: now.secret_access_key().to_string(),
            session_token: now.session_token().unwrap_or_default().to_string(),
            expiration: Utc::now(),
            policy: job_policy,
            job_policy: None,
        };
        // The shortest session STS gives (15 minutes): credentials the job copied out end soon
        // after the agent stops deriving them.
        self.assume_from(
            &from,
            &format!("{}-job", self.session_name),
            JOB_SESSION_SECONDS,
        )
        .await
        .map(Some)
    }
}

impl ProvideCredentials for RunCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.current())
    }
}

/// The run's session once the agent has read it: every S3 and CloudWatch Logs client made
/// after that signs with it ([`sdk_config`]).
static RUN: OnceLock<RunCredentials> = OnceLock::new();

/// Makes `creds` the credentials of every client [`sdk_config`] configures from now on.
pub fn install(creds: RunCredentials) {
    if RUN.set(creds).is_err() {
        tracing::warn!("the run's session was already installed; the first one stays");
    }
}

/// The run's session, when the agent has one.
pub fn installed() -> Option<&'static RunCredentials> {
    RUN.get()
}

/// The configuration of the agent's S3 and CloudWatch Logs clients: the run's session once it
/// is installed, the process's default chain otherwise (a worker run alone, off an instance).
pub async fn sdk_config() -> aws_config::SdkConfig {
    let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    match RUN.get() {
        Some(run) => conf
            .into_builder()
            .credentials_provider(SharedCredentialsProvider::new(run.clone()))
            .build(),
        None => conf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_renewed_once_its_renewal_time_is_within_the_cache_buffer() {
        let t0 = Utc::now();
        let hour = t0 + chrono::Duration::hours(1);
        assert!(!due(t0, t0, hour));
        assert!(!due(t0 + chrono::Duration::minutes(49), t0, hour));
        assert!(due(t0 + chrono::Duration::seconds(49 * 60 + 51), t0, hour));
        assert!(due(hour, t0, hour));
        // A 30-second session (the harness's): due 10 s in, renewed at 20 s, ends at 30 s.
        let short = t0 + chrono::Duration::seconds(30);
        assert!(!due(t0 + chrono::Duration::seconds(9), t0, short));
        assert!(due(t0 + chrono::Duration::seconds(10), t0, short));
    }
}

//! The link to the state machine, when the worker runs on an ephemera instance: say "started"
//! for this instance, take the task token from SSM once the state machine hands it over,
//! heartbeat, report success or failure, and watch for the Spot interruption notice.
//!
//! The token never passes through user data or logs: it is a SecureString of this instance's own
//! ([`RunParameters::task_token`]) that only this instance's role session may read.
//!
//! Throttling, 5xx answers, timeouts and dropped connections are tried again with backoff (on
//! top of the SDK's own few attempts) until the limit the worker already has for that step:
//! the token timeout while it says "started" and waits for the token, twice the heartbeat
//! period for its report (heartbeats go on meanwhile). Any other error fails at once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ssm::config::http::HttpResponse;
use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use tokio_util::sync::CancellationToken;

use anyhow::{Context, Result};
use aws_sdk_ssm::types::ParameterType;
use ephemera_contract::logs::HEARTBEAT_MESSAGE;
use ephemera_contract::{ssm, RunParameters, RunSession, Started, Summary};

/// How often the Spot notice is looked for: IMDS is on the instance, and every second counts
/// out of the two minutes' notice.
const SPOT_POLL: Duration = Duration::from_secs(2);

/// The first wait after a transient error; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(20);

/// Error codes AWS services use for throttling and passing trouble on their side.
const TRANSIENT_CODES: [&str; 16] = [
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "TransactionInProgressException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
];

/// Whether an AWS call may succeed if tried again: throttling, a 5xx, a timeout, a connection
/// that failed or broke. Access denied, not found, validation errors and the like are not.
pub fn transient<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            status == 429
                || (500..600).contains(&status)
                || s.err().code().is_some_and(|c| TRANSIENT_CODES.contains(&c))
        }
        _ => false,
    }
}

/// Runs `call` until it succeeds, fails with a non-transient error, or the next wait would end
/// past `deadline`; transient errors wait with exponential backoff.
pub async fn with_retries<T, E, F, Fut>(
    what: &str,
    deadline: Instant,
    mut call: F,
) -> Result<T, SdkError<E, HttpResponse>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    let mut wait = FIRST_BACKOFF;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) && Instant::now() + wait < deadline => {
                tracing::warn!(what, error = %DisplayErrorContext(&e), retry_in = ?wait, "transient AWS error: trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The instance role's configuration (region from the user data's `AWS_REGION`).
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

async fn spot_notice(imds: &aws_config::imds::Client) -> Option<String> {
    imds.get("/latest/meta-data/spot/instance-action")
        .await
        .ok()
        .map(|a| a.as_ref().to_string())
}

pub struct Link {
    ssm: aws_sdk_ssm::Client,
    sfn: aws_sdk_sfn::Client,
    imds: aws_config::imds::Client,
    parameters: RunParameters,
    pub instance_id: String,
    pub attempt: u32,
    heartbeat: Duration,
}

/// The task token, once handed over.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

impl Link {
    /// Reads this instance's id from IMDSv2 (`AWS_EC2_METADATA_SERVICE_ENDPOINT` overrides it).
    pub async fn new(prefix: &str, attempt: u32, heartbeat_seconds: u64) -> Result<Link> {
        let conf = sdk_config().await;
        let imds = aws_config::imds::Client::builder().build();
        let instance_id = imds
            .get("/latest/meta-data/instance-id")
            .await
            .context("reading the instance id from IMDSv2")?
            .as_ref()
            .to_string();
        Ok(Link::with_clients(
            aws_sdk_ssm::Client::new(&conf),
            aws_sdk_sfn::Client::new(&conf),
            imds,
            prefix,
            &instance_id,
            attempt,
            heartbeat_seconds,
        ))
    }

    /// A link over the given clients (tests hand in mocked ones).
    pub fn with_clients(
        ssm: aws_sdk_ssm::Client,
        sfn: aws_sdk_sfn::Client,
        imds: aws_config::imds::Client,
        prefix: &str,
        instance_id: &str,
        attempt: u32,
        heartbeat_seconds: u64,
    ) -> Link {
        Link {
            ssm,
            sfn,
            imds,
            parameters: RunParameters::at(prefix),
            instance_id: instance_id.to_string(),
            attempt,
            heartbeat: Duration::from_secs(heartbeat_seconds.max(1)),
        }
    }

    /// How long a report (success, failure) is tried for: the state machine gives up on the
    /// task one heartbeat period after the last heartbeat, and heartbeats go on meanwhile.
    fn report_deadline(&self) -> Instant {
        Instant::now() + (self.heartbeat * 2).max(Duration::from_secs(60))
    }

    /// A parameter of this instance's own (its task token, its run's session), or why it could
    /// not be read yet: None with the reason when it does not exist. Such a parameter is
    /// readable only under a condition on its tags, and a parameter that does not exist has
    /// none, so AWS answers AccessDenied rather than ParameterNotFound until it is written;
    /// both mean "not yet" here.
    async fn read_own(
        &self,
        name: &str,
        what: &str,
        deadline: Instant,
    ) -> Result<Result<String, String>> {
        match with_retries("GetParameter", deadline, || {
            self.ssm
                .get_parameter()
                .name(name)
                .with_decryption(true)
                .send()
        })
        .await
        {
            Ok(r) => match r.parameter().and_then(|p| p.value()) {
                Some(v) => Ok(Ok(v.to_string())),
                None => Ok(Err(format!("{name} has no value"))),
            },
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_parameter_not_found() || s.meta().code() == Some("AccessDeniedException")
                }) =>
            {
                Ok(Err(format!("{}", DisplayErrorContext(&e))))
            }
            Err(e) => Err(aws_sdk_ssm::Error::from(e)).with_context(|| format!("reading {what}")),
        }
    }

    /// Waits for the parameter `name` of this instance's own; on timeout, says what the last
    /// read answered.
    async fn wait_for_own(&self, name: &str, what: &str, timeout: Duration) -> Result<String> {
        let until = Instant::now() + timeout;
        let mut n = 0;
        loop {
            match self.read_own(name, what, until).await? {
                Ok(v) => return Ok(v),
                Err(why) => anyhow::ensure!(
                    Instant::now() < until,
                    "no {what} within {timeout:?} (last read: {why})"
                ),
            }
            // Backoff with jitter: the account's Parameter Store throughput is shared.
            let draw = ssm::token_poll_draw(&self.instance_id, n);
            tokio::time::sleep(ssm::token_poll_wait(n, draw)).await;
            n = n.saturating_add(1);
        }
    }

    /// This instance's session of the run role, as launch-worker handed it over (written just
    /// after the launch, so usually there at the first read).
    pub async fn wait_for_run_session(&self, timeout: Duration) -> Result<RunSession> {
        let name = self.parameters.run_session(&self.instance_id);
        let value = self.wait_for_own(&name, "run session", timeout).await?;
        let session: RunSession = serde_json::from_str(&value)
            .with_context(|| format!("reading the run session at {name}"))?;
        tracing::info!(expires = %session.expiration, "the run's session received");
        Ok(session)
    }

    /// Says "started"; transient errors are tried again for up to `patience`.
    pub async fn started(&self, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        let value = serde_json::to_string(&Started {
            instance_id: self.instance_id.clone(),
            attempt: self.attempt,
            at: chrono::Utc::now(),
        })?;
        let name = self.parameters.started(&self.instance_id);
        with_retries("PutParameter", deadline, || {
            self.ssm
                .put_parameter()
                .name(&name)
                .value(&value)
                .r#type(ParameterType::String)
                .overwrite(true)
                .send()
        })
        .await
        .map_err(aws_sdk_ssm::Error::from)
        .context("writing the started signal")?;
        tracing::info!(instance = %self.instance_id, attempt = self.attempt, "said started");
        Ok(())
    }

    /// Waits for this instance's token (the state machine writes it once health-check has seen
    /// "started"); on timeout, says what the last read answered.
    pub async fn wait_for_token(&self, timeout: Duration) -> Result<Token> {
        let name = self.parameters.task_token(&self.instance_id);
        let t = self.wait_for_own(&name, "task token", timeout).await?;
        tracing::info!("task token received");
        Ok(Token(t))
    }

    /// Heartbeats every third of the heartbeat period until the returned handle is dropped,
    /// and logs one line a period ([`HEARTBEAT_MESSAGE`]) while they go through: the line
    /// `ephemera status` shows as the job's last heartbeat (a shipped line a period, not three).
    pub fn heartbeat(&self, token: &Token) -> tokio::task::JoinHandle<()> {
        let sfn = self.sfn.clone();
        let token = token.0.clone();
        let period = self.heartbeat;
        tokio::spawn(async move {
            let mut logged: Option<Instant> = None;
            loop {
                match sfn.send_task_heartbeat().task_token(&token).send().await {
                    Ok(_) => {
                        if logged.is_none_or(|at| at.elapsed() >= period) {
                            tracing::info!("{HEARTBEAT_MESSAGE}");
                            logged = Some(Instant::now());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %aws_sdk_sfn::error::DisplayErrorContext(&e), "heartbeat failed")
                    }
                }
                tokio::time::sleep((period / 3).max(Duration::from_millis(200))).await;
            }
        })
    }

    pub async fn succeed(&self, token: &Token, summary: &Summary) -> Result<()> {
        // Cut before sending: a success Step Functions refuses would end the run without it.
        let output = super::sent::success_output(summary);
        with_retries("SendTaskSuccess", self.report_deadline(), || {
            self.sfn
                .send_task_success()
                .task_token(&token.0)
                .output(&output)
                .send()
        })
        .await
        .map_err(aws_sdk_sfn::Error::from)
        .context("SendTaskSuccess")?;
        Ok(())
    }

    pub async fn fail(&self, token: &Token, error: &str, cause: &str) -> Result<()> {
        let cause = super::sent::failure_cause(cause);
        with_retries("SendTaskFailure", self.report_deadline(), || {
            self.sfn
                .send_task_failure()
                .task_token(&token.0)
                .error(error)
                .cause(&cause)
                .send()
        })
        .await
        .map_err(aws_sdk_sfn::Error::from)
        .context("SendTaskFailure")?;
        Ok(())
    }

    /// Polls the Spot interruption notice (about two minutes before the instance goes); sets
    /// `notice` and cancels `stop` when it appears, which aborts the partitions in hand.
    pub fn watch_spot(
        &self,
        notice: Arc<AtomicBool>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let imds = self.imds.clone();
        tokio::spawn(async move {
            loop {
                if let Some(action) = spot_notice(&imds).await {
                    tracing::warn!(%action, "Spot interruption notice: aborting the partitions in hand");
                    notice.store(true, Ordering::SeqCst);
                    stop.cancel();
                    return;
                }
                tokio::time::sleep(SPOT_POLL).await;
            }
        })
    }

    /// Whether a Spot interruption notice is posted now (asked once, e.g. on SIGTERM).
    pub async fn spot_notice(&self) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(2), spot_notice(&self.imds))
            .await
            .ok()
            .flatten()
    }
}

/// The secret's database URL: a SecretString that is either the URL itself or JSON with `url`,
/// or with `host`, `port`, `username`, `password`, `dbname` (the RDS rotation layout).
pub fn url_from_secret(secret: &str) -> Result<String> {
    let s = secret.trim();
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        return Ok(s.to_string());
    }
    let v: serde_json::Value =
        serde_json::from_str(s).context("the secret is neither a URL nor JSON")?;
    if let Some(u) = v.get("url").and_then(|u| u.as_str()) {
        return Ok(u.to_string());
    }
    let field = |k: &str| -> Result<String> {
        v.get(k)
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| x.to_string())
            })
            .with_context(|| format!("the secret has no '{k}'"))
    };
    // A URL with every part percent-encoded: a password may hold any character (RDS's
    // generated ones hold quotes and spaces), and one pasted into `key=value` text unquoted
    // would end early or add settings of its own.
    let host = field("host")?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        urlencoding::encode(&host).into_owned()
    };
    Ok(format!(
        "postgresql://{}:{}@{host}:{}/{}",
        urlencoding::encode(&field("username")?),
        urlencoding::encode(&field("password")?),
        urlencoding::encode(&field("port").unwrap_or_else(|_| "5432".into())),
        urlencoding::encode(&field("dbname").unwrap_or_else(|_| "postgres".into())),
    ))
}

pub async fn database_url_from_secret(secret_id: &str) -> Result<String> {
    let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sm = aws_sdk_secretsmanager::Client::new(&conf);
    let deadline = Instant::now() + Duration::from_secs(300);
    let r = with_retries("GetSecretValue", deadline, || {
        sm.get_secret_value().secret_id(secret_id).send()
    })
    .await
    .map_err(aws_sdk_secretsmanager::Error::from)
    .with_context(|| format!("reading secret {secret_id}"))?;
    url_from_secret(
        r.secret_string()
            .context("the secret has no string value")?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sfn::operation::send_task_failure::SendTaskFailureOutput;
    use aws_sdk_ssm::error::ErrorMetadata;
    use aws_sdk_ssm::operation::get_parameter::{GetParameterError, GetParameterOutput};
    use aws_sdk_ssm::types::Parameter;
    use aws_smithy_mocks::{mock, mock_client, RuleMode};

    fn ssm_error(code: &str) -> GetParameterError {
        GetParameterError::generic(ErrorMetadata::builder().code(code).message(code).build())
    }

    fn token() -> GetParameterOutput {
        GetParameterOutput::builder()
            .parameter(
                Parameter::builder()
                    .name("/ephemera/runs/r/task-token/i-0123")
                    .value("the-token")
                    .build(),
            )
            .build()
    }

    /// A link whose SDK clients do not retry by themselves: every retry seen is the worker's.
    fn link(ssm: &[&aws_smithy_mocks::Rule], sfn: &[&aws_smithy_mocks::Rule]) -> Link {
        let no_retry = aws_sdk_ssm::config::retry::RetryConfig::disabled;
        Link::with_clients(
            mock_client!(aws_sdk_ssm, RuleMode::Sequential, ssm, |c| c
                .retry_config(no_retry())),
            mock_client!(aws_sdk_sfn, RuleMode::Sequential, sfn, |c| c
                .retry_config(no_retry())),
            aws_config::imds::Client::builder().build(),
            "/ephemera/runs/r/",
            "i-0123",
            1,
            30,
        )
    }

    #[tokio::test]
    async fn a_throttled_token_read_is_tried_again_until_the_token_is_read() {
        let get = mock!(aws_sdk_ssm::Client::get_parameter)
            .sequence()
            .error(|| ssm_error("ThrottlingException"))
            .times(2)
            .http_status(503, None)
            .output(token)
            .build();
        let link = link(&[&get], &[]);
        let t = link.wait_for_token(Duration::from_secs(30)).await.unwrap();
        assert_eq!(t.0, "the-token");
        assert_eq!(get.num_calls(), 4);
    }

    #[tokio::test]
    async fn access_denied_and_not_found_mean_not_handed_over_yet() {
        let get = mock!(aws_sdk_ssm::Client::get_parameter)
            .sequence()
            .error(|| ssm_error("AccessDeniedException"))
            .error(|| {
                GetParameterError::ParameterNotFound(
                    aws_sdk_ssm::types::error::ParameterNotFound::builder().build(),
                )
            })
            .output(token)
            .build();
        let link = link(&[&get], &[]);
        let t = link.wait_for_token(Duration::from_secs(30)).await.unwrap();
        assert_eq!(t.0, "the-token");
        assert_eq!(get.num_calls(), 3);
    }

    #[tokio::test]
    async fn a_token_never_handed_over_times_out_saying_what_aws_answered() {
        let get = mock!(aws_sdk_ssm::Client::get_parameter)
            .sequence()
            .error(|| ssm_error("AccessDeniedException"))
            .repeatedly()
            .build();
        let link = link(&[&get], &[]);
        let e = link
            .wait_for_token(Duration::from_millis(1500))
            .await
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("no task token within"), "{e}");
        assert!(e.contains("AccessDeniedException"), "{e}");
    }

    #[tokio::test]
    async fn a_non_transient_error_fails_at_once() {
        let get = mock!(aws_sdk_ssm::Client::get_parameter)
            .sequence()
            .error(|| ssm_error("ValidationException"))
            .output(token)
            .build();
        let link = link(&[&get], &[]);
        let e = link
            .wait_for_token(Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("ValidationException"), "{e:#}");
        assert_eq!(get.num_calls(), 1);
    }

    #[tokio::test]
    async fn transient_errors_are_tried_again_only_until_the_timeout() {
        let get = mock!(aws_sdk_ssm::Client::get_parameter)
            .sequence()
            .error(|| ssm_error("ThrottlingException"))
            .repeatedly()
            .build();
        let link = link(&[&get], &[]);
        let t0 = Instant::now();
        let e = link
            .wait_for_token(Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains("ThrottlingException"), "{e:#}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        // 0.5 s, then 1 s: the next wait (2 s) would end past the timeout.
        assert_eq!(get.num_calls(), 3);
    }

    #[tokio::test]
    async fn a_report_is_tried_again_on_throttling_and_5xx() {
        let fail = mock!(aws_sdk_sfn::Client::send_task_failure)
            .sequence()
            .error(|| {
                aws_sdk_sfn::operation::send_task_failure::SendTaskFailureError::generic(
                    ErrorMetadata::builder().code("ThrottlingException").build(),
                )
            })
            .http_status(500, None)
            .output(|| SendTaskFailureOutput::builder().build())
            .build();
        let link = link(&[], &[&fail]);
        link.fail(
            &Token("t".into()),
            ephemera_contract::names::SPOT_INTERRUPTED,
            "notice",
        )
        .await
        .unwrap();
        assert_eq!(fail.num_calls(), 3);
    }

    #[test]
    fn secrets() {
        assert_eq!(
            url_from_secret("postgres://u:p@h/db").unwrap(),
            "postgres://u:p@h/db"
        );
        assert_eq!(
            url_from_secret(r#"{"url":"postgres://x"}"#).unwrap(),
            "postgres://x"
        );
        assert_eq!(
            url_from_secret(
                r#"{"host":"h","port":5433,"username":"u","password":"p","dbname":"d"}"#
            )
            .unwrap(),
            "postgresql://u:p@h:5433/d"
        );
        // A password with the characters that would break `key=value` text or a URL reaches
        // the server as it is in the secret; RDS's host gets `verify-full` by default.
        let password = "a b'c\\d@e/f?g=h&i%j";
        let secret = serde_json::json!({"host": "db.abc.eu-west-1.rds.amazonaws.com",
            "port": 5432, "username": "u ser", "password": password, "dbname": "d"});
        let url = url_from_secret(&secret.to_string()).unwrap();
        let target = crate::db::Target::parse(&url).unwrap();
        assert_eq!(target.mode, crate::db::SslMode::VerifyFull);
        let config: tokio_postgres::Config = target.config.parse().unwrap();
        assert_eq!(config.get_password(), Some(password.as_bytes()));
        assert_eq!(config.get_user(), Some("u ser"));
        assert_eq!(config.get_dbname(), Some("d"));
        assert!(url_from_secret(r#"{"host":"h"}"#).is_err());
        assert_eq!(format!("{:?}", Token("secret".into())), "Token(…)");
    }
}

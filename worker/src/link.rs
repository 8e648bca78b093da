//! The link to the state machine, when the worker runs on an ephemera instance: say "started"
//! for this instance, take the task token from SSM once the state machine hands it over,
//! heartbeat, report success or failure, and watch for the Spot interruption notice.
//!
//! The token never passes through user data or logs: it is a SecureString under the run's SSM
//! path that the instance role alone may read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use anyhow::{Context, Result};
use aws_sdk_ssm::types::ParameterType;
use serde_json::json;

pub const SPOT_INTERRUPTED: &str = "Worker.SpotInterrupted";
pub const FAILED: &str = "Worker.Failed";

/// How often the Spot notice is looked for: IMDS is on the instance, and every second counts
/// out of the two minutes' notice.
const SPOT_POLL: Duration = Duration::from_secs(2);

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
    prefix: String,
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
        let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let imds = aws_config::imds::Client::builder().build();
        let instance_id = imds
            .get("/latest/meta-data/instance-id")
            .await
            .context("reading the instance id from IMDSv2")?
            .as_ref()
            .to_string();
        Ok(Link {
            ssm: aws_sdk_ssm::Client::new(&conf),
            sfn: aws_sdk_sfn::Client::new(&conf),
            imds,
            prefix: prefix.trim_end_matches('/').to_string(),
            instance_id,
            attempt,
            heartbeat: Duration::from_secs(heartbeat_seconds.max(1)),
        })
    }

    fn token_name(&self) -> String {
        format!("{}/task-token", self.prefix)
    }

    async fn token_version(&self) -> Result<Option<(i64, String)>> {
        match self
            .ssm
            .get_parameter()
            .name(self.token_name())
            .with_decryption(true)
            .send()
            .await
        {
            Ok(r) => Ok(r
                .parameter()
                .and_then(|p| Some((p.version(), p.value()?.to_string())))),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) =>
            {
                Ok(None)
            }
            Err(e) => Err(aws_sdk_ssm::Error::from(e)).context("reading the task token"),
        }
    }

    /// Says "started" and returns the token version already there (an earlier attempt's).
    pub async fn started(&self) -> Result<i64> {
        let before = self.token_version().await?.map_or(0, |(v, _)| v);
        let value = json!({
            "instance_id": self.instance_id,
            "attempt": self.attempt,
            "at": chrono::Utc::now().to_rfc3339(),
        });
        self.ssm
            .put_parameter()
            .name(format!("{}/started", self.prefix))
            .value(value.to_string())
            .r#type(ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .context("writing the started signal")?;
        tracing::info!(instance = %self.instance_id, attempt = self.attempt, "said started");
        Ok(before)
    }

    /// Waits for a token newer than `after` (the state machine writes it once health-check
    /// has seen "started").
    pub async fn wait_for_token(&self, after: i64, timeout: Duration) -> Result<Token> {
        let until = std::time::Instant::now() + timeout;
        loop {
            if let Some((v, t)) = self.token_version().await? {
                if v > after {
                    tracing::info!("task token received");
                    return Ok(Token(t));
                }
            }
            anyhow::ensure!(
                std::time::Instant::now() < until,
                "no task token within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Heartbeats every third of the heartbeat period until the returned handle is dropped.
    pub fn heartbeat(&self, token: &Token) -> tokio::task::JoinHandle<()> {
        let sfn = self.sfn.clone();
        let token = token.0.clone();
        let period = self.heartbeat / 3;
        tokio::spawn(async move {
            loop {
                if let Err(e) = sfn.send_task_heartbeat().task_token(&token).send().await {
                    tracing::warn!(error = %aws_sdk_sfn::error::DisplayErrorContext(&e), "heartbeat failed");
                }
                tokio::time::sleep(period.max(Duration::from_millis(200))).await;
            }
        })
    }

    pub async fn succeed(&self, token: &Token, report: &serde_json::Value) -> Result<()> {
        self.sfn
            .send_task_success()
            .task_token(&token.0)
            .output(report.to_string())
            .send()
            .await
            .map_err(aws_sdk_sfn::Error::from)
            .context("SendTaskSuccess")?;
        Ok(())
    }

    pub async fn fail(&self, token: &Token, error: &str, cause: &str) -> Result<()> {
        self.sfn
            .send_task_failure()
            .task_token(&token.0)
            .error(error)
            .cause(cause.chars().take(32_000).collect::<String>())
            .send()
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
    Ok(format!(
        "host={} port={} user={} password={} dbname={}",
        field("host")?,
        field("port").unwrap_or_else(|_| "5432".into()),
        field("username")?,
        field("password")?,
        field("dbname").unwrap_or_else(|_| "postgres".into())
    ))
}

pub async fn database_url_from_secret(secret_id: &str) -> Result<String> {
    let conf = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let sm = aws_sdk_secretsmanager::Client::new(&conf);
    let r = sm
        .get_secret_value()
        .secret_id(secret_id)
        .send()
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
            "host=h port=5433 user=u password=p dbname=d"
        );
        assert!(url_from_secret(r#"{"host":"h"}"#).is_err());
        assert_eq!(format!("{:?}", Token("secret".into())), "Token(…)");
    }
}

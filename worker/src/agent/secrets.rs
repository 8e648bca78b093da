//! A job's secrets (the RunSpec's `job.secrets`, told to the worker as `--secret NAME=ARN`):
//! read once, before the command starts, from Secrets Manager (GetSecretValue) or Parameter
//! Store (GetParameter WithDecryption), and given to the job as environment variables. Only the
//! ARNs travel (RunSpec, history, user data, this process's command line); the values live in
//! this process and the job's environment, and every value is kept for [`redact::scrub`] the
//! moment it is read, so no line of job text leaves the instance with it.
//!
//! A secret that cannot be read fails the attempt before the command starts, its cause naming
//! the variable and the ARN, never a value.

use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::link::with_retries;
use super::redact;

/// How long transient errors (throttling, 5xx) are tried again for, a secret.
const READ_PATIENCE: Duration = Duration::from_secs(120);

/// One of `job.secrets`: the variable the job reads it as, and where it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub name: String,
    pub arn: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SecretsManager,
    /// With the parameter's name as GetParameter takes it.
    Parameter,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("--secret '{given}' must be NAME=ARN, NAME an environment variable's name (A-Z a-z 0-9 _, not starting with a digit) and ARN a Secrets Manager secret's (arn:aws:secretsmanager:…:secret:…) or an SSM parameter's (arn:aws:ssm:…:parameter/…)")]
pub struct BadSecretArg {
    given: String,
}

impl FromStr for Named {
    type Err = BadSecretArg;

    fn from_str(s: &str) -> Result<Named, BadSecretArg> {
        let bad = || BadSecretArg {
            given: s.to_string(),
        };
        let (name, arn) = s.split_once('=').ok_or_else(bad)?;
        let shaped = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let service = arn.split(':').nth(2);
        let kind = match (arn.starts_with("arn:"), service) {
            (true, Some("secretsmanager")) if arn.contains(":secret:") => Kind::SecretsManager,
            (true, Some("ssm")) if arn.contains(":parameter/") => Kind::Parameter,
            _ => return Err(bad()),
        };
        if !shaped {
            return Err(bad());
        }
        Ok(Named {
            name: name.to_string(),
            arn: arn.to_string(),
            kind,
        })
    }
}

impl Named {
    /// The parameter's name from its ARN: the ARN drops the leading `/` of a name in a
    /// hierarchy (`parameter/team/db` is `/team/db`) and a name at the top has none
    /// (`parameter/db` is `db`), as Parameter Store's ARNs are written (Systems Manager user
    /// guide, "Working with parameter hierarchies").
    pub fn parameter_name(&self) -> Option<String> {
        let path = self.arn.split_once(":parameter/")?.1;
        Some(if path.contains('/') {
            format!("/{path}")
        } else {
            path.to_string()
        })
    }
}

/// A parameter as Parameter Store answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    /// `String`, `StringList` or `SecureString`.
    pub kind: String,
    pub value: Option<String>,
}

/// Where the values are read: Secrets Manager and Parameter Store behind one small trait, so
/// that what is asked and what becomes of each answer is tested without AWS.
pub trait Store {
    /// GetSecretValue's `SecretString` (None: the secret holds binary only), or why not.
    fn secret_string(
        &self,
        arn: &str,
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;
    /// GetParameter WithDecryption, or why not.
    fn parameter(&self, name: &str) -> impl Future<Output = Result<Parameter, String>> + Send;
}

/// The secrets that could not be read, each named; the job does not start.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("the job's secrets could not be read (job.secrets): {}", .0.iter().map(|(name, arn, why)| format!("{name} ({arn}): {why}")).collect::<Vec<_>>().join("; "))]
pub struct Unreadable(pub Vec<(String, String, String)>);

/// Each secret's value as the job's environment (NAME, value), in the order given; every value
/// kept for redaction as soon as it is read.
pub async fn read(
    named: &[Named],
    store: &impl Store,
) -> Result<Vec<(String, String)>, Unreadable> {
    let mut env = vec![];
    let mut failed = vec![];
    for n in named {
        let value = match n.kind {
            Kind::SecretsManager => match store.secret_string(&n.arn).await {
                Ok(Some(v)) => Ok(v),
                Ok(None) => Err("it holds a binary value only; the job's environment takes text (store it as SecretString)".to_string()),
                Err(e) => Err(e),
            },
            Kind::Parameter => match n.parameter_name() {
                None => Err("not a parameter's ARN".to_string()),
                Some(name) => match store.parameter(&name).await {
                    // A plain String is readable by anyone who may read parameters, and is
                    // kept unencrypted: it is no place for a secret, and saying so here is
                    // better than handing it over as one.
                    Ok(p) if p.kind != "SecureString" => Err(format!(
                        "it is a {} parameter, not a SecureString (store it with --type SecureString)",
                        p.kind
                    )),
                    Ok(Parameter { value: Some(v), .. }) => Ok(v),
                    Ok(Parameter { value: None, .. }) => Err("it has no value".to_string()),
                    Err(e) => Err(e),
                },
            },
        };
        match value {
            Ok(v) => {
                redact::keep(std::slice::from_ref(&v));
                env.push((n.name.clone(), v));
            }
            Err(why) => failed.push((n.name.clone(), n.arn.clone(), why)),
        }
    }
    if failed.is_empty() {
        Ok(env)
    } else {
        Err(Unreadable(failed))
    }
}

/// The store on AWS, with the worker's credentials.
pub struct Aws {
    sm: aws_sdk_secretsmanager::Client,
    ssm: aws_sdk_ssm::Client,
}

impl Aws {
    pub async fn new() -> Aws {
        // The run's session when the agent has one: its policy names exactly the secrets the
        // RunSpec names, so a job's secrets are read as its run's, never as the instance's.
        let conf = super::credentials::sdk_config().await;
        Aws {
            sm: aws_sdk_secretsmanager::Client::new(&conf),
            ssm: aws_sdk_ssm::Client::new(&conf),
        }
    }
}

impl Store for Aws {
    async fn secret_string(&self, arn: &str) -> Result<Option<String>, String> {
        let deadline = Instant::now() + READ_PATIENCE;
        with_retries("GetSecretValue", deadline, || {
            self.sm.get_secret_value().secret_id(arn).send()
        })
        .await
        .map(|r| r.secret_string().map(str::to_string))
        .map_err(|e| aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string())
    }

    async fn parameter(&self, name: &str) -> Result<Parameter, String> {
        let deadline = Instant::now() + READ_PATIENCE;
        with_retries("GetParameter", deadline, || {
            self.ssm
                .get_parameter()
                .name(name)
                .with_decryption(true)
                .send()
        })
        .await
        .map_err(|e| aws_sdk_ssm::error::DisplayErrorContext(e).to_string())
        .and_then(|r| {
            let p = r.parameter.ok_or("GetParameter answered no parameter")?;
            Ok(Parameter {
                kind: p
                    .r#type
                    .map_or_else(|| "untyped".into(), |t| t.as_str().to_string()),
                value: p.value,
            })
        })
    }
}

/// The secrets `named` as the job's environment, read from AWS (nothing is asked when there are
/// none).
pub async fn read_from_aws(named: &[Named]) -> Result<Vec<(String, String)>, Unreadable> {
    if named.is_empty() {
        return Ok(vec![]);
    }
    read(named, &Aws::new().await).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    const SM: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ephemera/api-AbCdEf";
    const PS: &str = "arn:aws:ssm:us-east-1:123456789012:parameter/ephemera/db/password";

    /// Answers from a map; records what was asked.
    #[derive(Default)]
    struct Fake {
        secrets: BTreeMap<String, Result<Option<String>, String>>,
        parameters: BTreeMap<String, Result<Parameter, String>>,
        asked: Mutex<Vec<String>>,
    }

    impl Store for Fake {
        async fn secret_string(&self, arn: &str) -> Result<Option<String>, String> {
            self.asked.lock().unwrap().push(arn.to_string());
            self.secrets
                .get(arn)
                .cloned()
                .unwrap_or(Err("ResourceNotFoundException".into()))
        }
        async fn parameter(&self, name: &str) -> Result<Parameter, String> {
            self.asked.lock().unwrap().push(name.to_string());
            self.parameters
                .get(name)
                .cloned()
                .unwrap_or(Err("ParameterNotFound".into()))
        }
    }

    fn named(s: &str) -> Named {
        s.parse().unwrap()
    }

    fn secure(v: &str) -> Result<Parameter, String> {
        Ok(Parameter {
            kind: "SecureString".into(),
            value: Some(v.into()),
        })
    }

    #[test]
    fn the_argument_is_a_name_and_an_arn_of_either_kind() {
        let n = named(&format!("API_KEY={SM}"));
        assert_eq!(
            (n.name.as_str(), n.arn.as_str(), n.kind),
            ("API_KEY", SM, Kind::SecretsManager)
        );
        let p = named(&format!("DB_PASSWORD={PS}"));
        assert_eq!(p.kind, Kind::Parameter);
        assert_eq!(p.parameter_name().as_deref(), Some("/ephemera/db/password"));
        let top = named("T=arn:aws:ssm:us-east-1:123456789012:parameter/token");
        assert_eq!(top.parameter_name().as_deref(), Some("token"));
        for bad in [
            "API_KEY",
            &format!("1X={SM}"),
            &format!("A-B={SM}"),
            "K=team/api-key",
            "K=arn:aws:s3:::bucket/key",
        ] {
            let e = bad.parse::<Named>().unwrap_err().to_string();
            assert!(e.contains("must be NAME=ARN"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn each_value_becomes_the_jobs_variable_and_is_redacted_from_then_on() {
        let mut store = Fake::default();
        store
            .secrets
            .insert(SM.into(), Ok(Some("sm-value-7f3a9c".into())));
        store
            .parameters
            .insert("/ephemera/db/password".into(), secure("ps-value-41d2e8"));
        let env = read(
            &[named(&format!("API_KEY={SM}")), named(&format!("DB={PS}"))],
            &store,
        )
        .await
        .unwrap();
        assert_eq!(
            env,
            [
                ("API_KEY".to_string(), "sm-value-7f3a9c".to_string()),
                ("DB".to_string(), "ps-value-41d2e8".to_string())
            ]
        );
        assert_eq!(*store.asked.lock().unwrap(), [SM, "/ephemera/db/password"]);
        assert_eq!(
            redact::scrub("got sm-value-7f3a9c and ps-value-41d2e8"),
            "got [redacted] and [redacted]"
        );
    }

    #[tokio::test]
    async fn a_secret_that_cannot_be_read_is_named_without_any_value() {
        let mut store = Fake::default();
        store
            .secrets
            .insert(SM.into(), Ok(Some("readable-value-0c1d".into())));
        store.parameters.insert(
            "/ephemera/db/password".into(),
            Ok(Parameter {
                kind: "String".into(),
                value: Some("plain-value-9e8f".into()),
            }),
        );
        let missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ephemera/gone-ZyXwVu";
        let e = read(
            &[
                named(&format!("OK={SM}")),
                named(&format!("PLAIN={PS}")),
                named(&format!("GONE={missing}")),
            ],
            &store,
        )
        .await
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "PLAIN ({PS}): it is a String parameter, not a SecureString"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("GONE ({missing}): ResourceNotFoundException")),
            "{text}"
        );
        assert!(!text.contains("OK ("), "{text}");
        assert!(
            !text.contains("plain-value-9e8f") && !text.contains("readable-value-0c1d"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_binary_only_secret_is_refused_and_none_asks_nothing() {
        let mut store = Fake::default();
        store.secrets.insert(SM.into(), Ok(None));
        let e = read(&[named(&format!("K={SM}"))], &store)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("binary value only"), "{e}");
        assert_eq!(read_from_aws(&[]).await.unwrap(), vec![]);
    }
}

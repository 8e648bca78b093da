//! `job.secrets`: the environment variables a job gets from Secrets Manager or SSM Parameter
//! Store, each named by its ARN. Ground floor: the rules on a name and an ARN, the kind of
//! each, and the worker's `--secret NAME=ARN` argument, for `runspec` (the field rules),
//! `run_credentials` (the session policy) and `image` (the arguments at launch).
//!
//! Only ARNs ever travel (RunSpec, history, user data); the values are read by the agent on
//! the instance and given to the job's environment (docs/worker.md, "Secrets").

/// At most this many secrets a run: each ARN is named in the agent's session policy, which
/// AssumeRole takes up to 2,048 characters of (`run_credentials`), beside the run's inputs.
pub const MAX_SECRETS: usize = 10;

/// The longest name of an environment variable accepted (Linux takes far longer; a name this
/// long is a mistake, not a need).
pub const MAX_NAME_CHARS: usize = 128;

/// Names the agent sets or that change how the job's programs start: a secret must not
/// replace them. `EPHEMERA_*` is the run's environment (`supervise::run_env`), `AWS_*` the
/// SDKs' credentials and endpoints (the agent sets `AWS_EC2_METADATA_DISABLED` for the job),
/// `LD_*` the dynamic loader's.
pub const RESERVED_PREFIXES: [&str; 3] = ["EPHEMERA_", "AWS_", "LD_"];
/// Whole names refused for the same reason: the shell's and the runtime's own.
pub const RESERVED_NAMES: [&str; 4] = ["PATH", "HOME", "USER", "SHELL"];

/// Where a secret is kept, read from its ARN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `arn:aws:secretsmanager:<region>:<account>:secret:<name>`: GetSecretValue.
    SecretsManager,
    /// `arn:aws:ssm:<region>:<account>:parameter/<name>`: GetParameter WithDecryption.
    Parameter,
}

/// An ARN of either kind, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arn<'a> {
    /// A Secrets Manager secret or an SSM parameter.
    pub kind: Kind,
    /// The region in the ARN: it must be the stack's.
    pub region: &'a str,
    /// The account id in the ARN.
    pub account: &'a str,
    /// The secret's name (with Secrets Manager's six-character suffix when the ARN has it) or
    /// the parameter's path after `parameter/`.
    pub name: &'a str,
}

impl Kind {
    /// The IAM action that reads a secret of this kind.
    pub fn action(self) -> &'static str {
        match self {
            Kind::SecretsManager => "secretsmanager:GetSecretValue",
            Kind::Parameter => "ssm:GetParameter",
        }
    }
}

/// `arn` read as a secret's ARN, or what is wrong with it (said as "must be …").
pub fn parse_arn(arn: &str) -> Result<Arn<'_>, String> {
    const FORMS: &str = "must be a Secrets Manager secret's ARN (arn:aws:secretsmanager:<region>:<account>:secret:<name>) or an SSM SecureString parameter's (arn:aws:ssm:<region>:<account>:parameter/<name>)";
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [arn_, partition, service, region, account, rest] = parts[..] else {
        return Err(FORMS.into());
    };
    if arn_ != "arn" || !matches!(partition, "aws" | "aws-cn" | "aws-us-gov") {
        return Err(FORMS.into());
    }
    let (kind, name) = match (service, rest.split_once([':', '/'])) {
        ("secretsmanager", Some(("secret", name))) if rest.as_bytes()[6] == b':' => {
            (Kind::SecretsManager, name)
        }
        ("ssm", Some(("parameter", name))) if rest.as_bytes()[9] == b'/' => (Kind::Parameter, name),
        _ => return Err(FORMS.into()),
    };
    if !is_region(region) {
        return Err(format!("{FORMS}: '{region}' is not a region"));
    }
    if account.len() != 12 || !account.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("{FORMS}: the account must be 12 digits"));
    }
    // A wildcard would widen the agent's session policy past the secret named.
    let allowed = |c: char| match kind {
        // Secrets Manager's name characters (CreateSecret, `Name`).
        Kind::SecretsManager => c.is_ascii_alphanumeric() || "/_+=.@-".contains(c),
        // Parameter Store's (PutParameter, `Name`).
        Kind::Parameter => c.is_ascii_alphanumeric() || "/_.-".contains(c),
    };
    if name.is_empty() || name.ends_with('/') || !name.chars().all(allowed) {
        return Err(format!(
            "{FORMS}: the name '{name}' has characters a {} name cannot (no wildcards)",
            match kind {
                Kind::SecretsManager => "secret",
                Kind::Parameter => "parameter",
            }
        ));
    }
    Ok(Arn {
        kind,
        region,
        account,
        name,
    })
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `ap-southeast-4`: letters, a direction, a digit.
fn is_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    (3..=4).contains(&parts.len())
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// What is wrong with `name` as the job's environment variable, if anything.
pub fn name_problem(name: &str) -> Option<String> {
    let shaped = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_NAME_CHARS;
    if !shaped {
        return Some(format!(
            "'{name}' must be an environment variable's name: 1 to {MAX_NAME_CHARS} of A-Z a-z 0-9 _, not starting with a digit"
        ));
    }
    let upper = name.to_ascii_uppercase();
    if let Some(p) = RESERVED_PREFIXES.iter().find(|p| upper.starts_with(*p)) {
        return Some(format!(
            "'{name}' starts with {p}, which the worker sets or the job's programs read for themselves (reserved: {}*, and {})",
            RESERVED_PREFIXES.join("*, "),
            RESERVED_NAMES.join(", ")
        ));
    }
    if RESERVED_NAMES.contains(&upper.as_str()) {
        return Some(format!(
            "'{name}' is the shell's own (reserved: {}, and {}*)",
            RESERVED_NAMES.join(", "),
            RESERVED_PREFIXES.join("*, ")
        ));
    }
    None
}

/// The worker's argument for one secret: `--secret NAME=ARN` (an ARN is no secret: it may be
/// in user data; the value never is).
pub fn worker_arg(name: &str, arn: &str) -> [String; 2] {
    ["--secret".into(), format!("{name}={arn}")]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SM: &str = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:team/api-key-AbCdEf";
    const PS: &str = "arn:aws:ssm:eu-west-1:123456789012:parameter/team/db/password";

    #[test]
    fn both_kinds_are_read_with_their_region_account_and_name() {
        assert_eq!(
            parse_arn(SM).unwrap(),
            Arn {
                kind: Kind::SecretsManager,
                region: "eu-west-1",
                account: "123456789012",
                name: "team/api-key-AbCdEf"
            }
        );
        let p = parse_arn(PS).unwrap();
        assert_eq!(
            (p.kind, p.name, p.kind.action()),
            (Kind::Parameter, "team/db/password", "ssm:GetParameter")
        );
        assert!(parse_arn("arn:aws-us-gov:ssm:us-gov-west-1:123456789012:parameter/x").is_ok());
    }

    #[test]
    fn anything_else_is_refused_saying_the_two_forms() {
        for bad in [
            "",
            "team/api-key",
            "arn:aws:s3:::bucket/key",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:team/*",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secretx:k",
            "arn:aws:ssm:eu-west-1:123456789012:parameter/team/?",
            "arn:aws:ssm:eu-west-1:123456789012:parameter:team",
            "arn:aws:ssm:eu-west-1:1234:parameter/team",
            "arn:aws:ssm:*:123456789012:parameter/team",
            "arn:aws:ssm:eu-west-1:123456789012:document/team",
            "arn:other:ssm:eu-west-1:123456789012:parameter/team",
        ] {
            let e = parse_arn(bad).expect_err(bad);
            assert!(e.contains("arn:aws:secretsmanager:<region>"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_name_is_an_environment_variables_and_not_one_the_worker_sets() {
        for ok in ["API_KEY", "db_password", "_X", "HF_TOKEN"] {
            assert_eq!(name_problem(ok), None, "{ok}");
        }
        for (bad, says) in [
            ("", "environment variable's name"),
            ("1KEY", "environment variable's name"),
            ("API-KEY", "environment variable's name"),
            ("A B", "environment variable's name"),
            ("EPHEMERA_RUN_ID", "starts with EPHEMERA_"),
            ("aws_secret_access_key", "starts with AWS_"),
            ("LD_PRELOAD", "starts with LD_"),
            ("PATH", "the shell's own"),
        ] {
            let e = name_problem(bad).unwrap_or_default();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(name_problem(&"K".repeat(MAX_NAME_CHARS + 1)).is_some());
    }

    #[test]
    fn the_worker_is_told_each_secret_by_name_and_arn() {
        assert_eq!(
            worker_arg("API_KEY", SM),
            ["--secret".to_string(), format!("API_KEY={SM}")]
        );
    }
}

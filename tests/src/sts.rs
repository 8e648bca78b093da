//! AWS STS as the front door plays it: `AssumeRole` of the run role with session tags,
//! transitive tag keys and a session policy, and the sessions it minted (`run-<n>` keys).
//!
//! moto's STS hands out credentials but keeps neither the tags nor the session policy, and
//! moto checks no permission; the front door authorizes every later call of a session with
//! both (`iam::Policies::authorize_session`). What AWS does, and where it says so:
//! - the caller needs `sts:AssumeRole` on the role, and `sts:TagSession` when it passes tags,
//!   in its own policies and in the role's trust policy (IAM user guide, "Pass session tags in
//!   AWS STS", permissions required to add session tags:
//!   <https://docs.aws.amazon.com/IAM/latest/UserGuide/id_session-tags.html#id_session-tags_permissions-required>);
//! - a session's tags are its `aws:PrincipalTag/…` keys; transitive ones pass to every session
//!   assumed from it, and passing a tag with the key of an inherited one fails the call (STS API
//!   reference, AssumeRole, `Tags` and `TransitiveTagKeys`:
//!   <https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html>);
//! - a role assumed with a role's credentials (role chaining, which every caller here is: the
//!   Lambdas' and the run's credentials are role sessions) lasts at most one hour, and asking
//!   for more fails (IAM user guide, roles terms, "Role chaining":
//!   <https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles.html#iam-term-role-chaining>);
//! - the session policy narrows the role's permissions, never widens them (the same AssumeRole
//!   page, `Policy`), and it is not inherited: a session assumed from it has the session policy
//!   passed then, or none.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::iam::{run_role_arn, statements_from_json, Check, Policies, Principal, Statement};
use crate::iam::{ACCOUNT, RUN_ROLE_ID};

/// The longest session role chaining gives.
pub const CHAINED_MAX_SECONDS: i64 = 3600;

/// One session minted by AssumeRole.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub role: Principal,
    /// RoleSessionName: the second half of the session's `aws:userid`.
    pub name: String,
    /// Its principal tags: the request's and the caller's transitive ones.
    pub tags: BTreeMap<String, String>,
    /// The keys that pass on to a session assumed from this one.
    pub transitive: BTreeSet<String>,
    pub policy: Option<Vec<Statement>>,
    pub expires: DateTime<Utc>,
    /// Assumed from another session of the run role (a renewal by role chaining).
    pub chained: bool,
}

impl Session {
    pub fn userid(&self) -> String {
        format!("{RUN_ROLE_ID}:{}", self.name)
    }
}

/// Why STS refused, as its error code and message.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn refuse(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
    }
}

/// `prefix.member.N` values of a query-protocol request, in order.
fn members(form: &HashMap<String, String>, prefix: &str) -> Vec<String> {
    (1..=60)
        .map_while(|n| form.get(&format!("{prefix}.member.{n}")).cloned())
        .collect()
}

/// The session an AssumeRole request makes, or STS's refusal. `caller` is who signed, with its
/// session when it is one the door minted.
pub fn assume_role(
    policies: &Policies,
    caller: (&Principal, Option<&Session>),
    region: &str,
    form: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<Session, Refusal> {
    let (principal, caller_session) = caller;
    let role_arn = form.get("RoleArn").cloned().unwrap_or_default();
    let name = form.get("RoleSessionName").cloned().unwrap_or_default();
    if name.is_empty() || name.len() > 64 {
        return Err(refuse(
            400,
            "ValidationError",
            "RoleSessionName: 2 to 64 characters",
        ));
    }
    let seconds: i64 = match form.get("DurationSeconds") {
        Some(d) => d
            .parse()
            .map_err(|_| refuse(400, "ValidationError", "DurationSeconds is not a number"))?,
        None => CHAINED_MAX_SECONDS,
    };
    if seconds > CHAINED_MAX_SECONDS {
        return Err(refuse(
            400,
            "ValidationError",
            "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.",
        ));
    }
    let mut tags = BTreeMap::new();
    // `Tags.member.N.Key` and `.Value`: the session tags asked for.
    for n in 1..=50 {
        if let Some(k) = form.get(&format!("Tags.member.{n}.Key")) {
            let v = form
                .get(&format!("Tags.member.{n}.Value"))
                .cloned()
                .unwrap_or_default();
            tags.insert(k.clone(), v);
        }
    }
    let transitive_asked: BTreeSet<String> =
        members(form, "TransitiveTagKeys").into_iter().collect();
    if let Some(k) = transitive_asked.iter().find(|k| !tags.contains_key(*k)) {
        return Err(refuse(
            400,
            "InvalidParameterValue",
            format!("The transitive tag key {k} is not a key of the session's tags."),
        ));
    }

    // Authorization: the caller's own policies and the role's trust policy, for AssumeRole and
    // (with tags) TagSession.
    let target = if role_arn == run_role_arn() {
        Principal::Run
    } else {
        return Err(refuse(
            403,
            "AccessDenied",
            format!(
                "User: {} is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
                principal.arn()
            ),
        ));
    };
    let mut actions = vec!["sts:AssumeRole"];
    if !tags.is_empty() {
        actions.push("sts:TagSession");
    }
    for action in actions {
        let mut check = Check::new(action, role_arn.clone());
        for (k, v) in &tags {
            check = check.with(&format!("aws:RequestTag/{k}"), v.clone());
        }
        let (caller_tags, caller_policy) = match caller_session {
            Some(s) => (s.tags.clone(), s.policy.as_deref()),
            None => (BTreeMap::new(), None),
        };
        if let Some(s) = caller_session {
            check = check.with("aws:userid", s.userid());
        }
        policies
            .authorize_session(principal, &caller_tags, caller_policy, region, &check)
            .map_err(|m| refuse(403, "AccessDenied", m))?;
        if !policies.trusts(&target, &principal.role_arn(), region, &check) {
            return Err(refuse(
                403,
                "AccessDenied",
                format!(
                    "User: {} is not authorized to perform: {action} on resource: {role_arn} because the role's trust policy does not allow it",
                    principal.arn()
                ),
            ));
        }
    }

    // The caller's transitive tags pass on and cannot be passed again.
    let mut all = tags.clone();
    let mut transitive = transitive_asked;
    if let Some(s) = caller_session {
        for k in &s.transitive {
            if tags.keys().any(|t| t.eq_ignore_ascii_case(k)) {
                return Err(refuse(
                    400,
                    "InvalidParameterValue",
                    format!("The session tag {k} is inherited as a transitive tag and cannot be passed again."),
                ));
            }
            if let Some(v) = s.tags.get(k) {
                all.insert(k.clone(), v.clone());
                transitive.insert(k.clone());
            }
        }
    }
    let policy = match form.get("Policy") {
        // "The plaintext that you use for both inline and managed session policies can't exceed
        // 2,048 characters" (STS API reference, AssumeRole, `Policy`); moto takes any length.
        Some(text) if text.chars().count() > 2048 => {
            return Err(refuse(
                400,
                "ValidationError",
                format!(
                    "1 validation error detected: Value at 'policy' failed to satisfy constraint: Member must have length less than or equal to 2048 (it has {})",
                    text.chars().count()
                ),
            ))
        }
        Some(text) => {
            let doc: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| refuse(400, "MalformedPolicyDocument", e.to_string()))?;
            Some(
                statements_from_json(&doc)
                    .map_err(|e| refuse(400, "MalformedPolicyDocument", e))?,
            )
        }
        None => None,
    };
    Ok(Session {
        role: target,
        name,
        tags: all,
        transitive,
        policy,
        expires: now + chrono::Duration::seconds(seconds),
        chained: caller_session.is_some(),
    })
}

/// The sessions the door minted, by access key.
#[derive(Default)]
pub struct Sessions {
    next: AtomicU64,
    by_key: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Keeps `session` and returns its access key.
    pub fn mint(&self, session: Session) -> String {
        let key = format!("run-{}", self.next.fetch_add(1, Ordering::Relaxed) + 1);
        self.by_key.lock().unwrap().insert(key.clone(), session);
        key
    }

    pub fn get(&self, key: &str) -> Option<Session> {
        self.by_key.lock().unwrap().get(key).cloned()
    }

    /// Every session minted for `run` (its `ephemera:run` tag), in no order.
    pub fn of_run(&self, run: &str) -> Vec<Session> {
        self.by_key
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.tags.get("ephemera:run").map(String::as_str) == Some(run))
            .cloned()
            .collect()
    }
}

/// AssumeRole's answer, as STS writes it.
pub fn credentials_xml(key: &str, s: &Session) -> String {
    format!(
        r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult><Credentials><AccessKeyId>{key}</AccessKeyId><SecretAccessKey>secret-{key}</SecretAccessKey><SessionToken>token-{key}</SessionToken><Expiration>{}</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>{}</AssumedRoleId><Arn>arn:aws:sts::{ACCOUNT}:assumed-role/{}/{}</Arn></AssumedRoleUser><PackedPolicySize>10</PackedPolicySize></AssumeRoleResult><ResponseMetadata><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ResponseMetadata></AssumeRoleResponse>"#,
        s.expires.format("%Y-%m-%dT%H:%M:%SZ"),
        s.userid(),
        s.role.role(),
        s.name,
    )
}

/// An STS error, as STS writes it.
pub fn error_xml(r: &Refusal) -> String {
    let message = r
        .message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type><Code>{}</Code><Message>{message}</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>"#,
        r.code
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn template() -> Policies {
        Policies::from_template_file(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"),
        )
    }

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn vend(run: &str) -> HashMap<String, String> {
        form(&[
            ("Action", "AssumeRole"),
            ("RoleArn", &run_role_arn()),
            ("RoleSessionName", "i-1"),
            ("Tags.member.1.Key", "ephemera:run"),
            ("Tags.member.1.Value", run),
            ("TransitiveTagKeys.member.1", "ephemera:run"),
        ])
    }

    fn launch() -> Principal {
        Principal::Function("launch-worker".into())
    }

    #[test]
    fn launch_worker_vends_a_session_tagged_with_its_run() {
        let p = template();
        let now = Utc::now();
        let s = assume_role(&p, (&launch(), None), "eu-west-1", &vend("r1"), now).unwrap();
        assert_eq!(s.role, Principal::Run);
        assert_eq!(s.tags["ephemera:run"], "r1");
        assert!(s.transitive.contains("ephemera:run"));
        assert_eq!(s.expires, now + chrono::Duration::seconds(3600));
        // Without the run's tag: no.
        let mut untagged = vend("r1");
        untagged.retain(|k, _| !k.starts_with("Tags.") && !k.starts_with("Transitive"));
        let r = assume_role(&p, (&launch(), None), "eu-west-1", &untagged, now).unwrap_err();
        assert_eq!(r.code, "AccessDenied");
        // Nobody else may: the instance role, another function.
        for who in [Principal::Worker, Principal::Function("sweeper".into())] {
            let r = assume_role(&p, (&who, None), "eu-west-1", &vend("r1"), now).unwrap_err();
            assert_eq!(r.code, "AccessDenied", "{who:?}");
        }
        // Role chaining: one hour at most.
        let mut long = vend("r1");
        long.insert("DurationSeconds".into(), "7200".into());
        let r = assume_role(&p, (&launch(), None), "eu-west-1", &long, now).unwrap_err();
        assert!(r.message.contains("1 hour session limit"), "{r:?}");
    }

    #[test]
    fn a_renewal_keeps_the_run_and_cannot_change_it() {
        let p = template();
        let now = Utc::now();
        let first = assume_role(&p, (&launch(), None), "eu-west-1", &vend("r1"), now).unwrap();
        let renew = form(&[
            ("Action", "AssumeRole"),
            ("RoleArn", &run_role_arn()),
            ("RoleSessionName", "i-1"),
        ]);
        let later = now + chrono::Duration::seconds(3000);
        let again = assume_role(
            &p,
            (&Principal::Run, Some(&first)),
            "eu-west-1",
            &renew,
            later,
        )
        .unwrap();
        assert_eq!(again.tags["ephemera:run"], "r1");
        assert!(again.transitive.contains("ephemera:run"));
        assert_eq!(again.expires, later + chrono::Duration::seconds(3600));
        // Passing the inherited key again (to become another run) fails: the role may not tag
        // its own sessions, and STS refuses an inherited key passed again whatever the policies.
        let r = assume_role(
            &p,
            (&Principal::Run, Some(&first)),
            "eu-west-1",
            &vend("r2"),
            later,
        )
        .unwrap_err();
        assert_eq!(r.code, "AccessDenied", "{r:?}");
        let mut lenient = p.clone();
        lenient
            .by_principal
            .get_mut(&Principal::Run)
            .unwrap()
            .push(crate::iam::Statement {
                sid: "TagAnything".into(),
                allow: true,
                actions: vec!["sts:TagSession".into()],
                resources: vec!["*".into()],
                conditions: vec![],
            });
        let r = assume_role(
            &lenient,
            (&Principal::Run, Some(&first)),
            "eu-west-1",
            &vend("r2"),
            later,
        )
        .unwrap_err();
        assert_eq!(r.code, "InvalidParameterValue", "{r:?}");
    }

    #[test]
    fn a_session_policy_over_2048_characters_is_refused_as_sts_refuses_it() {
        let p = template();
        let policy = |chars: usize| {
            let head = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/"#;
            let tail = r#""}]}"#;
            format!(
                "{head}{}{tail}",
                "x".repeat(chars - head.len() - tail.len())
            )
        };
        for (chars, ok) in [(2048, true), (2049, false)] {
            let mut form = vend("r1");
            form.insert("Policy".into(), policy(chars));
            let r = assume_role(&p, (&launch(), None), "eu-west-1", &form, Utc::now());
            match (r, ok) {
                (Ok(_), true) => {}
                (Err(e), false) => {
                    assert_eq!((e.status, e.code), (400, "ValidationError"), "{e:?}");
                    assert!(e.message.contains("less than or equal to 2048"), "{e:?}");
                }
                (r, _) => panic!("{chars} characters: {r:?}"),
            }
        }
    }

    #[test]
    fn a_session_whose_policy_names_no_sts_cannot_renew_itself() {
        let p = template();
        let now = Utc::now();
        let mut job = vend("r1");
        job.insert(
            "Policy".into(),
            serde_json::json!({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]})
            .to_string(),
        );
        let job = assume_role(&p, (&launch(), None), "eu-west-1", &job, now).unwrap();
        let renew = form(&[
            ("Action", "AssumeRole"),
            ("RoleArn", &run_role_arn()),
            ("RoleSessionName", "job"),
        ]);
        let r =
            assume_role(&p, (&Principal::Run, Some(&job)), "eu-west-1", &renew, now).unwrap_err();
        assert_eq!(r.code, "AccessDenied");
        assert!(r.message.contains("no session policy allows"), "{r:?}");
    }
}

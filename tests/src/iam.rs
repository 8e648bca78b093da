//! IAM as AWS evaluates it, for the principals template.yaml defines.
//!
//! moto checks no permission. The front door does: every request signed with a principal's
//! access key (see [`Principal`]) is authorized against the statements the template gives that
//! principal — read from template.yaml itself, SAM policy templates expanded — before it reaches
//! moto, and a call they do not allow is refused with the service's own AccessDenied answer.
//! Evaluation follows the IAM policy evaluation logic for identity-based policies in one account:
//! an explicit Deny wins, otherwise some Allow must match the action, the resource and every
//! condition; actions without resource-level permissions are authorized against `*`
//! (<https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic.html>).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_yaml_ng::Value as Yaml;

pub const ACCOUNT: &str = "123456789012";
pub const STACK: &str = "ephemera";

/// The stack's worker log group (template.yaml `WorkerLogs`), where the workers ship their lines.
pub fn worker_log_group() -> String {
    ephemera_core::contract::logs::stack_worker_log_group(STACK)
}
/// The functions' memory, the template's `Globals.Function.MemorySize` (what Lambda tells each
/// function in `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, and what its GB-seconds are priced at).
pub fn lambda_memory_mb() -> u32 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
    let text = std::fs::read_to_string(&path).expect("template.yaml");
    let template: Yaml = serde_yaml_ng::from_str(&text).expect("template.yaml is YAML");
    template["Globals"]["Function"]["MemorySize"]
        .as_u64()
        .and_then(|m| u32::try_from(m).ok())
        .expect("template.yaml sets Globals.Function.MemorySize")
}

/// The template parameters the harness deploys with.
pub const ARTIFACT_BUCKET: &str = "ephemera-artifacts";
pub const EXPORT_BUCKET: &str = "ephemera-features";
/// Every bucket the template names (its `ArtifactBucket` and `ExportBucket` parameters): an
/// account the harness plays as deployed has them all, or the reports and the month's page
/// meet `NoSuchBucket` where a real stack would not.
pub const BUCKETS: [&str; 2] = [ARTIFACT_BUCKET, EXPORT_BUCKET];
pub const REPORT_TOPIC: &str = "ephemera-reports";
/// The template's default `DatabaseSecretPrefix`: the secrets (and parameters) the workers may
/// read, a job's `job.secrets` among them.
pub const SECRET_PREFIX: &str = "ephemera/";
pub const WORKER_PROFILE: &str = "ephemera-worker";
/// The worker role's RoleId (`!GetAtt WorkerRole.RoleId`; AWS's are `AROA` and 17 more).
pub const WORKER_ROLE_ID: &str = "AROAEPHEMERAWORKER001";
/// The run role's RoleId (`RunRole`: the credentials of one run, `crate::sts`).
pub const RUN_ROLE_ID: &str = "AROAEPHEMERARUNROLE01";
/// The run role's ARN as the harness deploys it.
pub fn run_role_arn() -> String {
    format!("arn:aws:iam::{ACCOUNT}:role/{STACK}-run-role")
}
/// The run ledger's table (`LedgerTable`, named `${AWS::StackName}-ledger`).
pub const LEDGER_TABLE: &str = "ephemera-ledger";
/// The template's default `MonthlyBudgetUsd`.
pub const MONTHLY_BUDGET_USD: f64 = 833.0;
/// The id of the stack's task-token key (`TaskTokenKey`) in every region of the harness.
pub const TASK_TOKEN_KEY_ID: &str = "ephemera-task-tokens-0000000000000001";

/// The task-token key's ARN in `region` (`!GetAtt TaskTokenKey.Arn`).
pub fn task_token_key(region: &str) -> String {
    format!("arn:aws:kms:{region}:{ACCOUNT}:key/{TASK_TOKEN_KEY_ID}")
}

/// A worker signing with the key of no particular instance (the CLI tests' log reader).
const NO_INSTANCE: &str = "i-worker";

/// Who signed a request, told by its access key id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    /// A Lambda's execution role (`fn-<function>`).
    Function(String),
    /// The state machine's role: moto's executor signs its service calls with `ak`.
    StateMachine,
    /// The worker's instance role (`worker`).
    Worker,
    /// EventBridge Scheduler's role (`scheduler`).
    Scheduler,
    /// A session of the run role (`RunRole`), minted by the front door's STS (`run-<n>`); its
    /// tags and session policy are the door's to look up (`crate::sts::Session`).
    Run,
}

impl Principal {
    pub fn from_access_key(key: &str) -> Option<Principal> {
        match key {
            "ak" => Some(Principal::StateMachine),
            "worker" => Some(Principal::Worker),
            k if k.starts_with("worker-i-") => Some(Principal::Worker),
            "scheduler" => Some(Principal::Scheduler),
            k if k.starts_with("run-") => Some(Principal::Run),
            k => k.strip_prefix("fn-").map(|f| Principal::Function(f.into())),
        }
    }

    pub fn access_key(&self) -> String {
        match self {
            Principal::Function(f) => format!("fn-{f}"),
            Principal::StateMachine => "ak".into(),
            Principal::Worker => "worker".into(),
            Principal::Scheduler => "scheduler".into(),
            Principal::Run => "run-0".into(),
        }
    }

    /// The key of the worker role's session on `instance`: what that instance's IMDS hands out
    /// (an instance role's session is named after the instance).
    pub fn instance_key(instance: &str) -> String {
        format!("worker-{instance}")
    }

    /// The role session name a key signs as.
    fn session(&self, access_key: &str) -> String {
        match self {
            Principal::Function(f) => format!("{STACK}-{f}"),
            Principal::StateMachine => "execution".into(),
            Principal::Worker => access_key
                .strip_prefix("worker-")
                .unwrap_or(NO_INSTANCE)
                .to_string(),
            Principal::Scheduler => "schedule".into(),
            Principal::Run => access_key.to_string(),
        }
    }

    pub(crate) fn role(&self) -> String {
        match self {
            Principal::Function(f) => format!("{STACK}-{f}-role"),
            Principal::StateMachine => format!("{STACK}-state-machine-role"),
            Principal::Worker => format!("{STACK}-worker-role"),
            Principal::Scheduler => format!("{STACK}-scheduler-role"),
            Principal::Run => format!("{STACK}-run-role"),
        }
    }

    /// `aws:userid` of the session: `role-id:session-name` for an assumed role, which for a role
    /// assigned to an EC2 instance is `role-id:instance-id`
    /// (<https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html#principaltable>).
    pub fn userid(&self, access_key: &str) -> String {
        let role_id = match self {
            Principal::Worker => WORKER_ROLE_ID.to_string(),
            Principal::Run => RUN_ROLE_ID.to_string(),
            // Roles nothing in the template conditions on: any stable id of AWS's shape.
            other => format!("AROA{}", other.role().to_uppercase().replace('-', ""))
                .chars()
                .take(21)
                .collect(),
        };
        format!("{role_id}:{}", self.session(access_key))
    }

    /// The role's ARN (what a trust policy and `aws:PrincipalArn` name).
    pub fn role_arn(&self) -> String {
        format!("arn:aws:iam::{ACCOUNT}:role/{}", self.role())
    }

    /// The role session ARN AWS names in its AccessDenied messages.
    pub fn arn(&self) -> String {
        format!(
            "arn:aws:sts::{ACCOUNT}:assumed-role/{}/{}",
            self.role(),
            self.session(&self.access_key())
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub operator: String,
    pub key: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sid: String,
    pub allow: bool,
    pub actions: Vec<String>,
    pub resources: Vec<String>,
    pub conditions: Vec<Condition>,
}

/// One authorization AWS makes for a request: an action on a resource, with its context keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub action: String,
    pub resource: String,
    pub context: BTreeMap<String, String>,
}

impl Check {
    pub fn new(action: &str, resource: impl Into<String>) -> Check {
        Check {
            action: action.into(),
            resource: resource.into(),
            context: BTreeMap::new(),
        }
    }
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Check {
        self.context.insert(key.into(), value.into());
        self
    }
}

/// The statements of every principal, `${AWS::Region}` left in place until a request's region
/// is known.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    pub by_principal: BTreeMap<Principal, Vec<Statement>>,
    /// Each KMS key's policy by its logical id, its statements by the principal they name.
    pub keys: BTreeMap<String, Policies>,
    /// Each role's trust policy: who may assume it (`Principal.AWS`), with its statement.
    pub trust: BTreeMap<Principal, Vec<(Vec<String>, Statement)>>,
}

/// The template attaches no managed policy: one would need its statements here, as AWS
/// publishes them, for the harness to hold its principal to them.
fn managed_policy(arn: &str) -> Vec<Statement> {
    panic!("the harness does not know the managed policy {arn}: add its statements")
}

/// Resolves CloudFormation values the way a deployment of stack `ephemera` would.
struct Resolver<'a> {
    template: &'a Yaml,
    params: HashMap<&'static str, String>,
}

impl Resolver<'_> {
    fn resource(&self, name: &str) -> Option<&Yaml> {
        self.template.get("Resources")?.get(name)
    }

    fn function_name(&self, logical: &str) -> String {
        let r = self
            .resource(logical)
            .unwrap_or_else(|| panic!("template has no resource {logical}"));
        match r.get("Properties").and_then(|p| p.get("FunctionName")) {
            Some(v) => self.one(v),
            None => format!("{STACK}-{logical}"),
        }
    }

    /// The name of the `AWS::Logs::LogGroup` resource `logical`, if it is one.
    fn log_group_name(&self, logical: &str) -> Option<String> {
        let r = self.resource(logical)?;
        (r.get("Type").and_then(Yaml::as_str) == Some("AWS::Logs::LogGroup")).then_some(())?;
        Some(self.one(r.get("Properties")?.get("LogGroupName")?))
    }

    fn reference(&self, name: &str) -> String {
        if let Some(v) = self.params.get(name) {
            return v.clone();
        }
        match name {
            "AWS::Partition" => "aws".into(),
            "AWS::Region" => "${AWS::Region}".into(),
            "AWS::AccountId" => ACCOUNT.into(),
            "AWS::StackName" => STACK.into(),
            "ReportTopic" => format!("arn:aws:sns:${{AWS::Region}}:{ACCOUNT}:{REPORT_TOPIC}"),
            "WorkerStateMachine" => {
                format!("arn:aws:states:${{AWS::Region}}:{ACCOUNT}:stateMachine:{STACK}-worker")
            }
            "WorkerRole" => format!("{STACK}-worker-role"),
            "RunRole" => format!("{STACK}-run-role"),
            "WorkerInstanceProfile" => WORKER_PROFILE.into(),
            "LedgerTable" => LEDGER_TABLE.into(),
            other => match self.resource(other) {
                Some(r)
                    if r.get("Type").and_then(Yaml::as_str)
                        == Some("AWS::Serverless::Function") =>
                {
                    self.function_name(other)
                }
                // A log group's Ref is its name.
                Some(_) if self.log_group_name(other).is_some() => {
                    self.log_group_name(other).unwrap_or_default()
                }
                _ => panic!("the harness cannot resolve !Ref {other}"),
            },
        }
    }

    fn attribute(&self, what: &str) -> String {
        match what {
            "WorkerRole.Arn" => format!("arn:aws:iam::{ACCOUNT}:role/{STACK}-worker-role"),
            "WorkerRole.RoleId" => WORKER_ROLE_ID.into(),
            // SAM's role for the state machine (`<LogicalId>Role`).
            "WorkerStateMachineRole.Arn" => {
                format!("arn:aws:iam::{ACCOUNT}:role/{STACK}-state-machine-role")
            }
            "TaskTokenKey.Arn" => {
                format!("arn:aws:kms:${{AWS::Region}}:{ACCOUNT}:key/{TASK_TOKEN_KEY_ID}")
            }
            // SAM's role for a function (`<LogicalId>Role`), as the harness names its principal.
            other if other.ends_with("FunctionRole.Arn") => {
                let function = other.trim_end_matches("Role.Arn");
                let binary = self
                    .resource(function)
                    .and_then(|r| r.get("Metadata"))
                    .and_then(|m| m.get("BuildProperties"))
                    .and_then(|b| b.get("Binary"))
                    .and_then(Yaml::as_str)
                    .unwrap_or_else(|| panic!("the harness cannot resolve !GetAtt {other}"));
                format!(
                    "arn:aws:iam::{ACCOUNT}:role/{}",
                    Principal::Function(binary.into()).role()
                )
            }
            "RunRole.Arn" => run_role_arn(),
            "RunRole.RoleId" => RUN_ROLE_ID.into(),
            "LedgerTable.Arn" => {
                format!("arn:aws:dynamodb:${{AWS::Region}}:{ACCOUNT}:table/{LEDGER_TABLE}")
            }
            "ReportTopic.TopicName" => REPORT_TOPIC.into(),
            "WorkerInstanceProfile.Arn" => {
                format!("arn:aws:iam::{ACCOUNT}:instance-profile/{WORKER_PROFILE}")
            }
            "StateMachineLogs.Arn" => format!(
                "arn:aws:logs:${{AWS::Region}}:{ACCOUNT}:log-group:/aws/vendedlogs/states/{STACK}-worker:*"
            ),
            // A log group's Arn ends in `:*` (what CloudFormation's Fn::GetAtt returns).
            other if other
                .strip_suffix(".Arn")
                .and_then(|g| self.log_group_name(g))
                .is_some() =>
            {
                let name = other
                    .strip_suffix(".Arn")
                    .and_then(|g| self.log_group_name(g))
                    .unwrap_or_default();
                format!("arn:aws:logs:${{AWS::Region}}:{ACCOUNT}:log-group:{name}:*")
            }
            other => match other.strip_suffix(".Arn") {
                Some(f) if self.resource(f).is_some() => format!(
                    "arn:aws:lambda:${{AWS::Region}}:{ACCOUNT}:function:{}",
                    self.function_name(f)
                ),
                _ => panic!("the harness cannot resolve !GetAtt {other}"),
            },
        }
    }

    fn sub(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let end = rest[i..].find('}').expect("unclosed ${ in !Sub") + i;
            let name = &rest[i + 2..end];
            // `${!Literal}` is the literal `${Literal}`: how a policy variable is written inside
            // !Sub (CloudFormation, Fn::Sub, "Parameters").
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str(&format!("${{{literal}}}"));
                rest = &rest[end + 1..];
                continue;
            }
            out.push_str(&if name.contains('.') {
                self.attribute(name)
            } else {
                self.reference(name)
            });
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// Every string a value stands for (a list gives several).
    fn many(&self, v: &Yaml) -> Vec<String> {
        match v {
            Yaml::Sequence(items) => items.iter().flat_map(|i| self.many(i)).collect(),
            _ => vec![self.one(v)],
        }
    }

    fn one(&self, v: &Yaml) -> String {
        match v {
            Yaml::String(s) => s.clone(),
            Yaml::Bool(b) => b.to_string(),
            Yaml::Number(n) => n.to_string(),
            Yaml::Tagged(t) => {
                let tag = t.tag.to_string();
                let tag = tag.trim_start_matches('!');
                match (tag, &t.value) {
                    ("Sub", Yaml::String(s)) => self.sub(s),
                    ("Ref", Yaml::String(s)) => self.reference(s),
                    ("GetAtt", Yaml::String(s)) => self.attribute(s),
                    ("If", Yaml::Sequence(v)) if v.len() == 3 => {
                        let name = v[0].as_str().expect("!If names a condition");
                        self.one(if self.holds(name) { &v[1] } else { &v[2] })
                    }
                    (other, _) => panic!("the harness cannot resolve !{other} {:?}", t.value),
                }
            }
            Yaml::Mapping(m) if m.len() == 1 => {
                let (k, val) = m.iter().next().unwrap();
                match (k.as_str(), val) {
                    (Some("Ref"), Yaml::String(s)) => self.reference(s),
                    (Some("Fn::Sub"), Yaml::String(s)) => self.sub(s),
                    (Some("Fn::GetAtt"), Yaml::String(s)) => self.attribute(s),
                    _ => panic!("the harness cannot resolve {v:?}"),
                }
            }
            other => panic!("the harness cannot resolve {other:?}"),
        }
    }

    /// Whether the template's condition `name` holds with the harness's parameters
    /// (`!Equals` and `!Not`, the ones the template uses).
    fn holds(&self, name: &str) -> bool {
        let c = self
            .template
            .get("Conditions")
            .and_then(|c| c.get(name))
            .unwrap_or_else(|| panic!("template has no condition {name}"));
        self.truth(c)
    }

    fn truth(&self, v: &Yaml) -> bool {
        let Yaml::Tagged(t) = v else {
            panic!("the harness cannot evaluate the condition {v:?}")
        };
        match (t.tag.to_string().trim_start_matches('!'), &t.value) {
            ("Equals", Yaml::Sequence(pair)) if pair.len() == 2 => {
                self.one(&pair[0]) == self.one(&pair[1])
            }
            ("Not", Yaml::Sequence(one)) if one.len() == 1 => !self.truth(&one[0]),
            (other, _) => panic!("the harness cannot evaluate !{other} in a condition"),
        }
    }

    fn statements(&self, doc: &Yaml) -> Vec<Statement> {
        let list = match doc.get("Statement") {
            Some(Yaml::Sequence(s)) => s.clone(),
            Some(one) => vec![one.clone()],
            None => vec![],
        };
        list.iter()
            .map(|s| {
                let mut conditions = vec![];
                if let Some(Yaml::Mapping(ops)) = s.get("Condition") {
                    for (op, keys) in ops {
                        let Yaml::Mapping(keys) = keys else { continue };
                        for (key, values) in keys {
                            conditions.push(Condition {
                                operator: op.as_str().unwrap_or_default().to_string(),
                                key: key.as_str().unwrap_or_default().to_string(),
                                values: self.many(values),
                            });
                        }
                    }
                }
                Statement {
                    sid: s.get("Sid").map(|v| self.one(v)).unwrap_or_default(),
                    allow: s.get("Effect").and_then(Yaml::as_str) != Some("Deny"),
                    actions: s.get("Action").map(|v| self.many(v)).unwrap_or_default(),
                    resources: s.get("Resource").map(|v| self.many(v)).unwrap_or_default(),
                    conditions,
                }
            })
            .collect()
    }

    /// A key policy's statements by the principal each names. The account's root is the
    /// administrator, whom the harness lets through anyway; a statement naming it delegates
    /// nothing here unless it grants a use of the key, which the harness refuses to guess.
    fn key_policy(&self, doc: &Yaml) -> Policies {
        let Some(Yaml::Sequence(list)) = doc.get("Statement") else {
            panic!("a key policy without a Statement list")
        };
        let mut by_principal: BTreeMap<Principal, Vec<Statement>> = BTreeMap::new();
        for raw in list {
            let mut one = serde_yaml_ng::Mapping::new();
            one.insert("Statement".into(), Yaml::Sequence(vec![raw.clone()]));
            let statements = self.statements(&Yaml::Mapping(one));
            let named = raw
                .get("Principal")
                .and_then(|p| p.get("AWS"))
                .map(|a| self.many(a))
                .unwrap_or_default();
            for arn in named {
                if arn == format!("arn:aws:iam::{ACCOUNT}:root") {
                    let uses = statements.iter().flat_map(|s| &s.actions).any(|a| {
                        ["kms:Decrypt", "kms:Encrypt", "kms:*"]
                            .iter()
                            .any(|u| glob(&a.to_lowercase(), &u.to_lowercase()))
                    });
                    assert!(
                        !uses,
                        "a key policy delegates the key's use to IAM: {raw:?}"
                    );
                    continue;
                }
                let function = arn
                    .strip_prefix(&format!("arn:aws:iam::{ACCOUNT}:role/{STACK}-"))
                    .and_then(|r| r.strip_suffix("-role"))
                    .map(|f| Principal::Function(f.into()));
                let principal = [
                    Principal::Worker,
                    Principal::StateMachine,
                    Principal::Scheduler,
                ]
                .into_iter()
                .chain(function)
                .find(|p| arn == format!("arn:aws:iam::{ACCOUNT}:role/{}", p.role()))
                .unwrap_or_else(|| panic!("the harness does not know the key principal {arn}"));
                by_principal
                    .entry(principal)
                    .or_default()
                    .extend(statements.iter().cloned());
            }
        }
        Policies {
            by_principal,
            ..Policies::default()
        }
    }

    /// A trust policy's statements with the `Principal.AWS` each names (a service principal
    /// names none: no session of the harness is one).
    fn trust(&self, doc: &Yaml) -> Vec<(Vec<String>, Statement)> {
        let list = match doc.get("Statement") {
            Some(Yaml::Sequence(s)) => s.clone(),
            Some(one) => vec![one.clone()],
            None => vec![],
        };
        let statements = self.statements(doc);
        list.iter()
            .zip(statements)
            .map(|(raw, st)| {
                let aws = raw
                    .get("Principal")
                    .and_then(|p| p.get("AWS"))
                    .map(|v| self.many(v))
                    .unwrap_or_default();
                (aws, st)
            })
            .collect()
    }

    /// A SAM function's or state machine's `Policies` list: inline documents and the SAM policy
    /// templates the template uses, expanded as SAM expands them
    /// (<https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/serverless-policy-template-list.html>).
    fn sam_policies(&self, policies: &Yaml) -> Vec<Statement> {
        let Yaml::Sequence(list) = policies else {
            return vec![];
        };
        let mut out = vec![];
        for p in list {
            if p.get("Statement").is_some() {
                out.extend(self.statements(p));
                continue;
            }
            let Some(Yaml::Mapping(m)) = Some(p) else {
                panic!("the harness does not understand the policy {p:?}")
            };
            let (name, args) = m.iter().next().expect("a policy template");
            let name = name.as_str().unwrap_or_default();
            let arg = |k: &str| self.one(args.get(k).unwrap_or_else(|| panic!("{name} needs {k}")));
            let st = |sid: &str, actions: &[&str], resources: Vec<String>| Statement {
                sid: sid.into(),
                allow: true,
                actions: actions.iter().map(|a| a.to_string()).collect(),
                resources,
                conditions: vec![],
            };
            match name {
                "S3ReadPolicy" => {
                    let b = arg("BucketName");
                    out.push(st(
                        name,
                        &[
                            "s3:GetObject",
                            "s3:ListBucket",
                            "s3:GetBucketLocation",
                            "s3:GetObjectVersion",
                            "s3:GetLifecycleConfiguration",
                        ],
                        vec![format!("arn:aws:s3:::{b}"), format!("arn:aws:s3:::{b}/*")],
                    ));
                }
                "SNSPublishMessagePolicy" => out.push(st(
                    name,
                    &["sns:Publish"],
                    vec![format!(
                        "arn:aws:sns:${{AWS::Region}}:{ACCOUNT}:{}",
                        arg("TopicName")
                    )],
                )),
                "LambdaInvokePolicy" => out.push(st(
                    name,
                    &["lambda:InvokeFunction"],
                    vec![format!(
                        "arn:aws:lambda:${{AWS::Region}}:{ACCOUNT}:function:{}*",
                        arg("FunctionName")
                    )],
                )),
                other => {
                    panic!("the harness does not know the SAM policy template {other}: add it")
                }
            }
        }
        out
    }
}

impl Policies {
    pub fn from_template_file(path: &Path) -> Policies {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Policies::from_template(&text)
    }

    pub fn from_template(text: &str) -> Policies {
        Policies::from_template_with(text, &[])
    }

    /// The policies of the template deployed with `overrides` of its parameters' defaults.
    pub fn from_template_with(text: &str, overrides: &[(&'static str, &str)]) -> Policies {
        let template: Yaml = serde_yaml_ng::from_str(text).expect("template.yaml is YAML");
        let mut params = HashMap::new();
        for (k, v) in overrides {
            params.insert(*k, v.to_string());
        }
        params.insert("ArtifactBucket", ARTIFACT_BUCKET.to_string());
        params.insert("ExportBucket", EXPORT_BUCKET.to_string());
        if let Some(Yaml::Mapping(ps)) = template.get("Parameters") {
            for (k, v) in ps {
                let k = k.as_str().unwrap_or_default();
                if let Some(d) = v.get("Default") {
                    let known: &'static str = match k {
                        "DatabaseSecretPrefix" => "DatabaseSecretPrefix",
                        "NotificationEmail" => "NotificationEmail",
                        "ScheduleExpression" => "ScheduleExpression",
                        "ScheduleRunSpec" => "ScheduleRunSpec",
                        "LogRetentionDays" => "LogRetentionDays",
                        "ReuseLedgerTable" => "ReuseLedgerTable",
                        "EbsKmsKeyArn" => "EbsKmsKeyArn",
                        _ => continue,
                    };
                    let value = match d {
                        Yaml::String(s) => s.clone(),
                        Yaml::Number(n) => n.to_string(),
                        _ => continue,
                    };
                    params.entry(known).or_insert(value);
                }
            }
        }
        let r = Resolver {
            template: &template,
            params,
        };
        let mut by_principal: BTreeMap<Principal, Vec<Statement>> = BTreeMap::new();
        let mut keys = BTreeMap::new();
        let mut trust = BTreeMap::new();
        let Some(Yaml::Mapping(resources)) = template.get("Resources") else {
            panic!("template.yaml has no Resources");
        };
        for (logical, res) in resources {
            let logical = logical.as_str().unwrap_or_default();
            let props = res.get("Properties");
            match res.get("Type").and_then(Yaml::as_str) {
                Some("AWS::Serverless::Function") => {
                    let binary = res
                        .get("Metadata")
                        .and_then(|m| m.get("BuildProperties"))
                        .and_then(|b| b.get("Binary"))
                        .and_then(Yaml::as_str)
                        .unwrap_or_else(|| {
                            panic!("{logical} has no Metadata.BuildProperties.Binary")
                        });
                    let statements = props
                        .and_then(|p| p.get("Policies"))
                        .map(|p| r.sam_policies(p))
                        .unwrap_or_default();
                    by_principal.insert(Principal::Function(binary.to_string()), statements);
                }
                Some("AWS::Serverless::StateMachine") => {
                    let statements = props
                        .and_then(|p| p.get("Policies"))
                        .map(|p| r.sam_policies(p))
                        .unwrap_or_default();
                    by_principal.insert(Principal::StateMachine, statements);
                }
                Some("AWS::IAM::Role") => {
                    let principal = match logical {
                        "WorkerRole" => Principal::Worker,
                        "SchedulerRole" => Principal::Scheduler,
                        "RunRole" => Principal::Run,
                        other => panic!("the harness does not know who assumes the role {other}"),
                    };
                    if let Some(doc) = props.and_then(|p| p.get("AssumeRolePolicyDocument")) {
                        trust.insert(principal.clone(), r.trust(doc));
                    }
                    let mut statements = vec![];
                    if let Some(Yaml::Sequence(arns)) =
                        props.and_then(|p| p.get("ManagedPolicyArns"))
                    {
                        for a in arns {
                            statements.extend(managed_policy(&r.one(a)));
                        }
                    }
                    if let Some(Yaml::Sequence(ps)) = props.and_then(|p| p.get("Policies")) {
                        for p in ps {
                            if let Some(doc) = p.get("PolicyDocument") {
                                statements.extend(r.statements(doc));
                            }
                        }
                    }
                    by_principal
                        .entry(principal)
                        .or_default()
                        .extend(statements);
                }
                // A policy of its own attached to roles: how a role's policy names the role
                // itself without a circular dependency.
                Some("AWS::IAM::Policy") => {
                    let doc = props.and_then(|p| p.get("PolicyDocument"));
                    let statements = doc.map(|d| r.statements(d)).unwrap_or_default();
                    let roles = props.and_then(|p| p.get("Roles")).map(|v| r.many(v));
                    for role in roles.unwrap_or_default() {
                        let principal = match role.as_str() {
                            x if x == format!("{STACK}-run-role") => Principal::Run,
                            x if x == format!("{STACK}-worker-role") => Principal::Worker,
                            other => panic!("the harness does not know the role {other}"),
                        };
                        by_principal
                            .entry(principal)
                            .or_default()
                            .extend(statements.clone());
                    }
                }
                Some("AWS::KMS::Key") => {
                    let doc = props
                        .and_then(|p| p.get("KeyPolicy"))
                        .unwrap_or_else(|| panic!("{logical} has no KeyPolicy"));
                    keys.insert(logical.to_string(), r.key_policy(doc));
                }
                _ => {}
            }
        }
        Policies {
            by_principal,
            keys,
            trust,
        }
    }

    /// Removes the statement `sid` from `principal` (for tests that prove a statement matters).
    pub fn without(mut self, principal: &Principal, sid: &str) -> Policies {
        let list = self
            .by_principal
            .get_mut(principal)
            .unwrap_or_else(|| panic!("no principal {principal:?}"));
        let before = list.len();
        list.retain(|s| s.sid != sid);
        assert!(list.len() < before, "{principal:?} has no statement {sid}");
        self
    }

    /// Ok, or the reason AWS would give for refusing.
    pub fn authorize(
        &self,
        principal: &Principal,
        region: &str,
        check: &Check,
    ) -> Result<(), String> {
        self.authorize_session(principal, &BTreeMap::new(), None, region, check)
    }

    /// [`Policies::authorize`] for a role session with session tags and a session policy.
    /// The tags are the request's `aws:PrincipalTag/…` keys (IAM user guide, "Pass session
    /// tags in AWS STS"). A session policy only narrows: the session may do what both the
    /// role's identity-based policies and the session policy allow, and an explicit deny in
    /// either wins (IAM user guide, "Policies and permissions", session policies:
    /// <https://docs.aws.amazon.com/IAM/latest/UserGuide/access_policies.html#policies_session>).
    pub fn authorize_session(
        &self,
        principal: &Principal,
        tags: &BTreeMap<String, String>,
        session_policy: Option<&[Statement]>,
        region: &str,
        check: &Check,
    ) -> Result<(), String> {
        let mut check = check.clone();
        for (k, v) in tags {
            check
                .context
                .insert(format!("aws:PrincipalTag/{k}"), v.clone());
        }
        check
            .context
            .entry("aws:PrincipalArn".into())
            .or_insert_with(|| principal.role_arn());
        let check = &check;
        let statements = self
            .by_principal
            .get(principal)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // The session that signed, as aws:userid names it (a worker's is its instance).
        let who = match lookup(&check.context, "aws:userid").and_then(|u| u.split_once(':')) {
            Some((_, session)) => format!(
                "arn:aws:sts::{ACCOUNT}:assumed-role/{}/{session}",
                principal.role()
            ),
            None => principal.arn(),
        };
        let denied = matching(statements, false, region, check)
            || session_policy.is_some_and(|p| matching(p, false, region, check));
        if denied {
            return Err(format!(
                "User: {who} is not authorized to perform: {} on resource: {} with an explicit deny in an identity-based policy",
                check.action, check.resource
            ));
        }
        if matching(statements, true, region, check) {
            return match session_policy {
                Some(p) if !matching(p, true, region, check) => Err(format!(
                    "User: {who} is not authorized to perform: {} on resource: {} because no session policy allows the {} action",
                    check.action, check.resource, check.action
                )),
                _ => Ok(()),
            };
        }
        Err(format!(
            "User: {who} is not authorized to perform: {} on resource: {} because no identity-based policy allows the {} action",
            check.action, check.resource, check.action
        ))
    }

    /// Whether `principal`'s trust policy lets `caller` (a role ARN) perform `action`
    /// (`sts:AssumeRole`, `sts:TagSession`) on it. A trust policy naming the account
    /// (`arn:aws:iam::ACCOUNT:root`) delegates to the caller's identity-based policies, which
    /// must then allow the action as well; one naming the caller's role is enough by itself
    /// (IAM user guide, policy evaluation logic, "Cross-account and same-account policy
    /// evaluation": <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_evaluation-logic-cross-account.html>).
    pub fn trusts(&self, principal: &Principal, caller: &str, region: &str, check: &Check) -> bool {
        let root = format!("arn:aws:iam::{ACCOUNT}:root");
        self.trust
            .get(principal)
            .into_iter()
            .flatten()
            .any(|(who, st)| {
                st.allow
                && who.iter().any(|w| w == caller || *w == root || w == ACCOUNT)
                // A trust policy has no Resource: it is the role's own.
                && st
                    .actions
                    .iter()
                    .any(|a| glob(&a.to_lowercase(), &check.action.to_lowercase()))
                && st
                    .conditions
                    .iter()
                    .all(|c| condition(c, region, &check.context))
            })
    }
}

/// Whether some statement of `statements` with this effect matches the check: its action, its
/// resource (policy variables such as `${aws:PrincipalTag/ephemera:run}` replaced from the
/// request; a variable the request lacks matches nothing) and every condition.
fn matching(statements: &[Statement], allow: bool, region: &str, check: &Check) -> bool {
    statements.iter().filter(|s| s.allow == allow).any(|s| {
        s.actions
            .iter()
            .any(|a| glob(&a.to_lowercase(), &check.action.to_lowercase()))
            && s.resources.iter().any(|r| {
                with_variables(&r.replace("${AWS::Region}", region), &check.context)
                    .is_some_and(|r| glob(&r, &check.resource))
            })
            && s.conditions
                .iter()
                .all(|c| condition(c, region, &check.context))
    })
}

/// A policy document as JSON (a session policy): its statements, or why it is malformed.
pub fn statements_from_json(doc: &serde_json::Value) -> Result<Vec<Statement>, String> {
    let list = match &doc["Statement"] {
        serde_json::Value::Array(a) => a.clone(),
        serde_json::Value::Null => return Err("a policy without Statement".into()),
        one => vec![one.clone()],
    };
    let strings = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            _ => vec![],
        }
    };
    list.iter()
        .map(|s| {
            let effect = s["Effect"].as_str().ok_or("a statement without Effect")?;
            let mut conditions = vec![];
            if let Some(ops) = s["Condition"].as_object() {
                for (op, keys) in ops {
                    for (key, values) in keys.as_object().into_iter().flatten() {
                        conditions.push(Condition {
                            operator: op.clone(),
                            key: key.clone(),
                            values: strings(values),
                        });
                    }
                }
            }
            Ok(Statement {
                sid: s["Sid"].as_str().unwrap_or_default().to_string(),
                allow: effect != "Deny",
                actions: strings(&s["Action"]),
                resources: strings(&s["Resource"]),
                conditions,
            })
        })
        .collect()
}

impl Policies {
    /// Ok, or AWS's refusal, for a use of the KMS key `logical` by `principal`: the key's own
    /// policy decides (none of the template's keys delegates its use to IAM policies), as KMS
    /// decides for a principal of the key's account
    /// (<https://docs.aws.amazon.com/kms/latest/developerguide/key-policy-overview.html>).
    pub fn authorize_key(
        &self,
        logical: &str,
        principal: &Principal,
        region: &str,
        check: &Check,
    ) -> Result<(), String> {
        let key = self
            .keys
            .get(logical)
            .unwrap_or_else(|| panic!("the template has no key {logical}"));
        key.authorize(principal, region, check).map_err(|reason| {
            reason.replace("no identity-based policy", "no resource-based policy")
                + " (Service: AWSKMS; Status Code: 400; Error Code: AccessDeniedException)"
        })
    }
}

/// A condition value with its policy variables (`${aws:userid}`) replaced from the request;
/// None when a variable has no value in it, which AWS treats as no match
/// (<https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html>).
fn with_variables(value: &str, ctx: &BTreeMap<String, String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}')? + i;
        let key = &rest[i + 2..end];
        out.push_str(lookup(ctx, key)?);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Condition keys are case-insensitive; tag keys inside them keep their case in AWS, and
/// ephemera's are lower case anyway.
fn lookup<'c>(ctx: &'c BTreeMap<String, String>, key: &str) -> Option<&'c String> {
    ctx.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn condition(c: &Condition, region: &str, ctx: &BTreeMap<String, String>) -> bool {
    let value = lookup(ctx, &c.key);
    let values: Vec<String> = c
        .values
        .iter()
        .filter_map(|v| with_variables(&v.replace("${AWS::Region}", region), ctx))
        .collect();
    match c.operator.as_str() {
        "StringEquals" | "ArnEquals" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "StringLike" | "ArnLike" => value.is_some_and(|v| values.iter().any(|x| glob(x, v))),
        // A multivalued key (`dynamodb:LeadingKeys`; the harness knows one value a request):
        // every value must match, and a request without the key passes, as in AWS
        // (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-single-vs-multi-valued-context-keys.html).
        "ForAllValues:StringLike" => value.is_none_or(|v| values.iter().any(|x| glob(x, v))),
        "StringNotEquals" => value.is_none_or(|v| values.iter().all(|x| x != v)),
        "Null" => {
            let want_absent = c.values.iter().any(|x| x == "true");
            value.is_none() == want_absent
        }
        "Bool" => value.is_some_and(|v| values.iter().any(|x| x.eq_ignore_ascii_case(v))),
        other => panic!("the harness does not evaluate the condition operator {other}: add it"),
    }
}

/// IAM's wildcard match: `*` any run of characters, `?` any one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Policies {
        Policies::from_template_file(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"),
        )
    }

    #[test]
    fn globs_match_as_iam_does() {
        assert!(glob(
            "arn:aws:ssm:*:1:parameter/ephemera/runs/*",
            "arn:aws:ssm:x:1:parameter/ephemera/runs/a/b"
        ));
        assert!(glob("ec2:Describe*", "ec2:DescribeInstances"));
        assert!(!glob("ec2:Describe*", "ec2:RunInstances"));
        assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
        assert!(glob("*", ""));
    }

    #[test]
    fn every_principal_of_the_template_is_read() {
        let p = template();
        for f in ephemera_functions::Function::ALL {
            assert!(
                !p.by_principal[&Principal::Function(f.name().into())].is_empty(),
                "{f} has statements"
            );
        }
        for who in [
            Principal::StateMachine,
            Principal::Worker,
            Principal::Scheduler,
            Principal::Run,
        ] {
            assert!(!p.by_principal[&who].is_empty(), "{who:?}");
        }
    }

    #[test]
    fn conditions_on_tags_decide() {
        let p = template();
        let launch = Principal::Function("launch-worker".into());
        let instance = format!("arn:aws:ec2:eu-west-1:{ACCOUNT}:instance/*");
        let tagged = Check::new("ec2:RunInstances", &instance)
            .with("aws:RequestTag/ephemera:managed", "true")
            .with("aws:RequestTag/ephemera:run", "r")
            .with("aws:RequestTag/ephemera:execution", "e")
            .with("aws:RequestTag/ephemera:deadline", "d");
        assert_eq!(p.authorize(&launch, "eu-west-1", &tagged), Ok(()));
        let mut untagged = tagged.clone();
        untagged.context.remove("aws:RequestTag/ephemera:deadline");
        let err = p.authorize(&launch, "eu-west-1", &untagged).unwrap_err();
        assert!(
            err.contains("is not authorized to perform: ec2:RunInstances"),
            "{err}"
        );

        let sweeper = Principal::Function("sweeper".into());
        let term = |managed: &str| {
            Check::new(
                "ec2:TerminateInstances",
                format!("arn:aws:ec2:eu-west-1:{ACCOUNT}:instance/i-1"),
            )
            .with("ec2:ResourceTag/ephemera:managed", managed)
            .with(
                "ec2:InstanceProfile",
                format!("arn:aws:iam::{ACCOUNT}:instance-profile/{WORKER_PROFILE}"),
            )
        };
        assert_eq!(p.authorize(&sweeper, "eu-west-1", &term("true")), Ok(()));
        assert!(p.authorize(&sweeper, "eu-west-1", &term("false")).is_err());
        // The tag without the stack's profile: someone else's instance, never terminated.
        let mut other = term("true");
        other.context.insert(
            "ec2:InstanceProfile".into(),
            format!("arn:aws:iam::{ACCOUNT}:instance-profile/prod-web"),
        );
        assert!(p.authorize(&sweeper, "eu-west-1", &other).is_err());
        other.context.remove("ec2:InstanceProfile");
        assert!(p.authorize(&sweeper, "eu-west-1", &other).is_err());
        // Another region's ARN does not match a statement resolved for this one.
        assert!(p
            .authorize(&sweeper, "eu-west-2", &term("true").with("x", "y"))
            .is_err());
    }

    #[test]
    fn the_instance_role_reads_the_worker_and_nothing_else_in_s3() {
        // Every S3 call of a worker is its run's session's (RunRole): a grant here would reach
        // every run's objects, since the instance role's session names no run.
        let p = template();
        let may = |action: &str, resource: String| {
            p.authorize(
                &Principal::Worker,
                "us-east-1",
                &Check::new(action, resource),
            )
        };
        let worker = format!("arn:aws:s3:::{ARTIFACT_BUCKET}/worker/ephemera-worker");
        assert_eq!(may("s3:GetObject", worker.clone()), Ok(()));
        for bucket in [EXPORT_BUCKET, ARTIFACT_BUCKET] {
            for action in ["s3:ListBucket", "s3:ListBucketMultipartUploads"] {
                assert!(
                    may(action, format!("arn:aws:s3:::{bucket}")).is_err(),
                    "{action} {bucket}"
                );
            }
        }
        let checkpoint = format!("arn:aws:s3:::{EXPORT_BUCKET}/runs/r1/checkpoints/worker-1/g1/x");
        for action in ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"] {
            assert!(may(action, checkpoint.clone()).is_err(), "{action}");
        }
        assert!(may("s3:DeleteObject", worker.clone()).is_err());
        assert!(may("s3:PutObject", worker).is_err());
    }

    #[test]
    fn only_the_token_readers_open_a_task_token_and_only_the_state_machine_seals_one() {
        let p = template();
        let region = "us-east-1";
        let token =
            format!("arn:aws:ssm:{region}:{ACCOUNT}:parameter/ephemera/runs/r1/task-token/i-1");
        let use_ = |who: &Principal, action: &str, param: &str, via: &str| {
            let check = Check::new(action, task_token_key(region))
                .with("kms:ViaService", format!("{via}.{region}.amazonaws.com"))
                .with("kms:EncryptionContext:PARAMETER_ARN", param);
            p.authorize_key("TaskTokenKey", who, region, &check)
        };
        assert_eq!(
            use_(&Principal::Worker, "kms:Decrypt", &token, "ssm"),
            Ok(())
        );
        assert_eq!(
            use_(&Principal::StateMachine, "kms:Encrypt", &token, "ssm"),
            Ok(())
        );
        // Not the other way round, not outside Parameter Store, not for another parameter,
        // and no Lambda at all, whatever its IAM policy says.
        // spot-interruption fails the task waiting on a reclaimed instance's token.
        let spot = Principal::Function("spot-interruption".into());
        assert_eq!(use_(&spot, "kms:Decrypt", &token, "ssm"), Ok(()));
        assert!(use_(&spot, "kms:Encrypt", &token, "ssm").is_err());
        assert!(use_(&Principal::StateMachine, "kms:Decrypt", &token, "ssm").is_err());
        assert!(use_(&Principal::Worker, "kms:Encrypt", &token, "ssm").is_err());
        assert!(use_(&Principal::Worker, "kms:Decrypt", &token, "kms").is_err());
        let started = token.replace("task-token", "started");
        assert!(use_(&Principal::Worker, "kms:Decrypt", &started, "ssm").is_err());
        let refused = use_(
            &Principal::Function("launch-worker".into()),
            "kms:Decrypt",
            &token,
            "ssm",
        )
        .unwrap_err();
        assert!(
            refused.contains("no resource-based policy allows the kms:Decrypt action"),
            "{refused}"
        );
    }

    #[test]
    fn launch_worker_seals_a_run_session_and_only_the_worker_role_opens_one() {
        let p = template();
        let region = "us-east-1";
        let session =
            format!("arn:aws:ssm:{region}:{ACCOUNT}:parameter/ephemera/runs/r1/run-session/i-1");
        let token = session.replace("run-session", "task-token");
        let use_ = |who: &Principal, action: &str, param: &str| {
            let check = Check::new(action, task_token_key(region))
                .with("kms:ViaService", format!("ssm.{region}.amazonaws.com"))
                .with("kms:EncryptionContext:PARAMETER_ARN", param);
            p.authorize_key("TaskTokenKey", who, region, &check)
        };
        let launch = Principal::Function("launch-worker".into());
        assert_eq!(use_(&launch, "kms:Encrypt", &session), Ok(()));
        assert_eq!(use_(&Principal::Worker, "kms:Decrypt", &session), Ok(()));
        // launch-worker seals no task token and opens nothing; spot-interruption, which opens
        // task tokens, opens no run session; the state machine neither.
        assert!(use_(&launch, "kms:Encrypt", &token).is_err());
        assert!(use_(&launch, "kms:Decrypt", &session).is_err());
        let spot = Principal::Function("spot-interruption".into());
        assert!(use_(&spot, "kms:Decrypt", &session).is_err());
        assert!(use_(&Principal::StateMachine, "kms:Decrypt", &session).is_err());
        // The parameter itself: written by launch-worker (with its reader tag), read by the
        // one instance's role session it names.
        let put = Check::new("ssm:PutParameter", session.clone());
        assert_eq!(p.authorize(&launch, region, &put), Ok(()));
        let tag = Check::new("ssm:AddTagsToResource", session.clone());
        assert_eq!(p.authorize(&launch, region, &tag), Ok(()));
        assert!(p
            .authorize(&launch, region, &Check::new("ssm:PutParameter", token))
            .is_err());
        let read = |instance: &str| {
            let c = Check::new("ssm:GetParameter", session.clone())
                .with(
                    "aws:userid",
                    Principal::Worker.userid(&Principal::instance_key(instance)),
                )
                .with(
                    "ssm:resourceTag/ephemera:reader",
                    format!("{WORKER_ROLE_ID}:i-1"),
                );
            p.authorize(&Principal::Worker, region, &c)
        };
        assert_eq!(read("i-1"), Ok(()));
        assert!(read("i-2").is_err());
    }

    #[test]
    fn the_report_is_written_under_its_two_names_only() {
        let p = template();
        let terminate = Principal::Function("terminate-with-cost-report".into());
        let put = |bucket: &str, key: &str| {
            p.authorize(
                &terminate,
                "us-east-1",
                &Check::new("s3:PutObject", format!("arn:aws:s3:::{bucket}/{key}")),
            )
        };
        for (bucket, key) in [
            (EXPORT_BUCKET, "runs/r1/report.html"),
            (EXPORT_BUCKET, "any/export/folder/report.json"),
            (ARTIFACT_BUCKET, "runs/r1/report.html"),
            (ARTIFACT_BUCKET, "runs/r1/report.json"),
        ] {
            assert_eq!(put(bucket, key), Ok(()), "{bucket}/{key}");
        }
        for (bucket, key) in [
            (EXPORT_BUCKET, "runs/r1/manifest.json"),
            (
                EXPORT_BUCKET,
                "runs/r1/indicators/pair=EURUSD/month=2023-04/part.parquet",
            ),
            (ARTIFACT_BUCKET, "worker/ephemera-worker"),
            (ARTIFACT_BUCKET, "worker/report.html"),
            ("another-bucket", "runs/r1/report.html"),
        ] {
            assert!(put(bucket, key).is_err(), "{bucket}/{key}");
        }
    }

    #[test]
    fn the_instance_role_ships_no_log_line_its_runs_session_ships_to_its_streams_only() {
        let p = template();
        let group = |name: &str| format!("arn:aws:logs:eu-west-1:{ACCOUNT}:log-group:{name}");
        let create = |name: &str| Check::new("logs:CreateLogStream", format!("{}:*", group(name)));
        let put = |name: &str, stream: &str| {
            Check::new(
                "logs:PutLogEvents",
                format!("{}:log-stream:{stream}", group(name)),
            )
        };
        let workers = &worker_log_group();
        for c in [create(workers), put(workers, "fx/1/i-0abc")] {
            assert!(
                p.authorize(&Principal::Worker, "eu-west-1", &c).is_err(),
                "{c:?}"
            );
        }
        // The run's session (tagged `ephemera:run` = fx): its run's streams, no other's.
        let session = |c: Check| c.with("aws:PrincipalTag/ephemera:run", "fx");
        assert_eq!(
            p.authorize(
                &Principal::Run,
                "eu-west-1",
                &session(put(workers, "fx/1/i-0abc"))
            ),
            Ok(())
        );
        for c in [
            session(put(workers, "other/1/i-0abc")),
            session(put(&format!("{workers}-other"), "fx/1/i-0abc")),
        ] {
            assert!(
                p.authorize(&Principal::Run, "eu-west-1", &c).is_err(),
                "{c:?}"
            );
        }
    }

    #[test]
    fn a_task_token_is_readable_by_the_session_of_its_own_instance_only() {
        let p = template();
        let token =
            format!("arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/ephemera/runs/r/task-token/i-1");
        let read = |instance: &str, reader: Option<&str>| {
            let key = Principal::instance_key(instance);
            let mut c = Check::new("ssm:GetParameter", &token)
                .with("aws:userid", Principal::Worker.userid(&key));
            if let Some(r) = reader {
                c = c.with("ssm:resourceTag/ephemera:reader", r);
            }
            p.authorize(&Principal::Worker, "eu-west-1", &c)
        };
        let reader = format!("{WORKER_ROLE_ID}:i-1");
        assert_eq!(read("i-1", Some(&reader)), Ok(()));
        let other = read("i-2", Some(&reader)).unwrap_err();
        assert!(
            other.contains("assumed-role/ephemera-worker-role/i-2 is not authorized"),
            "{other}"
        );
        // Not yet created (no tags), or someone else's parameter under the path: no.
        assert!(read("i-1", None).is_err());
        assert!(read("i-1", Some("AROAOTHERROLE00000001:i-1")).is_err());
        // Nor any other parameter of the run, except saying "started".
        let other_param = |name: &str, action: &str| {
            let c = Check::new(
                action,
                format!("arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/ephemera/runs/r/{name}"),
            )
            .with("aws:userid", Principal::Worker.userid("worker-i-1"));
            p.authorize(&Principal::Worker, "eu-west-1", &c)
        };
        assert_eq!(other_param("started/i-1", "ssm:PutParameter"), Ok(()));
        assert!(other_param("started", "ssm:PutParameter").is_err());
        assert!(other_param("task-token/i-1", "ssm:PutParameter").is_err());
        assert!(other_param("started/i-1", "ssm:GetParameter").is_err());
        // No parameter under the stack's prefix either: job.secrets are the run session's to
        // read; and the explicit Deny keeps any later grant off the run parameters.
        let job_secret = |path: &str| {
            let c = Check::new(
                "ssm:GetParameter",
                format!("arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/{path}"),
            )
            .with("aws:userid", Principal::Worker.userid("worker-i-1"));
            p.authorize(&Principal::Worker, "eu-west-1", &c)
        };
        assert!(job_secret("ephemera/team/db").is_err());
        assert!(job_secret("prod/db").is_err());
        assert!(job_secret("ephemera/runs/r/started/i-1")
            .unwrap_err()
            .contains("explicit deny"));
        // The state machine hands it over, tags included; only under the tokens' path.
        let hand = |name: &str, action: &str| {
            p.authorize(
                &Principal::StateMachine,
                "eu-west-1",
                &Check::new(
                    action,
                    format!("arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/ephemera/runs/r/{name}"),
                ),
            )
        };
        assert_eq!(hand("task-token/i-1", "ssm:PutParameter"), Ok(()));
        assert_eq!(hand("task-token/i-1", "ssm:AddTagsToResource"), Ok(()));
        assert!(hand("started/i-1", "ssm:AddTagsToResource").is_err());
    }

    /// A run session as launch-worker vends it: tagged with its run, narrowed by a session
    /// policy naming its input and its secret.
    fn run_session(run: &str) -> (BTreeMap<String, String>, Vec<Statement>) {
        let tags = [("ephemera:run".to_string(), run.to_string())].into();
        let policy = statements_from_json(&serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                 "Resource": [format!("arn:aws:s3:::{EXPORT_BUCKET}/runs/{run}/*"),
                              format!("arn:aws:s3:::{ARTIFACT_BUCKET}/jobs/{run}.tar.gz")]},
                {"Effect": "Allow", "Action": "s3:ListBucket",
                 "Resource": format!("arn:aws:s3:::{EXPORT_BUCKET}"),
                 "Condition": {"StringLike": {"s3:prefix": format!("runs/{run}/*")}}},
                {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                 "Resource": ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:ephemera/api-key-AbCdEf",
                              "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf"]},
                {"Effect": "Allow", "Action": "ssm:GetParameter",
                 "Resource": ["arn:aws:ssm:eu-west-1:123456789012:parameter/ephemera/db/password",
                              format!("arn:aws:ssm:eu-west-1:123456789012:parameter/ephemera/runs/{run}/task-token/i-1")]}
            ]
        }))
        .unwrap();
        (tags, policy)
    }

    #[test]
    fn a_run_session_writes_lists_and_deletes_under_its_own_run_only() {
        let p = template();
        let (tags, policy) = run_session("r1");
        let may = |c: Check, policy: Option<&[Statement]>| {
            p.authorize_session(&Principal::Run, &tags, policy, "eu-west-1", &c)
        };
        let object = |key: &str| format!("arn:aws:s3:::{EXPORT_BUCKET}/{key}");
        for action in ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"] {
            for policy in [None, Some(policy.as_slice())] {
                let own = Check::new(action, object("runs/r1/worker-1/manifest.json"));
                assert_eq!(may(own, policy), Ok(()), "{action}");
                for other in [
                    "runs/r2/worker-1/manifest.json",
                    "runs/r2/report.json",
                    "runs/r2/ckpt/r2/worker-1/checkpoint.json",
                    "runs/r1x/worker-1/out.bin",
                ] {
                    let c = Check::new(action, object(other));
                    // Reads of the other buckets' objects are the session policy's to refuse.
                    if action == "s3:GetObject" && policy.is_none() {
                        continue;
                    }
                    assert!(may(c, policy).is_err(), "{action} {other}");
                }
            }
        }
        // Listing: its own run's prefix (s3:prefix), never the bucket's root or another run's.
        let list = |prefix: Option<&str>| {
            let c = Check::new("s3:ListBucket", format!("arn:aws:s3:::{EXPORT_BUCKET}"));
            match prefix {
                Some(x) => c.with("s3:prefix", x),
                None => c,
            }
        };
        assert_eq!(may(list(Some("runs/r1/worker-1/")), None), Ok(()));
        assert_eq!(may(list(Some("runs/r1/worker-1/")), Some(&policy)), Ok(()));
        for prefix in [Some("runs/r2/"), Some("runs/"), Some(""), None] {
            assert!(may(list(prefix), None).is_err(), "{prefix:?}");
            assert!(may(list(prefix), Some(&policy)).is_err(), "{prefix:?}");
        }
        // The inputs and secrets its session policy names, no other.
        let input = |key: &str| {
            Check::new(
                "s3:GetObject",
                format!("arn:aws:s3:::{ARTIFACT_BUCKET}/{key}"),
            )
        };
        assert_eq!(may(input("jobs/r1.tar.gz"), Some(&policy)), Ok(()));
        assert!(may(input("jobs/r2.tar.gz"), Some(&policy)).is_err());
        let secret = |name: &str| {
            Check::new(
                "secretsmanager:GetSecretValue",
                format!("arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:{name}-AbCdEf"),
            )
        };
        assert_eq!(may(secret("ephemera/api-key"), Some(&policy)), Ok(()));
        let refused = may(secret("ephemera/prod/db"), Some(&policy)).unwrap_err();
        assert!(refused.contains("no session policy allows"), "{refused}");
        // Named by a session policy but outside the stack's secret prefix: the role refuses it
        // (a session policy only takes permissions away).
        let refused = may(secret("prod/db"), Some(&policy)).unwrap_err();
        assert!(
            refused.contains("no identity-based policy allows"),
            "{refused}"
        );
        // Parameter Store likewise, and never a run parameter, named or not.
        let parameter = |path: &str| {
            Check::new(
                "ssm:GetParameter",
                format!("arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter/{path}"),
            )
        };
        assert_eq!(
            may(parameter("ephemera/db/password"), Some(&policy)),
            Ok(())
        );
        assert!(may(parameter("ephemera/db/other"), Some(&policy)).is_err());
        let token = may(parameter("ephemera/runs/r1/task-token/i-1"), Some(&policy)).unwrap_err();
        assert!(token.contains("explicit deny"), "{token}");
        // A session without the tag matches no statement that names it.
        let untagged = p.authorize_session(
            &Principal::Run,
            &BTreeMap::new(),
            None,
            "eu-west-1",
            &Check::new("s3:PutObject", object("runs/r1/x")),
        );
        assert!(untagged.is_err());
        // Its log lines: its run's streams only.
        let stream = |name: &str| {
            Check::new(
                "logs:PutLogEvents",
                format!(
                    "arn:aws:logs:eu-west-1:{ACCOUNT}:log-group:{}:log-stream:{name}",
                    worker_log_group()
                ),
            )
        };
        assert_eq!(may(stream("r1/1/i-1"), None), Ok(()));
        assert!(may(stream("r2/1/i-1"), None).is_err());
    }

    #[test]
    fn a_literal_policy_variable_survives_sub() {
        let p = template();
        let statements = &p.by_principal[&Principal::Run];
        let own = statements
            .iter()
            .find(|s| s.sid == "ItsOwnRunsObjects")
            .expect("RunRole's statement");
        assert!(
            own.resources
                .iter()
                .any(|r| r.ends_with("/runs/${aws:PrincipalTag/ephemera:run}/*")),
            "{:?}",
            own.resources
        );
    }

    #[test]
    fn policy_variables_take_the_requests_values() {
        let ctx: BTreeMap<String, String> = [("aws:userid".to_string(), "AROA1:i-9".to_string())]
            .into_iter()
            .collect();
        assert_eq!(
            with_variables("x/${aws:userid}/y", &ctx).as_deref(),
            Some("x/AROA1:i-9/y")
        );
        assert_eq!(with_variables("${aws:username}", &ctx), None);
        assert_eq!(with_variables("plain", &ctx).as_deref(), Some("plain"));
    }

    #[test]
    fn dropping_a_statement_takes_its_permission_away() {
        let p = template();
        let health = Principal::Function("health-check".into());
        let started = Check::new(
            "ssm:GetParameter",
            format!("arn:aws:ssm:us-east-1:{ACCOUNT}:parameter/ephemera/runs/r/started/i-1"),
        );
        assert_eq!(p.authorize(&health, "us-east-1", &started), Ok(()));
        let p = p.without(&health, "TheWorkersStartedSignal");
        assert!(p.authorize(&health, "us-east-1", &started).is_err());
    }
}

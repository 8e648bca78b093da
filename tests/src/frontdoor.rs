//! The front door: one local endpoint that routes by the SigV4 credential scope's service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode};
use axum::Router;
use ephemera_functions::{Aws, Settings};

use crate::iam::{Check, Policies, Principal, ACCOUNT};
use crate::price_list;
use crate::quotas::QuotaStandIn;
use crate::requests::{self, url_form, Wire};
use crate::throttle::{self, Throttles};
use crate::vcpu_limits::{self, Judged, VcpuLimits};

/// An EC2 or RDS request answered with that service's error instead of reaching moto.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub region: String,
    pub action: String,
    /// Form parameters that must all be present with these values.
    pub when: Vec<(String, String)>,
    pub code: String,
    pub message: String,
    pub status: u16,
    /// How many more times it fires; None = always.
    pub remaining: Option<u32>,
}

impl FaultRule {
    pub fn always(region: &str, action: &str, code: &str, status: u16) -> FaultRule {
        FaultRule {
            region: region.into(),
            action: action.into(),
            when: vec![],
            code: code.into(),
            message: format!("{code} (injected by the test harness)"),
            status,
            remaining: None,
        }
    }
    pub fn when(mut self, key: &str, value: &str) -> FaultRule {
        self.when.push((key.into(), value.into()));
        self
    }
    pub fn times(mut self, n: u32) -> FaultRule {
        self.remaining = Some(n);
        self
    }
}

/// A Lambda that fails as a crashed runtime does (Runtime.ExitError), or as one that ran out of
/// its Timeout does, a given number of times.
#[derive(Debug, Clone)]
struct Crash {
    region: String,
    function: String,
    remaining: u32,
    timed_out: bool,
}

/// An instance someone outside the stack launches in a region once a function there has
/// answered in a way `when` recognizes: an On-Demand `instance_type` of `image`, untagged.
struct OutsideLaunch {
    region: String,
    function: String,
    image: String,
    instance_type: String,
    when: fn(&serde_json::Value) -> bool,
}

pub struct FrontDoor {
    moto: String,
    http: reqwest::Client,
    faults: Mutex<Vec<FaultRule>>,
    crashes: Mutex<Vec<Crash>>,
    pub quotas: Mutex<HashMap<String, QuotaStandIn>>,
    clients: Mutex<HashMap<String, Aws>>,
    /// (region, function) of every Lambda invocation served.
    invocations: Mutex<Vec<(String, String)>>,
    /// (region, action, code) of every fault answered.
    faults_fired: Mutex<Vec<(String, String, String)>>,
    pub settings: Mutex<Settings>,
    /// Regions where the stack's ledger table exists (created on the first invocation there,
    /// as a deployment in that region would have it).
    ledgers: Mutex<std::collections::HashSet<String>>,
    endpoint: Mutex<Option<String>>,
    /// The template's policies, enforced for every principal's request (see `iam`).
    policies: Policies,
    /// A region's own policies, for tests that take a statement away.
    policies_in: Mutex<HashMap<String, Policies>>,
    /// Every refusal: (region, principal, action, resource, reason).
    denials: Mutex<Vec<Denial>>,
    /// Service-linked roles created, per region (each test's region is its own fresh account).
    service_linked_roles: Mutex<Vec<(String, String)>>,
    /// (region, instance) → by-id Describe calls still answered NotFound, and the launch.
    not_visible_yet: Mutex<HashMap<(String, String), (u32, std::time::Instant)>>,
    /// RDS snapshots by (region, identifier) still "creating" for this many more reads.
    snapshots_creating: Mutex<HashMap<(String, String), u32>>,
    /// (region, type) the region does not offer though moto knows it.
    pub unoffered: Mutex<std::collections::HashSet<(String, String)>>,
    /// Executions stopped through the door: (error, cause, when), as StopExecution was given
    /// them (`stop_is_at_once`).
    stopped: Mutex<HashMap<String, Stopped>>,
    /// Regions whose stack's rule on the executions' ABORTED/TIMED_OUT status is played
    /// (`deliver_stops`).
    stop_rule: Mutex<std::collections::HashSet<String>>,
    /// What the rule's target answered, by execution ARN (`stop_report`).
    stop_reports: Mutex<HashMap<String, Result<serde_json::Value, String>>>,
    /// (region, ClientToken) → (the parameters' digest, the first answer).
    client_tokens: Mutex<HashMap<(String, String), (String, RawResponse)>>,
    /// (region, instance) → when Spot's interruption notice was given.
    pub spot_notices: Mutex<HashMap<(String, String), chrono::DateTime<chrono::Utc>>>,
    /// (region, instance) Spot has taken back: their state reason is Spot's.
    spot_reclaimed: Mutex<std::collections::HashSet<(String, String)>>,
    /// DynamoDB's writes (and transactional reads), one at a time: moto applies a
    /// TransactWriteItems by copying the tables it touches and, when a condition fails, putting
    /// the copies back, which under concurrent requests erases the writes that landed in
    /// between (and a read then may see the copies). DynamoDB's transactions are serializable
    /// (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html#transaction-isolation).
    dynamodb_writes: tokio::sync::Mutex<()>,
    /// (region, path) of the S3 conditional writes under way. moto 5.2.5 answers a conditional
    /// PutObject as AWS does one at a time (412 PreconditionFailed; 404 NoSuchKey for If-Match
    /// on no object) but checks and writes in two steps and never answers 409, so two at once
    /// could both pass; AWS answers a write that conflicts with one under way 409
    /// ConditionalRequestConflict
    /// (https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html, If-Match and
    /// If-None-Match; https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html).
    s3_conditional_writes: Mutex<std::collections::HashSet<(String, String)>>,
    /// region → the account's default EBS key there (GetEbsDefaultKmsKeyId; AWS's own when
    /// absent), which moto does not serve.
    pub ebs_default_key: Mutex<HashMap<String, String>>,
    /// (region, instance) EC2 terminated at launch for want of the KMS key's permissions.
    kms_refused: Mutex<std::collections::HashSet<(String, String)>>,
    /// (region, image) → its root snapshot's size in GiB and id, as moto describes the image.
    image_snapshot_gib: Mutex<HashMap<(String, String), Option<RootSnapshot>>>,
    /// The account-wide rate limits played (`throttle`).
    pub throttles: Throttles,
    /// EC2's vCPU quotas at launch (`vcpu_limits`).
    pub vcpu_limits: VcpuLimits,
    /// GetSpotPlacementScores, which moto does not serve (`spot_placement`).
    pub spot_placements: crate::spot_placement::SpotPlacements,
    /// Launches by someone outside the stack, due after a function's answer
    /// (`launch_outside_after`).
    outside_due: Mutex<Vec<OutsideLaunch>>,
    /// (region, instance) launched outside the stack.
    outside: Mutex<Vec<(String, String)>>,
    /// EC2 clients straight to moto, by region (the harness's own reads).
    moto_ec2: Mutex<HashMap<String, aws_sdk_ec2::Client>>,
    /// The account's Lambda concurrency (a new account's by default).
    pub lambda_concurrency: std::sync::atomic::AtomicU32,
    /// The run role's sessions STS minted (`crate::sts`).
    pub sessions: crate::sts::Sessions,
    /// Tests: how long the sessions STS mints in a region last, shorter than asked, so that a
    /// renewal comes within a test's minutes rather than an hour.
    session_seconds: Mutex<HashMap<String, i64>>,
}

/// An image's root snapshot: its size in GiB and its id.
type RootSnapshot = (u32, String);

/// A request IAM refused.
#[derive(Debug, Clone)]
pub struct Denial {
    pub region: String,
    pub principal: Principal,
    pub action: String,
    pub resource: String,
    pub reason: String,
}

impl FrontDoor {
    /// Tests: a conditional write of `path` (`/bucket/key`) in `region` is under way until the
    /// guard is dropped, so that another one there is answered 409 as AWS answers it.
    pub fn s3_conditional_write_under_way(self: &Arc<Self>, region: &str, path: &str) -> impl Drop {
        struct Under(Arc<FrontDoor>, (String, String));
        impl Drop for Under {
            fn drop(&mut self) {
                self.0.s3_conditional_writes.lock().unwrap().remove(&self.1);
            }
        }
        let key = (region.to_string(), path.to_string());
        assert!(
            self.s3_conditional_writes
                .lock()
                .unwrap()
                .insert(key.clone()),
            "a write of {path} is already under way"
        );
        Under(self.clone(), key)
    }

    pub fn new(moto: String) -> FrontDoor {
        FrontDoor {
            moto,
            http: reqwest::Client::new(),
            faults: Mutex::default(),
            image_snapshot_gib: Mutex::default(),
            dynamodb_writes: tokio::sync::Mutex::new(()),
            s3_conditional_writes: Mutex::default(),
            ebs_default_key: Mutex::default(),
            kms_refused: Mutex::default(),
            crashes: Mutex::default(),
            quotas: Mutex::default(),
            clients: Mutex::default(),
            invocations: Mutex::default(),
            faults_fired: Mutex::default(),
            settings: Mutex::default(),
            ledgers: Mutex::default(),
            endpoint: Mutex::default(),
            policies: Policies::from_template_file(
                &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"),
            ),
            policies_in: Mutex::default(),
            denials: Mutex::default(),
            service_linked_roles: Mutex::default(),
            not_visible_yet: Mutex::default(),
            snapshots_creating: Mutex::default(),
            unoffered: Mutex::default(),
            stopped: Mutex::default(),
            stop_rule: Mutex::default(),
            stop_reports: Mutex::default(),
            client_tokens: Mutex::default(),
            spot_notices: Mutex::default(),
            spot_reclaimed: Mutex::default(),
            throttles: Throttles::default(),
            vcpu_limits: VcpuLimits::default(),
            spot_placements: Default::default(),
            outside_due: Mutex::default(),
            outside: Mutex::default(),
            moto_ec2: Mutex::default(),
            lambda_concurrency: throttle::NEW_ACCOUNT_LAMBDA_CONCURRENCY.into(),
            sessions: crate::sts::Sessions::default(),
            session_seconds: Mutex::default(),
        }
    }

    /// Plays the stack's rule on stopped executions in `region`: each StopExecution through the
    /// door is followed by the rule's delivery to terminate-with-cost-report.
    pub fn deliver_stops(&self, region: &str) {
        self.stop_rule.lock().unwrap().insert(region.to_string());
    }

    /// What the rule's target answered for a stopped execution: its report, or its error.
    pub fn stop_report(&self, execution: &str) -> Option<Result<serde_json::Value, String>> {
        self.stop_reports.lock().unwrap().get(execution).cloned()
    }

    /// Uses `policies` instead of the template's in `region`.
    pub fn set_policies(&self, region: &str, policies: Policies) {
        self.policies_in
            .lock()
            .unwrap()
            .insert(region.to_string(), policies);
    }

    /// The template's policies as the harness read them.
    pub fn template_policies(&self) -> Policies {
        self.policies.clone()
    }

    pub fn denials_in(&self, region: &str) -> Vec<Denial> {
        self.denials
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.region == region)
            .cloned()
            .collect()
    }

    pub fn has_service_linked_role(&self, region: &str, service: &str) -> bool {
        self.service_linked_roles
            .lock()
            .unwrap()
            .iter()
            .any(|(r, s)| r == region && s == service)
    }

    fn authorize(&self, principal: &Principal, region: &str, check: &Check) -> Result<(), String> {
        self.authorize_as(principal, None, region, check)
    }

    /// The policies in force in `region` (a test's, or the template's).
    fn policies_for(&self, region: &str) -> Policies {
        match self.policies_in.lock().unwrap().get(region) {
            Some(p) => p.clone(),
            None => self.policies.clone(),
        }
    }

    /// [`FrontDoor::authorize`] for a caller that may be a session STS minted (its tags and
    /// session policy count).
    fn authorize_as(
        &self,
        principal: &Principal,
        session: Option<&crate::sts::Session>,
        region: &str,
        check: &Check,
    ) -> Result<(), String> {
        let result = {
            let in_region = self.policies_in.lock().unwrap();
            let p = in_region.get(region).unwrap_or(&self.policies);
            match session {
                Some(s) => {
                    p.authorize_session(principal, &s.tags, s.policy.as_deref(), region, check)
                }
                None => p.authorize(principal, region, check),
            }
        };
        if let Err(reason) = &result {
            self.denials.lock().unwrap().push(Denial {
                region: region.into(),
                principal: principal.clone(),
                action: check.action.clone(),
                resource: check.resource.clone(),
                reason: reason.clone(),
            });
        }
        result
    }

    /// A fresh account has no service-linked role until a principal allowed to create it makes
    /// a call that needs it; AWS then creates it on that principal's authority
    /// (https://docs.aws.amazon.com/IAM/latest/UserGuide/using-service-linked-roles.html).
    fn ensure_service_linked_role(
        &self,
        principal: Option<&Principal>,
        region: &str,
        service: &str,
        role: &str,
    ) -> Result<(), String> {
        if self.has_service_linked_role(region, service) {
            return Ok(());
        }
        if let Some(p) = principal {
            let check = Check::new(
                "iam:CreateServiceLinkedRole",
                format!("arn:aws:iam::{ACCOUNT}:role/aws-service-role/{service}/{role}"),
            )
            .with("iam:AWSServiceName", service);
            self.authorize(p, region, &check)?;
        }
        self.service_linked_roles
            .lock()
            .unwrap()
            .push((region.into(), service.into()));
        Ok(())
    }

    pub fn add_fault(&self, rule: FaultRule) {
        self.faults.lock().unwrap().push(rule);
    }

    pub fn add_crash(&self, region: &str, function: &str, times: u32) {
        self.crashes.lock().unwrap().push(Crash {
            region: region.into(),
            function: function.into(),
            remaining: times,
            timed_out: false,
        });
    }

    /// `function` times out `times` times: Lambda answers the invocation with an unhandled
    /// `Sandbox.Timedout` ("Task timed out after … seconds"), which Step Functions reports by
    /// that name (older runtimes gave no type, reported as `Lambda.Unknown`:
    /// https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html).
    pub fn add_timeout(&self, region: &str, function: &str, times: u32) {
        self.crashes.lock().unwrap().push(Crash {
            region: region.into(),
            function: function.into(),
            remaining: times,
            timed_out: true,
        });
    }

    /// Once `function` in `region` answers with an output `when` recognizes, someone outside
    /// the stack launches an On-Demand `instance_type` of `image` there, before the answer
    /// reaches the caller (it takes vCPUs of the account's quota as any other tool would).
    pub fn launch_outside_after(
        &self,
        region: &str,
        function: &str,
        image: &str,
        instance_type: &str,
        when: fn(&serde_json::Value) -> bool,
    ) {
        self.outside_due.lock().unwrap().push(OutsideLaunch {
            region: region.into(),
            function: function.into(),
            image: image.into(),
            instance_type: instance_type.into(),
            when,
        });
    }

    /// The instances launched outside the stack in `region`.
    pub fn outside_instances(&self, region: &str) -> Vec<String> {
        self.outside
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == region)
            .map(|(_, i)| i.clone())
            .collect()
    }

    /// Launches the outside instance due after this answer, if one is.
    async fn launch_outside_if_due(
        &self,
        region: &str,
        function: &str,
        output: &serde_json::Value,
    ) {
        let due = {
            let mut due = self.outside_due.lock().unwrap();
            let i = due
                .iter()
                .position(|o| o.region == region && o.function == function && (o.when)(output));
            i.map(|i| due.remove(i))
        };
        let Some(o) = due else {
            return;
        };
        let body = format!(
            "Action=RunInstances&Version=2016-11-15&ImageId={}&InstanceType={}&MinCount=1&MaxCount=1",
            o.image, o.instance_type
        );
        let text = match self.moto_query(region, "ec2", &body).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => panic!("the outside launch failed: {e}"),
        };
        let id = text
            .split("<instanceId>")
            .nth(1)
            .and_then(|r| r.split("</instanceId>").next())
            .unwrap_or_else(|| panic!("the outside launch answered no instance: {text}"))
            .to_string();
        self.outside.lock().unwrap().push((region.into(), id));
    }

    /// An EC2 client straight to moto in `region`, as the administrator.
    fn moto_ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        self.moto_ec2
            .lock()
            .unwrap()
            .entry(region.to_string())
            .or_insert_with(|| {
                let conf = aws_config::SdkConfig::builder()
                    .behavior_version(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region.to_string()))
                    .endpoint_url(&self.moto)
                    .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
                        aws_sdk_ec2::config::Credentials::new(
                            ADMIN_KEY, "testing", None, None, "harness",
                        ),
                    ))
                    .build();
                aws_sdk_ec2::Client::new(&conf)
            })
            .clone()
    }

    /// GetSpotPlacementScores as EC2 answers it: the request checked, its staged rate, the
    /// 24-hour limit of new configurations, then the staged scores over moto's zones.
    async fn spot_placement_scores(
        &self,
        region: &str,
        form: &HashMap<String, String>,
    ) -> Response<Body> {
        use crate::spot_placement::{self, Asked};
        let p = &self.spot_placements;
        let refuse = |(status, code, message): spot_placement::Refusal| {
            p.refused(region, code);
            ec2_error(status, code, &message)
        };
        let asked = match Asked::parse(form, region) {
            Ok(a) => a,
            Err(r) => return refuse(r),
        };
        if let Some(rate) = p.rate(region) {
            let what = "ec2:GetSpotPlacementScores (its own rate)";
            if !self
                .throttles
                .take_from(region, "GetSpotPlacementScores (staged)", rate, what)
            {
                return refuse((
                    503,
                    "RequestLimitExceeded",
                    "Request limit exceeded.".into(),
                ));
            }
        }
        if let Err(r) = p.admit_configuration(region, &asked.configuration) {
            return refuse(r);
        }
        let mut zones = std::collections::BTreeMap::new();
        for r in &asked.regions {
            let Ok(out) = self.moto_ec2(r).describe_availability_zones().send().await else {
                continue;
            };
            let mut ids: Vec<String> = out
                .availability_zones()
                .iter()
                .filter_map(|z| z.zone_id().map(str::to_string))
                .collect();
            ids.sort();
            zones.insert(r.clone(), ids);
        }
        let scores = p.scores(&asked, &zones, |t| {
            ephemera_core::catalog::lookup(t).map(|i| i.vcpus)
        });
        p.served(region);
        Response::builder()
            .status(200)
            .header("content-type", "text/xml")
            .body(Body::from(spot_placement::response_xml(&scores)))
            .expect("a response")
    }

    /// The launch asked for in `form` judged against its vCPU quota (`vcpu_limits`).
    async fn judge_vcpus(&self, region: &str, form: &HashMap<String, String>) -> Judged {
        let Some(instance_type) = form.get("InstanceType") else {
            return Judged::Unknown;
        };
        let market = if requests::is_spot(form) {
            ephemera_core::Market::Spot
        } else {
            ephemera_core::Market::OnDemand
        };
        let count = form
            .get("MaxCount")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let applied = |code: &str| {
            self.with_quotas(region, |q| {
                q.applied.get(code).copied().unwrap_or(q.default_value)
            })
        };
        self.vcpu_limits
            .judge(
                &self.moto_ec2(region),
                instance_type,
                market,
                count,
                applied,
            )
            .await
    }

    pub fn faults_fired_in(&self, region: &str) -> Vec<(String, String)> {
        self.faults_fired
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.0 == region)
            .map(|f| (f.1.clone(), f.2.clone()))
            .collect()
    }

    pub fn invocations_in(&self, region: &str) -> Vec<String> {
        self.invocations
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.0 == region)
            .map(|f| f.1.clone())
            .collect()
    }

    /// Runs `f` on this region's Service Quotas stand-in.
    pub fn with_quotas<T>(&self, region: &str, f: impl FnOnce(&mut QuotaStandIn) -> T) -> T {
        let mut all = self.quotas.lock().unwrap();
        f(all.entry(region.to_string()).or_default())
    }

    pub(crate) async fn wait_for_moto(&self) {
        for _ in 0..600 {
            if self
                .http
                .get(format!("{}/moto-api/", self.moto))
                .send()
                .await
                .is_ok()
            {
                let cfg = serde_json::json!({
                    "stepfunctions": {"execute_state_machine": true},
                    "lambda": {"use_docker": false}
                });
                self.http
                    .post(format!("{}/moto-api/config", self.moto))
                    .header("content-type", "application/json")
                    .body(cfg.to_string())
                    .send()
                    .await
                    .expect("moto config");
                self.deploy_worker_identity().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto server did not answer within 60 s");
    }

    fn clients_for(&self, region: &str, function: &str, endpoint: &str) -> Aws {
        self.clients
            .lock()
            .unwrap()
            .entry(format!("{region}/{function}"))
            .or_insert_with(|| {
                let conf = aws_config::SdkConfig::builder()
                    .behavior_version(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region.to_string()))
                    .endpoint_url(endpoint)
                    .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
                        aws_sdk_ec2::config::Credentials::new(
                            Principal::Function(function.into()).access_key(),
                            "testing",
                            None,
                            None,
                            "harness",
                        ),
                    ))
                    .build();
                Aws::from_conf(&conf)
            })
            .clone()
    }
}

pub fn router(door: Arc<FrontDoor>) -> Router {
    Router::new().fallback(route).with_state(door)
}

/// The access key of the account's administrator (the person running ephemera).
pub const ADMIN_KEY: &str = "testing";

/// `Credential=AKID/20260101/us-east-1/ec2/aws4_request` → ("AKID", "us-east-1", "ec2").
fn scope(headers: &HeaderMap) -> (String, String, String) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let cred = auth
        .split("Credential=")
        .nth(1)
        .and_then(|s| s.split([',', ' ']).next())
        .unwrap_or_default();
    let parts: Vec<&str> = cred.split('/').collect();
    if parts.len() >= 5 {
        (
            parts[0].to_string(),
            parts[2].to_string(),
            parts[3].to_string(),
        )
    } else {
        (String::new(), "us-east-1".into(), String::new())
    }
}

fn json_response(status: u16, body: serde_json::Value, extra: &[(&str, &str)]) -> Response<Body> {
    // Every AWS JSON answer carries a request id; botocore (moto's executor) requires it.
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-amzn-requestid", "00000000-0000-0000-0000-000000000000");
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    r.body(Body::from(body.to_string())).unwrap()
}

/// A JSON-protocol request's operation (`X-Amz-Target: AmazonSSM.GetParameter`).
fn target_operation(headers: &HeaderMap) -> &str {
    headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or_default()
}

async fn route(State(door): State<Arc<FrontDoor>>, req: Request) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, 64 << 20).await.unwrap_or_default();
    let (access_key, region, service) = scope(&parts.headers);
    let path = parts.uri.path().to_string();
    let principal = Principal::from_access_key(&access_key);
    // The account's administrator signs with `testing`; a key nobody was given is refused as
    // AWS refuses it, so a process that signs with the wrong credentials (a worker that did not
    // take its instance's from IMDS) cannot pass for the administrator.
    if principal.is_none() && !access_key.is_empty() && access_key != ADMIN_KEY {
        return access_denied(
            &service,
            &format!(
                "The security token included in the request is invalid (access key {access_key})."
            ),
        );
    }
    // A run session's key is good while its session lasts (`sts`).
    let session = match principal {
        Some(Principal::Run) => match door.sessions.get(&access_key) {
            Some(s) if s.expires > chrono::Utc::now() => Some(s),
            Some(_) => {
                return access_denied(
                    &service,
                    &format!("The security token included in the request is expired (access key {access_key})."),
                )
            }
            None => {
                return access_denied(
                    &service,
                    &format!("The security token included in the request is invalid (access key {access_key})."),
                )
            }
        },
        _ => None,
    };
    if service == "sts" {
        if let Some(p) = &principal {
            let form = url_form(&bytes);
            if form.get("Action").map(String::as_str) == Some("AssumeRole") {
                return assume_role(&door, p, session.as_ref(), &region, &form);
            }
        }
    }
    let caller = principal.as_ref().map(|p| (p, access_key.as_str()));
    if let Some(refusal) = enforce(
        &door,
        caller,
        session.as_ref(),
        &region,
        &service,
        &parts,
        &bytes,
    )
    .await
    {
        return refusal;
    }
    if service == "ssm" {
        let op = target_operation(&parts.headers);
        if throttle::SSM_PARAMETER_ACTIONS.contains(&op)
            && !door.throttles.take(
                &region,
                "ssm-parameters",
                throttle::SSM_PARAMETER_TPS,
                &format!("ssm:{op}"),
            )
        {
            return json_response(
                400,
                serde_json::json!({"__type": "ThrottlingException", "message": "Rate exceeded"}),
                &[("x-amzn-errortype", "ThrottlingException")],
            );
        }
    }

    if service == "pricing" {
        let (status, out) =
            price_list::answer(&door.throttles, target_operation(&parts.headers), &bytes);
        let err_type = out["__type"].as_str().unwrap_or_default().to_string();
        let extra: Vec<(&str, &str)> = match status {
            200 => vec![],
            _ => vec![("x-amzn-errortype", err_type.as_str())],
        };
        return json_response(status, out, &extra);
    }
    if service == "lambda"
        && path.starts_with("/2015-03-31/functions/")
        && path.ends_with("/invocations")
    {
        let host = parts
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1")
            .to_string();
        *door.endpoint.lock().unwrap() = Some(format!("http://{host}"));
        return invoke_lambda(&door, &region, &path, &host, &bytes).await;
    }
    if service == "servicequotas" {
        let op = target_operation(&parts.headers).to_string();
        let input: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let (status, out) = door.with_quotas(&region, |q| q.handle(&op, &input));
        let mut extra = vec![];
        let err_type;
        if status != 200 {
            err_type = out["__type"].as_str().unwrap_or_default().to_string();
            extra.push(("x-amzn-errortype", err_type.as_str()));
        }
        return json_response(status, out, &extra);
    }
    if service == "ec2" {
        let form: HashMap<String, String> = url_form(&bytes);
        let action = form.get("Action").cloned().unwrap_or_default();
        if !ec2_buckets(&door.throttles, &region, &action, &form) {
            return ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.");
        }
        if let Some(f) = door.fire_fault(&region, &action, &form) {
            return ec2_error(f.status, &f.code, &f.message);
        }
        if let Some(answer) = fresh_account_ec2(
            &door,
            principal.as_ref(),
            &region,
            &action,
            &form,
            &parts,
            &bytes,
        )
        .await
        {
            return answer;
        }
    }
    if service == "rds" {
        let form: HashMap<String, String> = url_form(&bytes);
        let action = form.get("Action").cloned().unwrap_or_default();
        if let Some(f) = door.fire_fault(&region, &action, &form) {
            return rds_error(f.status, &f.code, &f.message);
        }
        if let Some(answer) = snapshot_takes_time(&door, &region, &form, &parts, &bytes).await {
            return answer;
        }
    }
    if service == "states" {
        let stopping = target_operation(&parts.headers) == "StopExecution";
        if let Some(answer) = stop_is_at_once(&door, &parts, bytes.clone()).await {
            let delivered = door.stop_rule.lock().unwrap().contains(&region);
            if stopping && delivered && answer.status() == StatusCode::OK {
                let input: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                if let Some(arn) = input["executionArn"].as_str() {
                    tokio::spawn(deliver_stop(door.clone(), region.clone(), arn.to_string()));
                }
            }
            return answer;
        }
    }
    if service == "dynamodb"
        && matches!(
            target_operation(&parts.headers),
            "TransactWriteItems"
                | "PutItem"
                | "UpdateItem"
                | "DeleteItem"
                | "BatchWriteItem"
                // Serializable with the writes, as DynamoDB's transactional reads are.
                | "TransactGetItems"
        )
    {
        let _one_at_a_time = door.dynamodb_writes.lock().await;
        return proxy(&door, parts, bytes).await;
    }
    if service == "s3" && parts.method == axum::http::Method::PUT {
        if let Some(refused) = s3_bad_digest(&parts.headers, &bytes) {
            return refused;
        }
    }
    if service == "s3"
        && matches!(
            parts.method,
            axum::http::Method::PUT | axum::http::Method::POST
        )
        && (parts.headers.contains_key("if-match") || parts.headers.contains_key("if-none-match"))
    {
        let key = (region.clone(), path.clone());
        if !door
            .s3_conditional_writes
            .lock()
            .unwrap()
            .insert(key.clone())
        {
            return s3_error(
                409,
                "ConditionalRequestConflict",
                "A conflicting conditional operation is currently in progress against this resource. Please try again.",
            );
        }
        let answer = proxy(&door, parts, bytes).await;
        door.s3_conditional_writes.lock().unwrap().remove(&key);
        return answer;
    }
    proxy(&door, parts, bytes).await
}

/// S3 checks the bytes of a PutObject or UploadPart against the SHA-256 sent with them and
/// refuses a mismatch with `BadDigest`, storing nothing
/// (https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html);
/// moto stores whatever it is told. Only a digest sent as a header over a plain body is checked
/// here (one sent as an aws-chunked trailer is moto's to read).
fn s3_bad_digest(headers: &HeaderMap, body: &[u8]) -> Option<Response<Body>> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let sent = headers.get("x-amz-checksum-sha256")?.to_str().ok()?;
    let chunked = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("STREAMING-"));
    if chunked {
        return None;
    }
    let actual = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body));
    (actual != sent).then(|| {
        s3_error(
            400,
            "BadDigest",
            "The SHA256 you specified did not match the calculated checksum.",
        )
    })
}

/// The stack's EventBridge rule on the execution's ABORTED status (template.yaml,
/// terminate-with-cost-report's `ExecutionStopped` event), as EventBridge delivers it to terminate-with-cost-report: a
/// `Step Functions Execution Status Change` event with the execution's name, dates, input,
/// error and cause
/// (https://docs.aws.amazon.com/step-functions/latest/dg/cw-events.html). EventBridge delivers
/// within seconds; the target's answer is kept for `stop_report`.
async fn deliver_stop(door: Arc<FrontDoor>, region: String, arn: String) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Some(d) = door
        .moto_json(
            &region,
            "states",
            "AWSStepFunctions.DescribeExecution",
            serde_json::json!({ "executionArn": arn }),
        )
        .await
    else {
        door.stop_reports
            .lock()
            .unwrap()
            .insert(arn, Err("DescribeExecution: moto did not answer".into()));
        return;
    };
    let (error, cause, at) = door
        .stopped
        .lock()
        .unwrap()
        .get(&arn)
        .cloned()
        .unwrap_or((None, None, 0.0));
    let ms = |secs: f64| (secs * 1000.0) as i64;
    let event = serde_json::json!({
        "version": "0", "source": "aws.states", "region": region,
        "detail-type": ephemera_core::stopped::DETAIL_TYPE,
        "resources": [arn],
        "detail": {
            "executionArn": arn, "stateMachineArn": d["stateMachineArn"],
            "name": d["name"], "status": "ABORTED",
            "startDate": ms(d["startDate"].as_f64().unwrap_or(at)), "stopDate": ms(at),
            "input": d["input"], "output": null, "error": error, "cause": cause
        }
    });
    let endpoint = door.endpoint.lock().unwrap().clone();
    let endpoint = endpoint.unwrap_or_else(|| door.moto.clone());
    let function = ephemera_functions::Function::TerminateWithCostReport;
    let aws = door.clients_for(&region, function.name(), &endpoint);
    let settings = door.deployed_settings(&region).await;
    let answer = ephemera_functions::invoke(&aws, &settings, function, event)
        .await
        .map_err(|e| e.to_string());
    door.stop_reports.lock().unwrap().insert(arn, answer);
}

/// What a StopExecution was given: error, cause, and when (seconds since the epoch).
type Stopped = (Option<String>, Option<String>, f64);

/// StopExecution ends a Standard execution at once: from the call on it is ABORTED, with the
/// error and cause it was given
/// (https://docs.aws.amazon.com/step-functions/latest/apireference/API_StopExecution.html).
/// moto drops both, and its executor notices a stop only when the state it waits in returns (a
/// task token's wait: at the next heartbeat, minutes later): the door keeps what each stop was
/// given and answers DescribeExecution and ListExecutions for that execution as AWS would.
async fn stop_is_at_once(
    door: &FrontDoor,
    parts: &axum::http::request::Parts,
    bytes: axum::body::Bytes,
) -> Option<Response<Body>> {
    let op = target_operation(&parts.headers);
    if !matches!(
        op,
        "StopExecution" | "DescribeExecution" | "ListExecutions" | "GetExecutionHistory"
    ) {
        return None;
    }
    let input: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let mut r = proxy_raw(door, parts, bytes).await?;
    if r.0 != 200 {
        return Some(rebuild(r));
    }
    let mut out: serde_json::Value = serde_json::from_str(&r.2).unwrap_or_default();
    let stopped = |item: &mut serde_json::Value, door: &FrontDoor, described: bool| {
        let arn = item["executionArn"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let Some((error, cause, at)) = door.stopped.lock().unwrap().get(&arn).cloned() else {
            return;
        };
        item["status"] = "ABORTED".into();
        item["stopDate"] = at.into();
        if described {
            item["error"] = error.map_or(serde_json::Value::Null, Into::into);
            item["cause"] = cause.map_or(serde_json::Value::Null, Into::into);
        }
    };
    match op {
        "StopExecution" => {
            let arn = input["executionArn"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let at = out["stopDate"].as_f64().unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64())
            });
            let given = |k: &str| input[k].as_str().map(String::from);
            door.stopped
                .lock()
                .unwrap()
                .insert(arn, (given("error"), given("cause"), at));
            return Some(rebuild(r));
        }
        "DescribeExecution" => stopped(&mut out, door, true),
        "GetExecutionHistory" => {
            let arn = input["executionArn"].as_str().unwrap_or_default();
            let last_page = out["nextToken"].is_null() && input["reverseOrder"] != true;
            if let Some(stop) = door.stopped.lock().unwrap().get(arn).cloned() {
                aborted_history(&mut out, stop, last_page);
            }
        }
        _ => {
            if let Some(items) = out["executions"].as_array_mut() {
                items.iter_mut().for_each(|i| stopped(i, door, false));
            }
        }
    }
    r.2 = out.to_string();
    Some(rebuild(r))
}

/// A stopped execution's history as Step Functions keeps it: nothing after the stop, and the
/// stop itself last (`ExecutionAborted` with the error and cause StopExecution was given). moto
/// runs the states on after its StopExecution, so its history would go on to a
/// `TaskFailed`/`ExecutionFailed` the execution never had.
fn aborted_history(out: &mut serde_json::Value, stop: Stopped, last_page: bool) {
    let (error, cause, at) = stop;
    let Some(events) = out["events"].as_array_mut() else {
        return;
    };
    events.retain(|e| {
        e["timestamp"].as_f64().is_none_or(|t| t <= at)
            && !matches!(
                e["type"].as_str(),
                Some("ExecutionFailed" | "ExecutionSucceeded" | "ExecutionTimedOut")
            )
    });
    let last_id = events
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .max()
        .unwrap_or(0);
    if last_page && !events.iter().any(|e| e["type"] == "ExecutionAborted") {
        let mut details = serde_json::Map::new();
        if let Some(e) = error {
            details.insert("error".into(), e.into());
        }
        if let Some(c) = cause {
            details.insert("cause".into(), c.into());
        }
        events.push(serde_json::json!({
            "timestamp": at, "type": "ExecutionAborted", "id": last_id + 1,
            "previousEventId": last_id, "executionAbortedEventDetails": details
        }));
    }
}

/// An S3 error as S3 answers it (REST, XML).
fn s3_error(status: u16, code: &str, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(Body::from(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message><RequestId>0</RequestId></Error>",
            xml_escape(message)
        )))
        .unwrap()
}

/// Reads of a new RDS snapshot that answer "creating" before "available".
const SNAPSHOT_CREATING_READS: u32 = 2;

/// An RDS snapshot takes minutes: CreateDBSnapshot answers `creating`, and so do the next reads
/// until it is `available`
/// (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/USER_CreateSnapshot.html); moto
/// answers `available` at once.
async fn snapshot_takes_time(
    door: &FrontDoor,
    region: &str,
    form: &HashMap<String, String>,
    parts: &axum::http::request::Parts,
    bytes: &axum::body::Bytes,
) -> Option<Response<Body>> {
    let action = form.get("Action")?.as_str();
    let id = match action {
        "CreateDBSnapshot" | "DescribeDBSnapshots" => form.get("DBSnapshotIdentifier")?,
        "CreateDBClusterSnapshot" | "DescribeDBClusterSnapshots" => {
            form.get("DBClusterSnapshotIdentifier")?
        }
        _ => return None,
    };
    let key = (region.to_string(), id.clone());
    let mut resp = proxy_raw(door, parts, bytes.clone()).await?;
    if resp.0 != 200 {
        return Some(rebuild(resp));
    }
    let creating = {
        let mut reads = door.snapshots_creating.lock().unwrap();
        if action.starts_with("Create") {
            reads.insert(key, SNAPSHOT_CREATING_READS);
            true
        } else {
            match reads.get_mut(&key) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        }
    };
    if creating {
        resp.2 = resp
            .2
            .replace("<Status>available</Status>", "<Status>creating</Status>");
    }
    Some(rebuild(resp))
}

/// EC2 as a new account on real AWS answers where moto is lenient.
async fn fresh_account_ec2(
    door: &FrontDoor,
    principal: Option<&Principal>,
    region: &str,
    action: &str,
    form: &HashMap<String, String>,
    parts: &axum::http::request::Parts,
    bytes: &axum::body::Bytes,
) -> Option<Response<Body>> {
    let ids: Vec<String> = (1..=100)
        .map_while(|n| form.get(&format!("InstanceId.{n}")).cloned())
        .collect();
    match action {
        // Right after RunInstances an instance may not be found by id for a while
        // (https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html).
        "DescribeInstances" | "DescribeInstanceStatus" => {
            let hidden = {
                let mut unseen = door.not_visible_yet.lock().unwrap();
                let id = ids.iter().find(|id| {
                    unseen
                        .get(&(region.to_string(), id.to_string()))
                        .is_some_and(|(n, at)| *n > 0 && at.elapsed() < NOT_VISIBLE_FOR)
                });
                id.cloned().inspect(|id| {
                    if let Some((n, _)) = unseen.get_mut(&(region.to_string(), id.clone())) {
                        *n -= 1;
                    }
                })
            };
            if let Some(id) = hidden {
                return Some(ec2_error(
                    400,
                    "InvalidInstanceID.NotFound",
                    &format!("The instance ID '{id}' does not exist"),
                ));
            }
            if action != "DescribeInstances" {
                return None;
            }
            let mut resp = proxy_raw(door, parts, bytes.clone()).await?;
            // EC2 dates a transition in GMT ("User initiated (2019-12-23 00:07:23 GMT)",
            // https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstances.html
            // examples); moto writes UTC, which the cost report would not read as a time.
            resp.2 = door
                .with_spot_reasons(region, resp.2)
                .replace(" UTC)</reason>", " GMT)</reason>");
            Some(rebuild(resp))
        }
        // A type the region does not offer fails the whole call
        // (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstanceTypes.html).
        "DescribeInstanceTypes" => {
            let asked: Vec<String> = (1..=100)
                .map_while(|n| form.get(&format!("InstanceType.{n}")).cloned())
                .collect();
            if asked.is_empty() {
                return None;
            }
            let resp = proxy_raw(door, parts, bytes.clone()).await?;
            let known: Vec<&str> = resp
                .2
                .split("<instanceType>")
                .skip(1)
                .filter_map(|s| s.split("</instanceType>").next())
                .collect();
            let unoffered = door.unoffered.lock().unwrap();
            let missing: Vec<&String> = asked
                .iter()
                .filter(|t| {
                    !known.contains(&t.as_str())
                        || unoffered.contains(&(region.to_string(), t.to_string()))
                })
                .collect();
            if missing.is_empty() {
                return Some(rebuild(resp));
            }
            Some(ec2_error(
                400,
                "InvalidInstanceType",
                &format!(
                    "The following supplied instance types do not exist: [{}]",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
        // moto prices every Spot hour at $0.00001 dated 2006; AWS answers with the price in force
        // at StartTime (dated earlier) and each change within the window, per zone
        // (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSpotPriceHistory.html).
        "DescribeSpotPriceHistory" => Some(spot_price_history(form)),
        // moto does not serve it: the scores of the staged table, with its own limits
        // (`spot_placement`, which cites AWS's reference and user guide).
        "GetSpotPlacementScores" => Some(door.spot_placement_scores(region, form).await),
        // moto does not serve it; AWS answers the key's ARN, AWS's own `alias/aws/ebs` until the
        // account sets another
        // (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetEbsDefaultKmsKeyId.html).
        "GetEbsDefaultKmsKeyId" => Some(
            Response::builder()
                .status(200)
                .header("content-type", "text/xml")
                .body(Body::from(format!(
                    "<GetEbsDefaultKmsKeyIdResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                     <requestId>ebs-default-key</requestId><kmsKeyId>{}</kmsKeyId>\
                     </GetEbsDefaultKmsKeyIdResponse>",
                    door.ebs_default_key(region)
                )))
                .expect("a response"),
        ),
        // ClientToken makes RunInstances idempotent: the same token with the same parameters
        // returns the first call's instance, with other parameters IdempotentParameterMismatch
        // (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html).
        "RunInstances" => {
            // EC2 resolves an ImageId of `resolve:ssm:<parameter>` to the AMI id the parameter
            // holds, and the instance shows that id (EC2 User Guide, "Use a Systems Manager
            // parameter instead of an AMI ID"); moto keeps the literal. Resolved here, before
            // the rest reads the image.
            let resolved = door.resolve_ssm_image(region, form).await;
            let (form, bytes) = match &resolved {
                Some((f, b)) => (f, b),
                None => (form, bytes),
            };
            // The SDKs fill ClientToken in (an idempotency token); a request without one is
            // no retry of anything.
            let token = form.get("ClientToken").cloned();
            let mut params: Vec<(&String, &String)> = form
                .iter()
                .filter(|(k, _)| *k != "ClientToken" && *k != "Version")
                .collect();
            params.sort();
            let digest = format!("{params:?}");
            let key = token.map(|t| (region.to_string(), t));
            let seen = key
                .as_ref()
                .and_then(|k| door.client_tokens.lock().unwrap().get(k).cloned());
            if let Some((seen, answer)) = seen {
                return Some(if seen == digest {
                    rebuild(answer)
                } else {
                    ec2_error(
                        400,
                        "IdempotentParameterMismatch",
                        "The client token you have provided is associated with a resource that is already deleted or has different parameters. Please use a different client token.",
                    )
                });
            }
            if let Some(refused) = door.smaller_than_snapshot(region, form).await {
                return Some(refused);
            }
            // The vCPU quota, counted and launched against one launch at a time.
            let lock = door.vcpu_limits.region_lock(region);
            let _one_at_a_time = lock.lock().await;
            let judged = door.judge_vcpus(region, form).await;
            if let Judged::Refused(r) = &judged {
                door.vcpu_limits.record(region, &judged);
                let (code, message) = vcpu_limits::refusal_error(r);
                return Some(ec2_error(400, code, &message));
            }
            let resp = proxy_raw(door, parts, bytes.clone()).await?;
            if resp.0 == 200 {
                door.vcpu_limits.record(region, &judged);
                let ids: Vec<String> = resp
                    .2
                    .split("<instanceId>")
                    .skip(1)
                    .filter_map(|id| id.split("</instanceId>").next())
                    .map(str::to_string)
                    .collect();
                if door.kms_key_refused(principal, region, form) {
                    door.terminate_at_launch(region, &ids).await;
                }
                let mut unseen = door.not_visible_yet.lock().unwrap();
                for id in &ids {
                    unseen.insert(
                        (region.to_string(), id.clone()),
                        (NOT_VISIBLE_CALLS, std::time::Instant::now()),
                    );
                }
                if let Some(key) = key {
                    door.client_tokens
                        .lock()
                        .unwrap()
                        .insert(key, (digest, resp.clone()));
                }
            }
            Some(rebuild(resp))
        }
        _ => None,
    }
}

/// A Spot price history as AWS gives it: for each asked type and zone, the price in force at the
/// window's start (about a third of On-Demand, a little different per zone) and, in windows over
/// two minutes, one change halfway, 5 % up.
fn spot_price_history(form: &HashMap<String, String>) -> Response<Body> {
    use chrono::{DateTime, Utc};
    let types: Vec<&String> = (1..=100)
        .map_while(|n| form.get(&format!("InstanceType.{n}")))
        .collect();
    let zone = form.get("AvailabilityZone");
    let parse = |k: &str| {
        form.get(k)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let end = parse("EndTime").unwrap_or_else(Utc::now);
    let start = parse("StartTime").unwrap_or(end);
    let mut items = String::new();
    for t in types {
        let Some(info) = ephemera_core::catalog::lookup(t) else {
            continue;
        };
        let Some(zone) = zone else { continue };
        let letter = zone
            .chars()
            .last()
            .map_or(0, |c| (c as u32).saturating_sub('a' as u32));
        let base = info.on_demand_hourly * (0.33 + 0.01 * f64::from(letter % 6));
        let mut points = vec![(start - chrono::Duration::minutes(37), base)];
        if end - start > chrono::Duration::minutes(2) {
            points.push((start + (end - start) / 2, base * 1.05));
        }
        for (at, price) in points {
            items.push_str(&format!(
                "<item><instanceType>{t}</instanceType><productDescription>Linux/UNIX</productDescription>\
                 <spotPrice>{price:.6}</spotPrice><timestamp>{}</timestamp>\
                 <availabilityZone>{zone}</availabilityZone></item>",
                at.format("%Y-%m-%dT%H:%M:%S%.3fZ")
            ));
        }
    }
    Response::builder()
        .status(200)
        .header("content-type", "text/xml")
        .body(Body::from(format!(
            "<DescribeSpotPriceHistoryResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>spot-price-history</requestId><spotPriceHistorySet>{items}</spotPriceHistorySet>\
             <nextToken></nextToken></DescribeSpotPriceHistoryResponse>"
        )))
        .expect("a response")
}

/// How many by-id Describe calls a new instance stays invisible to, within how long of its
/// launch: propagation takes seconds from the launch, not a number of calls, so a first look
/// minutes later (a health check queued behind throttled invocations) finds it; `make scale`
/// failed 23 of 200 runs at their boot deadline when the hiding had no end in time.
const NOT_VISIBLE_CALLS: u32 = 2;
const NOT_VISIBLE_FOR: std::time::Duration = std::time::Duration::from_secs(30);

type RawResponse = (u16, Vec<(String, String)>, String);

/// moto's answer kept as text, to be looked at and answered again (EC2's XML).
async fn proxy_raw(
    door: &FrontDoor,
    parts: &axum::http::request::Parts,
    bytes: axum::body::Bytes,
) -> Option<RawResponse> {
    let r = forward(door, parts, bytes).await.ok()?;
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .filter(|(k, _)| *k != "transfer-encoding" && *k != "connection" && *k != "content-length")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    Some((status, headers, r.text().await.unwrap_or_default()))
}

fn rebuild(r: RawResponse) -> Response<Body> {
    let mut out = Response::builder().status(r.0);
    for (k, v) in r.1 {
        out = out.header(k, v);
    }
    out.body(Body::from(r.2)).unwrap()
}

async fn invoke_lambda(
    door: &Arc<FrontDoor>,
    region: &str,
    path: &str,
    host: &str,
    bytes: &[u8],
) -> Response<Body> {
    let target = path
        .trim_start_matches("/2015-03-31/functions/")
        .trim_end_matches("/invocations");
    let target = urlencoding::decode(target)
        .map(|c| c.into_owned())
        .unwrap_or_default();
    // A name, or an ARN arn:aws:lambda:region:account:function:name[:qualifier].
    let name = match target.split_once(":function:") {
        Some((_, rest)) => rest.split(':').next().unwrap_or_default().to_string(),
        None => target.split(':').next().unwrap_or_default().to_string(),
    };
    // Deployed names carry a stack prefix (ephemera-quota-check-ABC123): match the function.
    let known = ephemera_functions::Function::ALL
        .into_iter()
        .find(|f| name == f.name() || name.contains(f.name()));
    let function = known.map(|f| f.name().to_string()).unwrap_or(name);
    let limit = door
        .lambda_concurrency
        .load(std::sync::atomic::Ordering::SeqCst);
    let Some(_running) = door
        .throttles
        .enter(region, limit, &format!("lambda:{function}"))
    else {
        return json_response(
            429,
            serde_json::json!({"Type": "User", "Reason": "ConcurrentInvocationLimitExceeded",
                               "message": "Rate Exceeded."}),
            &[("x-amzn-errortype", "TooManyRequestsException")],
        );
    };
    door.invocations
        .lock()
        .unwrap()
        .push((region.to_string(), function.clone()));
    let crash = {
        let mut crashes = door.crashes.lock().unwrap();
        crashes
            .iter_mut()
            .find(|c| c.region == region && c.function == function && c.remaining > 0)
            .map(|c| {
                c.remaining -= 1;
                c.timed_out
            })
    };
    if let Some(timed_out) = crash {
        let body = if timed_out {
            serde_json::json!({
                "errorType": "Sandbox.Timedout",
                "errorMessage": format!("RequestId: harness Error: Task timed out after 60.00 seconds ({function}, injected)")
            })
        } else {
            serde_json::json!({
                "errorType": "Runtime.ExitError",
                "errorMessage": format!("RequestId: harness Error: Runtime exited with error: signal: aborted ({function} crashed, injected)")
            })
        };
        return json_response(200, body, &[("x-amz-function-error", "Unhandled")]);
    }
    let payload: serde_json::Value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                let body = serde_json::json!({"errorType": "InvalidRequestContentException", "message": e.to_string()});
                return json_response(
                    400,
                    body,
                    &[("x-amzn-errortype", "InvalidRequestContentException")],
                );
            }
        }
    };
    let aws = door.clients_for(region, &function, &format!("http://{host}"));
    let settings = door.deployed_settings(region).await;
    let result = match function.parse::<ephemera_functions::Function>() {
        Ok(f) => ephemera_functions::invoke(&aws, &settings, f, payload).await,
        Err(unknown) => Err(unknown),
    };
    if let Ok(v) = &result {
        door.launch_outside_if_due(region, &function, v).await;
    }
    match result {
        Ok(v) => json_response(200, v, &[("x-amz-executed-version", "$LATEST")]),
        Err(e) => {
            // As the runtime reports it (the message cut as `Diagnostic` cuts it).
            let d = lambda_runtime::Diagnostic::from(e);
            let body =
                serde_json::json!({"errorType": d.error_type, "errorMessage": d.error_message});
            json_response(
                200,
                body,
                &[
                    ("x-amz-function-error", "Unhandled"),
                    ("x-amz-executed-version", "$LATEST"),
                ],
            )
        }
    }
}

/// Sends the request on to moto as it came.
async fn forward(
    door: &FrontDoor,
    parts: &axum::http::request::Parts,
    bytes: axum::body::Bytes,
) -> reqwest::Result<reqwest::Response> {
    let url = format!(
        "{}{}",
        door.moto,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut headers = parts.headers.clone();
    for h in ["host", "content-length", "connection", "transfer-encoding"] {
        headers.remove(h);
    }
    door.http
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(bytes)
        .send()
        .await
}

async fn proxy(
    door: &FrontDoor,
    parts: axum::http::request::Parts,
    bytes: axum::body::Bytes,
) -> Response<Body> {
    match forward(door, &parts, bytes).await {
        Ok(r) => {
            let status = r.status();
            let mut out = Response::builder().status(status);
            for (k, v) in r.headers() {
                if k != "transfer-encoding" && k != "connection" {
                    out = out.header(k, v);
                }
            }
            let body = r.bytes().await.unwrap_or_default();
            out.body(Body::from(body)).unwrap()
        }
        Err(e) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .header("content-type", HeaderValue::from_static("text/plain"))
            .body(Body::from(format!("front door: moto unreachable: {e}")))
            .unwrap(),
    }
}

/// STS's AssumeRole, played by the door (`sts`): the session kept, its credentials answered.
fn assume_role(
    door: &FrontDoor,
    principal: &Principal,
    session: Option<&crate::sts::Session>,
    region: &str,
    form: &HashMap<String, String>,
) -> Response<Body> {
    let policies = door.policies_for(region);
    let answer = crate::sts::assume_role(
        &policies,
        (principal, session),
        region,
        form,
        chrono::Utc::now(),
    );
    let (status, body) = match answer {
        Ok(mut s) => {
            if let Some(&seconds) = door.session_seconds.lock().unwrap().get(region) {
                s.expires = s
                    .expires
                    .min(chrono::Utc::now() + chrono::Duration::seconds(seconds));
            }
            let key = door.sessions.mint(s.clone());
            (200, crate::sts::credentials_xml(&key, &s))
        }
        Err(r) => {
            door.denials.lock().unwrap().push(Denial {
                region: region.into(),
                principal: principal.clone(),
                action: "sts:AssumeRole".into(),
                resource: form.get("RoleArn").cloned().unwrap_or_default(),
                reason: r.message.clone(),
            });
            (r.status, crate::sts::error_xml(&r))
        }
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Body::from(body))
        .unwrap()
}

/// IAM and the fresh account, before moto sees the request: None lets it through, Some is the
/// refusal AWS would send.
async fn enforce(
    door: &FrontDoor,
    caller: Option<(&Principal, &str)>,
    session: Option<&crate::sts::Session>,
    region: &str,
    service: &str,
    parts: &axum::http::request::Parts,
    bytes: &[u8],
) -> Option<Response<Body>> {
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok());
    let wire = Wire {
        region,
        service,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or_default(),
        target,
        body: bytes,
    };
    let (action, mut checks) = requests::checks(&wire);

    // Service-linked roles: needed by the first Spot launch and the first quota request.
    let slr = match action.as_str() {
        "ec2:RunInstances" if requests::is_spot(&url_form(bytes)) => {
            Some(("spot.amazonaws.com", "AWSServiceRoleForEC2Spot"))
        }
        "servicequotas:RequestServiceQuotaIncrease" => Some((
            "servicequotas.amazonaws.com",
            "AWSServiceRoleForServiceQuotas",
        )),
        _ => None,
    };

    let (principal, access_key) = caller?;
    let userid = match session {
        Some(s) => s.userid(),
        None => principal.userid(access_key),
    };
    for c in checks.iter_mut() {
        c.context.insert("aws:userid".into(), userid.clone());
    }
    if action == "ssm:GetParameter" {
        // A parameter that does not exist has no tags: a condition on them then fails, and AWS
        // answers AccessDenied before it would say ParameterNotFound.
        for c in checks.iter_mut() {
            let name = c.resource.split(":parameter").nth(1).unwrap_or_default();
            for (k, v) in door.parameter_tags(region, name).await {
                c.context.insert(format!("ssm:resourceTag/{k}"), v);
            }
        }
    }
    if action == "ec2:TerminateInstances" {
        for c in checks.iter_mut() {
            let id = c
                .resource
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let (tags, profile) = door.instance_keys(region, &id).await;
            for (k, v) in tags {
                c.context.insert(format!("ec2:ResourceTag/{k}"), v);
            }
            // `ec2:InstanceProfile`: the ARN of the instance's profile, absent without one
            // (Service Authorization Reference, Amazon EC2, condition keys: "Filters access by
            // the ARN of the instance profile"); an absent key fails ArnEquals.
            if let Some(p) = profile {
                c.context.insert("ec2:InstanceProfile".into(), p);
            }
        }
    }
    if action == "rds:DeleteDBSnapshot" || action == "rds:DeleteDBClusterSnapshot" {
        for c in checks.iter_mut() {
            for (k, v) in door.rds_tags(region, &c.resource).await {
                c.context.insert(format!("aws:ResourceTag/{k}"), v);
            }
        }
    }
    for c in &checks {
        if let Err(reason) = door.authorize_as(principal, session, region, c) {
            return Some(access_denied(service, &reason));
        }
    }
    if let Some(reason) = door
        .task_token_key_refused(principal, region, &action, bytes)
        .await
    {
        return Some(access_denied(service, &reason));
    }
    if action == "s3:GetObject" {
        // A missing object is 404 NoSuchKey only to a caller who may list the bucket; to any
        // other, 403 AccessDenied (S3 API reference, GetObject, "Permissions").
        let path = parts.uri.path();
        let bucket = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        let mut list = Check::new("s3:ListBucket", format!("arn:aws:s3:::{bucket}"));
        list.context.insert("aws:userid".into(), userid.clone());
        if door
            .authorize_as(principal, session, region, &list)
            .is_err()
            && !door.s3_object_exists(region, path).await
        {
            return Some(access_denied(
                service,
                &format!("not authorized to perform s3:ListBucket on arn:aws:s3:::{bucket}, so a missing object is not told apart from a refused one"),
            ));
        }
    }
    if let Some((slr_service, role)) = slr {
        if let Err(reason) =
            door.ensure_service_linked_role(Some(principal), region, slr_service, role)
        {
            return Some(if service == "ec2" {
                // HTTP 403 with this code and message: seen in CloudSnorkel/cdk-github-runners#182
                // and aws/karpenter's troubleshooting guide; the role is created by the first
                // Spot request of a principal allowed to
                // (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/service-linked-roles-spot-instance-requests.html).
                ec2_error(
                    403,
                    "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
                    "The provided credentials do not have permission to create the service-linked role for EC2 Spot Instances.",
                )
            } else {
                // RequestServiceQuotaIncrease's answer without iam:CreateServiceLinkedRole
                // (remotion-dev/remotion#1941, org-formation/aws-resource-providers#75).
                json_response(
                    400,
                    serde_json::json!({"__type": "DependencyAccessDeniedException", "Message": "Service-linked role creation access denied.", "message": reason}),
                    &[("x-amzn-errortype", "DependencyAccessDeniedException")],
                )
            });
        }
    }
    None
}

/// EC2's buckets for one request (`throttle::ec2_request_bucket`, and the resource bucket of
/// calls that start or end instances, one token an instance); false when EC2 would answer
/// RequestLimitExceeded. Throttling comes before any other answer, as in EC2.
fn ec2_buckets(
    throttles: &Throttles,
    region: &str,
    action: &str,
    form: &HashMap<String, String>,
) -> bool {
    let what = format!("ec2:{action}");
    if !throttles.take_from(region, action, throttle::ec2_request_bucket(action), &what) {
        return false;
    }
    let Some(bucket) = throttle::ec2_resource_bucket(action) else {
        return true;
    };
    let instances = match action {
        "RunInstances" => form
            .get("MaxCount")
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(1.0),
        _ => form.keys().filter(|k| k.starts_with("InstanceId.")).count() as f64,
    };
    throttles.take_n(
        region,
        &format!("{action} instances"),
        bucket,
        instances,
        &format!("{what} (instances)"),
    )
}

/// Sets instance `id`'s state reason in a DescribeInstances answer.
fn replace_state_reason(xml: &mut String, id: &str, reason: &str) {
    let Some((from, to)) = instance_span(xml, id) else {
        return;
    };
    let block = &xml[from..to];
    if let (Some(open), Some(close)) = (block.find("<stateReason>"), block.find("</stateReason>")) {
        xml.replace_range(from + open..from + close + "</stateReason>".len(), reason);
    }
}

/// RDS's error body (the Query protocol's `ErrorResponse`).
fn rds_error(status: u16, code: &str, message: &str) -> Response<Body> {
    let xml = format!(
        "<ErrorResponse xmlns=\"http://rds.amazonaws.com/doc/2014-10-31/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>",
        xml_escape(message)
    );
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Body::from(xml))
        .unwrap()
}

pub(crate) fn ec2_error(status: u16, code: &str, message: &str) -> Response<Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{}</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>",
        xml_escape(message)
    );
    Response::builder()
        .status(status)
        .header("content-type", "text/xml;charset=UTF-8")
        .body(Body::from(xml))
        .unwrap()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Each service's own way of saying AccessDenied.
fn access_denied(service: &str, message: &str) -> Response<Body> {
    match service {
        "ec2" => ec2_error(
            403,
            "UnauthorizedOperation",
            &format!("You are not authorized to perform this operation. {message}"),
        ),
        "sns" => Response::builder()
            .status(403)
            .header("content-type", "text/xml")
            .body(Body::from(format!(
                "<ErrorResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><Error><Type>Sender</Type><Code>AuthorizationError</Code><Message>{}</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>",
                xml_escape(message)
            )))
            .unwrap(),
        "s3" => Response::builder()
            .status(403)
            .header("content-type", "application/xml")
            .body(Body::from(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>{}</Message><RequestId>0</RequestId></Error>",
                xml_escape(message)
            )))
            .unwrap(),
        "lambda" => json_response(
            403,
            serde_json::json!({"Type": "User", "Message": message, "message": message}),
            &[("x-amzn-errortype", "AccessDeniedException")],
        ),
        _ => json_response(
            400,
            serde_json::json!({"__type": "AccessDeniedException", "message": message, "Message": message}),
            &[("x-amzn-errortype", "AccessDeniedException")],
        ),
    }
}

impl FrontDoor {
    /// A query-protocol call straight to moto as the administrator (the harness's own moves:
    /// deploying the worker's identity, reading tags, Spot's termination).
    async fn moto_query(
        &self,
        region: &str,
        service: &str,
        form: &str,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{}/", self.moto))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/{service}/aws4_request, SignedHeaders=host, Signature=0"),
            )
            .body(form.to_string())
            .send()
            .await
    }

    /// A JSON-protocol call to moto as the administrator (`x-amz-target` names the operation,
    /// e.g. `AmazonSSM.DescribeParameters`): its answer's body, or None when moto could not be
    /// reached or answered no JSON.
    async fn moto_json(
        &self,
        region: &str,
        service: &str,
        target: &str,
        body: serde_json::Value,
    ) -> Option<serde_json::Value> {
        // Step Functions and DynamoDB speak JSON 1.0, Systems Manager 1.1.
        let version = if service == "ssm" { "1.1" } else { "1.0" };
        let resp = self
            .http
            .post(format!("{}/", self.moto))
            .header("content-type", format!("application/x-amz-json-{version}"))
            .header("x-amz-target", target)
            .header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/{service}/aws4_request, SignedHeaders=host, Signature=0"),
            )
            .body(body.to_string())
            .send()
            .await
            .ok()?;
        serde_json::from_str(&resp.text().await.ok()?).ok()
    }

    /// Spot takes an instance back as on AWS: first the interruption notice (IMDS
    /// `spot/instance-action`, here `spot_notice`), then, when the notice period has passed, EC2
    /// terminates it with state reason `Server.SpotInstanceTermination`
    /// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html:
    /// two minutes on AWS, scaled down by the caller).
    pub fn reclaim_spot(self: &Arc<Self>, region: &str, instance: &str, notice: Duration) {
        let key = (region.to_string(), instance.to_string());
        self.spot_notices
            .lock()
            .unwrap()
            .insert(key.clone(), chrono::Utc::now());
        let door = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(notice).await;
            door.spot_reclaimed.lock().unwrap().insert(key.clone());
            let _ = door
                .moto_query(
                    &key.0,
                    "ec2",
                    &format!(
                        "Action=TerminateInstances&Version=2016-11-15&InstanceId.1={}",
                        key.1
                    ),
                )
                .await;
        });
    }

    /// When the instance was given Spot's interruption notice, if it was.
    pub fn spot_notice(
        &self,
        region: &str,
        instance: &str,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.spot_notices
            .lock()
            .unwrap()
            .get(&(region.to_string(), instance.to_string()))
            .copied()
    }

    /// The account's default EBS key in `region`.
    pub fn ebs_default_key(&self, region: &str) -> String {
        self.ebs_default_key
            .lock()
            .unwrap()
            .get(region)
            .cloned()
            .unwrap_or_else(|| format!("arn:aws:kms:{region}:{ACCOUNT}:alias/aws/ebs"))
    }

    /// Whether EC2 would find the launching principal unable to use the root volume's
    /// customer managed key (the request's KmsKeyId, else the account's default): it needs
    /// kms:CreateGrant and the data-key actions through EC2
    /// (https://docs.aws.amazon.com/ebs/latest/userguide/ebs-encryption-requirements.html).
    fn kms_key_refused(
        &self,
        principal: Option<&Principal>,
        region: &str,
        form: &HashMap<String, String>,
    ) -> bool {
        let Some(principal) = principal else {
            return false; // the administrator
        };
        let key = form
            .get("BlockDeviceMapping.1.Ebs.KmsKeyId")
            .cloned()
            .unwrap_or_else(|| self.ebs_default_key(region));
        if key.ends_with("alias/aws/ebs") {
            return false; // AWS's own key: no grant to make
        }
        [
            "kms:CreateGrant",
            "kms:GenerateDataKeyWithoutPlaintext",
            "kms:Decrypt",
        ]
        .iter()
        .any(|action| {
            let check = Check::new(action, key.clone())
                .with("kms:ViaService", format!("ec2.{region}.amazonaws.com"));
            self.authorize(principal, region, &check).is_err()
        })
    }

    /// EC2 accepts the launch, then the instance goes from pending to terminated with
    /// `Client.InternalError` (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/troubleshooting-launch.html).
    async fn terminate_at_launch(&self, region: &str, ids: &[String]) {
        for id in ids {
            self.kms_refused
                .lock()
                .unwrap()
                .insert((region.to_string(), id.clone()));
            let _ = self
                .moto_query(
                    region,
                    "ec2",
                    &format!("Action=TerminateInstances&Version=2016-11-15&InstanceId.1={id}"),
                )
                .await;
        }
    }

    /// moto's DescribeInstances answer with Spot's state reason on the instances Spot took, and
    /// EC2's on those it terminated at launch.
    fn with_spot_reasons(&self, region: &str, mut xml: String) -> String {
        let refused: Vec<String> = self
            .kms_refused
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == region)
            .map(|(_, i)| i.clone())
            .collect();
        for id in refused {
            replace_state_reason(
                &mut xml,
                &id,
                "<stateReason><code>Client.InternalError</code><message>Client.InternalError: Client error on launch</message></stateReason>",
            );
        }
        let reclaimed: Vec<String> = self
            .spot_reclaimed
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == region)
            .map(|(_, i)| i.clone())
            .collect();
        for id in reclaimed {
            replace_state_reason(
                &mut xml,
                &id,
                "<stateReason><code>Server.SpotInstanceTermination</code><message>Server.SpotInstanceTermination: Spot instance termination</message></stateReason>",
            );
        }
        xml
    }

    /// `form` with its `ImageId=resolve:ssm:<name>` replaced by the parameter's value, and the
    /// request's body so rewritten; None when the image is an id, or the parameter does not
    /// exist (left to moto).
    async fn resolve_ssm_image(
        &self,
        region: &str,
        form: &HashMap<String, String>,
    ) -> Option<(HashMap<String, String>, axum::body::Bytes)> {
        let name = form.get("ImageId")?.strip_prefix("resolve:ssm:")?;
        let answer = self
            .moto_json(
                region,
                "ssm",
                "AmazonSSM.GetParameter",
                serde_json::json!({ "Name": name }),
            )
            .await?;
        let ami = answer["Parameter"]["Value"].as_str()?.to_string();
        let mut resolved = form.clone();
        resolved.insert("ImageId".into(), ami);
        let body = resolved
            .iter()
            .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        Some((resolved, axum::body::Bytes::from(body)))
    }

    /// moto launches a root volume of any size; EC2 refuses one smaller than the image's root
    /// snapshot ("The specified size must be greater than or equal to the size of the specified
    /// snapshot", https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/block-device-mapping-concepts.html)
    /// at once, as `InvalidBlockDeviceMapping` with this message (as users report it, e.g.
    /// https://github.com/aws/karpenter-provider-aws/issues/3302).
    async fn smaller_than_snapshot(
        &self,
        region: &str,
        form: &HashMap<String, String>,
    ) -> Option<Response<Body>> {
        let image = form.get("ImageId")?;
        let asked: u32 = form
            .get("BlockDeviceMapping.1.Ebs.VolumeSize")?
            .parse()
            .ok()?;
        let key = (region.to_string(), image.clone());
        let cached = self.image_snapshot_gib.lock().unwrap().get(&key).cloned();
        let least = match cached {
            Some(v) => v,
            None => {
                let body = format!("Action=DescribeImages&Version=2016-11-15&ImageId.1={image}");
                let xml = self
                    .moto_query(region, "ec2", &body)
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                let field = |name: &str| {
                    xml.split(&format!("<{name}>"))
                        .nth(1)
                        .and_then(|r| r.split(&format!("</{name}>")).next())
                        .map(|v| v.trim().to_string())
                };
                let size = field("volumeSize")
                    .and_then(|v| v.parse().ok())
                    .map(|gib| (gib, field("snapshotId").unwrap_or_default()));
                self.image_snapshot_gib
                    .lock()
                    .unwrap()
                    .insert(key, size.clone());
                size
            }
        }?;
        let (least, snapshot) = least;
        (asked < least).then(|| {
            ec2_error(
                400,
                "InvalidBlockDeviceMapping",
                &format!(
                    "Volume of size {asked}GB is smaller than  snapshot '{snapshot}', expect size >= {least}GB"
                ),
            )
        })
    }

    /// The worker's role and instance profile, as the template deploys them (IAM is global, so
    /// once per moto): RunInstances refuses a profile that does not exist.
    async fn deploy_worker_identity(&self) {
        let trust = urlencoding::encode(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        );
        let role = format!("{}-worker-role", crate::iam::STACK);
        let profile = crate::iam::WORKER_PROFILE;
        for body in [
            format!("Action=CreateRole&Version=2010-05-08&RoleName={role}&AssumeRolePolicyDocument={trust}"),
            format!("Action=CreateInstanceProfile&Version=2010-05-08&InstanceProfileName={profile}"),
            format!("Action=AddRoleToInstanceProfile&Version=2010-05-08&InstanceProfileName={profile}&RoleName={role}"),
        ] {
            // moto loads its IAM backend on the first IAM call, which under load can fail or
            // come late: tried again for a while; "already exists" means an earlier try landed.
            let mut last = String::new();
            let mut done = false;
            for _ in 0..40 {
                match self.moto_query("us-east-1", "iam", &body).await {
                    Ok(r) if r.status().is_success() => done = true,
                    Ok(r) => {
                        last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default());
                        done = last.contains("EntityAlreadyExists") || last.contains("LimitExceeded");
                    }
                    Err(e) => last = e.to_string(),
                }
                if done {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            assert!(
                done,
                "the harness could not create the worker's role and profile in moto: {last}"
            );
        }
    }

    /// Tests: the sessions STS mints in `region` from now on last `seconds` at most (their
    /// answer says so, and their keys are refused as expired after it), as if the hour role
    /// chaining allows had passed that fast.
    pub fn sessions_last(&self, region: &str, seconds: i64) {
        self.session_seconds
            .lock()
            .unwrap()
            .insert(region.to_string(), seconds);
    }

    /// The functions' settings as the template deploys them (the stack's topic, buckets, ledger,
    /// worker role and profile), the ledger table made: what every invocation gets, through the
    /// state machine or an EventBridge rule.
    pub async fn deployed_settings(&self, region: &str) -> ephemera_functions::Settings {
        // As the template deploys them: the stack's report topic is the default and the only one.
        let mut settings = self.settings.lock().unwrap().clone();
        let topic = format!(
            "arn:aws:sns:{region}:{ACCOUNT}:{}",
            crate::iam::REPORT_TOPIC
        );
        settings.default_topic.get_or_insert(topic.clone());
        if settings.allowed_topics.is_empty() {
            settings.allowed_topics = vec![topic];
        }
        settings
            .artifact_bucket
            .get_or_insert(crate::iam::ARTIFACT_BUCKET.to_string());
        settings
            .export_bucket
            .get_or_insert(crate::iam::EXPORT_BUCKET.to_string());
        settings
            .worker_role_id
            .get_or_insert(crate::iam::WORKER_ROLE_ID.to_string());
        settings
            .ledger_table
            .get_or_insert(crate::iam::LEDGER_TABLE.to_string());
        settings
            .secret_prefix
            .get_or_insert(crate::iam::SECRET_PREFIX.to_string());
        settings
            .worker_log_group
            .get_or_insert_with(crate::iam::worker_log_group);
        // Every function's environment names the stack's worker profile and the stack
        // (template.yaml, Globals): instances are launched with it, and only those are terminated.
        settings
            .worker_instance_profile
            .get_or_insert_with(|| crate::iam::WORKER_PROFILE.to_string());
        settings
            .stack
            .get_or_insert_with(|| crate::iam::STACK.to_string());
        // launch-worker's own environment: the run role and the key its sessions are sealed
        // under (template.yaml, LaunchWorkerFunction).
        settings
            .run_role_arn
            .get_or_insert_with(crate::iam::run_role_arn);
        settings
            .task_token_key
            .get_or_insert_with(|| crate::iam::task_token_key(region));
        if settings.monthly_budget_usd == 0.0 {
            settings.monthly_budget_usd = crate::iam::MONTHLY_BUDGET_USD;
        }
        // AWS_LAMBDA_FUNCTION_MEMORY_SIZE, which Lambda sets from the template's MemorySize:
        // without it terminate-with-cost-report would price the invocations at 0 MB.
        if settings.lambda_memory_mb == 0 {
            settings.lambda_memory_mb = crate::iam::lambda_memory_mb();
        }
        self.ensure_ledger(region).await;
        settings
    }

    /// The ledger table of template.yaml (`LedgerTable`), in `region`.
    pub async fn ensure_ledger(&self, region: &str) {
        if self.ledgers.lock().unwrap().contains(region) {
            return;
        }
        let table = serde_json::json!({
            "TableName": crate::iam::LEDGER_TABLE,
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [
                {"AttributeName": "execution", "AttributeType": "S"},
                {"AttributeName": "month", "AttributeType": "S"}
            ],
            "KeySchema": [{"AttributeName": "execution", "KeyType": "HASH"}],
            "GlobalSecondaryIndexes": [{
                "IndexName": "by-month",
                "KeySchema": [{"AttributeName": "month", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"}
            }]
        });
        let created = self
            .http
            .post(format!("{}/", self.moto))
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amz-target", "DynamoDB_20120810.CreateTable")
            .header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/dynamodb/aws4_request, SignedHeaders=host, Signature=0"),
            )
            .body(table.to_string())
            .send()
            .await;
        // Created now, or by a call that raced this one (ResourceInUseException).
        if created.is_ok() {
            self.ledgers.lock().unwrap().insert(region.to_string());
        }
    }

    /// Parameter Store calls KMS as the caller: writing a SecureString under a customer
    /// managed key needs `kms:Encrypt` on it, reading one decrypted `kms:Decrypt`, each with
    /// `kms:ViaService` and the parameter's ARN as the `PARAMETER_ARN` encryption context
    /// (https://docs.aws.amazon.com/kms/latest/developerguide/services-parameter-store.html).
    /// moto checks neither; the stack's task-token key's policy is played here. The account's
    /// `aws/ssm` key admits every principal of the account, so nothing is checked for it.
    async fn task_token_key_refused(
        &self,
        principal: &Principal,
        region: &str,
        action: &str,
        bytes: &[u8],
    ) -> Option<String> {
        let input: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        let key = crate::iam::task_token_key(region);
        let (use_, names): (&str, Vec<String>) = match action {
            "ssm:PutParameter"
                if input["Type"] == "SecureString" && input["KeyId"].as_str() == Some(&key) =>
            {
                ("kms:Encrypt", vec![input["Name"].as_str()?.to_string()])
            }
            "ssm:GetParameter" if input["WithDecryption"] == true => {
                ("kms:Decrypt", vec![input["Name"].as_str()?.to_string()])
            }
            "ssm:GetParameters" if input["WithDecryption"] == true => (
                "kms:Decrypt",
                input["Names"]
                    .as_array()?
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => return None,
        };
        for name in names {
            if use_ == "kms:Decrypt"
                && self.parameter_key(region, &name).await.as_deref() != Some(&key)
            {
                continue;
            }
            let name = if name.starts_with('/') {
                name
            } else {
                format!("/{name}")
            };
            let check = Check::new(use_, key.clone())
                .with("kms:ViaService", format!("ssm.{region}.amazonaws.com"))
                .with(
                    "kms:EncryptionContext:PARAMETER_ARN",
                    format!("arn:aws:ssm:{region}:{ACCOUNT}:parameter{name}"),
                );
            let policies = match self.policies_in.lock().unwrap().get(region) {
                Some(p) => p.clone(),
                None => self.policies.clone(),
            };
            if let Err(reason) = policies.authorize_key("TaskTokenKey", principal, region, &check) {
                return Some(reason);
            }
        }
        None
    }

    /// The key a SecureString parameter is encrypted under (moto keeps the request's KeyId).
    async fn parameter_key(&self, region: &str, name: &str) -> Option<String> {
        let filter = serde_json::json!([{"Key": "Name", "Option": "Equals", "Values": [name]}]);
        let body = self
            .moto_json(
                region,
                "ssm",
                "AmazonSSM.DescribeParameters",
                serde_json::json!({ "ParameterFilters": filter }),
            )
            .await?;
        body["Parameters"][0]["KeyId"].as_str().map(str::to_string)
    }

    /// A parameter's tags as moto keeps them; none when it does not exist.
    async fn parameter_tags(&self, region: &str, name: &str) -> Vec<(String, String)> {
        let body = self
            .moto_json(
                region,
                "ssm",
                "AmazonSSM.ListTagsForResource",
                serde_json::json!({"ResourceType": "Parameter", "ResourceId": name}),
            )
            .await
            .unwrap_or_default();
        body["TagList"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| Some((t["Key"].as_str()?.into(), t["Value"].as_str()?.into())))
            .collect()
    }

    /// The first fault rule matching this EC2 or RDS request, counted as fired.
    fn fire_fault(
        &self,
        region: &str,
        action: &str,
        form: &HashMap<String, String>,
    ) -> Option<FaultRule> {
        let fired = {
            let mut faults = self.faults.lock().unwrap();
            let hit = faults.iter_mut().find(|f| {
                f.region == region
                    && f.action == action
                    && f.remaining != Some(0)
                    && f.when.iter().all(|(k, v)| form.get(k) == Some(v))
            });
            hit.map(|f| {
                if let Some(n) = f.remaining.as_mut() {
                    *n -= 1;
                }
                f.clone()
            })
        }?;
        self.faults_fired.lock().unwrap().push((
            region.to_string(),
            action.to_string(),
            fired.code.clone(),
        ));
        Some(fired)
    }

    /// An RDS resource's tags as moto holds them (for `aws:ResourceTag/…` on a delete).
    async fn rds_tags(&self, region: &str, arn: &str) -> Vec<(String, String)> {
        let body = format!(
            "Action=ListTagsForResource&Version=2014-10-31&ResourceName={}",
            urlencoding::encode(arn)
        );
        let Ok(resp) = self.moto_query(region, "rds", &body).await else {
            return vec![];
        };
        let text = resp.text().await.unwrap_or_default();
        text.split("<Tag>")
            .skip(1)
            .filter_map(|tag| {
                let key = tag.split("<Key>").nth(1)?.split("</Key>").next()?;
                let value = tag.split("<Value>").nth(1)?.split("</Value>").next()?;
                Some((key.to_string(), value.to_string()))
            })
            .collect()
    }

    /// Whether `path` (`/bucket/key`) names an object moto holds.
    async fn s3_object_exists(&self, region: &str, path: &str) -> bool {
        self.http
            .head(format!("{}{path}", self.moto))
            .header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/s3/aws4_request, SignedHeaders=host, Signature=0"),
            )
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// An instance's tags and its instance profile's ARN, as moto holds them (for
    /// TerminateInstances' `ec2:ResourceTag/…` and `ec2:InstanceProfile` conditions).
    async fn instance_keys(
        &self,
        region: &str,
        id: &str,
    ) -> (Vec<(String, String)>, Option<String>) {
        let body = format!("Action=DescribeInstances&Version=2016-11-15&InstanceId.1={id}");
        let Ok(resp) = self.moto_query(region, "ec2", &body).await else {
            return (vec![], None);
        };
        let text = resp.text().await.unwrap_or_default();
        let profile = text
            .split("<iamInstanceProfile>")
            .nth(1)
            .and_then(|p| p.split("</iamInstanceProfile>").next())
            .and_then(|p| p.split("<arn>").nth(1))
            .and_then(|a| a.split("</arn>").next())
            .map(str::to_string);
        let Some(set) = text.split("<tagSet>").nth(1) else {
            return (vec![], profile);
        };
        let set = set.split("</tagSet>").next().unwrap_or_default();
        let tags = set
            .split("<item>")
            .filter_map(|item| {
                let key = item.split("<key>").nth(1)?.split("</key>").next()?;
                let value = item.split("<value>").nth(1)?.split("</value>").next()?;
                Some((key.to_string(), value.to_string()))
            })
            .collect();
        (tags, profile)
    }
}

/// The span of the `<instancesSet>` item that holds `<instanceId>id</instanceId>` (items nest:
/// tags, volumes and interfaces are items too, so depth is counted).
fn instance_span(xml: &str, id: &str) -> Option<(usize, usize)> {
    let needle = format!("<instanceId>{id}</instanceId>");
    let mut search = 0;
    while let Some(set) = xml[search..].find("<instancesSet>").map(|i| i + search) {
        let mut pos = set;
        let mut depth = 0usize;
        let mut start = 0;
        loop {
            let open = xml[pos..].find("<item>").map(|i| i + pos);
            let close = xml[pos..].find("</item>").map(|i| i + pos);
            let end_set = xml[pos..].find("</instancesSet>").map(|i| i + pos);
            match (open, close) {
                (Some(o), Some(c)) if o < c && end_set.is_none_or(|e| o < e) => {
                    if depth == 0 {
                        start = o;
                    }
                    depth += 1;
                    pos = o + "<item>".len();
                }
                (_, Some(c)) if depth > 0 => {
                    depth -= 1;
                    pos = c + "</item>".len();
                    if depth == 0 && xml[start..pos].contains(&needle) {
                        return Some((start, pos));
                    }
                }
                _ => break,
            }
        }
        search = pos.max(set + 1);
    }
    None
}

//! The front door: one local endpoint that routes by the SigV4 credential scope's service.
//!
//! Every request the functions, the CLI, the worker and the tests make comes here before moto:
//! the door tells the principal from the request's access key, enforces the template's IAM, plays
//! what moto does not, and hands the rest to moto as it came. This file keeps the door's state,
//! the routing (`route`), the faults a test stages, and the ways to moto; what the door plays of
//! each service lives in its own file:
//!
//! - `access`: IAM and STS (every request checked against the template's policies, service-linked
//!   roles, AssumeRole's sessions), and each service's own AccessDenied;
//! - `ec2`: EC2 as a new account answers (eventual consistency, unoffered types, idempotent and
//!   checked launches, the vCPU quotas, the EBS key, request-rate buckets);
//! - `spot`: Spot's price history, placement scores and interruptions;
//! - `lambda`: Invoke, running the handlers in process, with staged crashes and timeouts;
//! - `states`: Step Functions' StopExecution at once, and the stack's rule on stopped executions;
//! - `s3`: checksums and conflicting conditional writes;
//! - `ssm`: Parameter Store's use of the task-token key, and parameters' tags;
//! - `rds`: snapshots that take time, RDS's errors and tags;
//! - `stack`: what deploying template.yaml would have made (the worker's identity, the functions'
//!   settings, the ledger table).
//!
//! Throttling (`crate::throttle`), the Price List (`crate::price_list`), Service Quotas
//! (`crate::quotas`) and DynamoDB's writes one at a time are answered from `route` itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode};
use axum::Router;
use ephemera_functions::{Aws, Settings};

use crate::iam::{Policies, Principal};
use crate::price_list;
use crate::quotas::QuotaStandIn;
use crate::requests::url_form;
use crate::throttle::{self, Throttles};
use crate::vcpu_limits::VcpuLimits;

mod access;
mod ec2;
mod lambda;
mod rds;
mod s3;
mod spot;
mod ssm;
mod stack;
mod states;

use access::{access_denied, assume_role, enforce};
pub(crate) use ec2::ec2_error;
use ec2::{ec2_buckets, fresh_account_ec2, RootSnapshot};
use lambda::{invoke_lambda, Crash, OutsideLaunch};
use rds::{rds_error, snapshot_takes_time};
use s3::{s3_bad_digest, s3_error};
use states::{deliver_stop, stop_is_at_once, Stopped};

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
    /// Region → how long a terminated instance stays visible (`terminated_vanish_after`).
    vanish_after: Mutex<HashMap<String, std::time::Duration>>,
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
            vanish_after: Mutex::default(),
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

    pub fn add_fault(&self, rule: FaultRule) {
        self.faults.lock().unwrap().push(rule);
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

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

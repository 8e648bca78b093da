//! The front door: one local endpoint that routes by the SigV4 credential scope's service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode};
use axum::Router;
use ephemera_functions::{Aws, Settings};

use crate::quotas::QuotaStandIn;

/// An EC2 request answered with an EC2 error instead of reaching moto.
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

/// A Lambda that fails as a crashed runtime does (Runtime.ExitError), a given number of times.
#[derive(Debug, Clone)]
pub struct Crash {
    pub region: String,
    pub function: String,
    pub remaining: u32,
}

pub struct FrontDoor {
    moto: String,
    http: reqwest::Client,
    faults: Mutex<Vec<FaultRule>>,
    crashes: Mutex<Vec<Crash>>,
    pub quotas: Mutex<HashMap<String, QuotaStandIn>>,
    clients: Mutex<HashMap<String, Aws>>,
    /// (region, function) of every Lambda invocation served.
    pub invocations: Mutex<Vec<(String, String)>>,
    /// (region, action, code) of every fault answered.
    pub faults_fired: Mutex<Vec<(String, String, String)>>,
    pub settings: Mutex<Settings>,
    endpoint: Mutex<Option<String>>,
}

impl FrontDoor {
    pub fn new(moto: String) -> FrontDoor {
        FrontDoor {
            moto,
            http: reqwest::Client::new(),
            faults: Mutex::default(),
            crashes: Mutex::default(),
            quotas: Mutex::default(),
            clients: Mutex::default(),
            invocations: Mutex::default(),
            faults_fired: Mutex::default(),
            settings: Mutex::default(),
            endpoint: Mutex::default(),
        }
    }

    pub fn add_fault(&self, rule: FaultRule) {
        self.faults.lock().unwrap().push(rule);
    }

    pub fn add_crash(&self, region: &str, function: &str, times: u32) {
        self.crashes.lock().unwrap().push(Crash {
            region: region.into(),
            function: function.into(),
            remaining: times,
        });
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
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("moto server did not answer within 60 s");
    }

    fn clients_for(&self, region: &str, endpoint: &str) -> Aws {
        self.clients
            .lock()
            .unwrap()
            .entry(region.to_string())
            .or_insert_with(|| {
                let conf = aws_config::SdkConfig::builder()
                    .behavior_version(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region.to_string()))
                    .endpoint_url(endpoint)
                    .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
                        aws_sdk_ec2::config::Credentials::new(
                            "testing", "testing", None, None, "harness",
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

/// `Credential=AKID/20260101/us-east-1/ec2/aws4_request` → ("us-east-1", "ec2").
fn scope(headers: &HeaderMap) -> (String, String) {
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
        (parts[2].to_string(), parts[3].to_string())
    } else {
        ("us-east-1".into(), String::new())
    }
}

fn json_response(status: u16, body: serde_json::Value, extra: &[(&str, &str)]) -> Response<Body> {
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    r.body(Body::from(body.to_string())).unwrap()
}

async fn route(State(door): State<Arc<FrontDoor>>, req: Request) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, 64 << 20).await.unwrap_or_default();
    let (region, service) = scope(&parts.headers);
    let path = parts.uri.path().to_string();

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
        let target = parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let op = target.rsplit('.').next().unwrap_or_default().to_string();
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
        let fired = {
            let mut faults = door.faults.lock().unwrap();
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
        };
        if let Some(f) = fired {
            door.faults_fired.lock().unwrap().push((
                region.clone(),
                action.clone(),
                f.code.clone(),
            ));
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>",
                f.code, f.message
            );
            return Response::builder()
                .status(f.status)
                .header("content-type", "text/xml;charset=UTF-8")
                .body(Body::from(xml))
                .unwrap();
        }
    }
    proxy(&door, parts, bytes).await
}

fn url_form(bytes: &[u8]) -> HashMap<String, String> {
    let s = String::from_utf8_lossy(bytes);
    s.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let dec = |x: &str| {
                urlencoding::decode(&x.replace('+', " "))
                    .map(|c| c.into_owned())
                    .unwrap_or_default()
            };
            Some((dec(k), dec(v)))
        })
        .collect()
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
    let function = ephemera_functions::FUNCTIONS
        .iter()
        .find(|f| name == **f || name.contains(*f))
        .map(|f| f.to_string())
        .unwrap_or(name);
    door.invocations
        .lock()
        .unwrap()
        .push((region.to_string(), function.clone()));
    let crash = {
        let mut crashes = door.crashes.lock().unwrap();
        crashes
            .iter_mut()
            .find(|c| c.region == region && c.function == function && c.remaining > 0)
            .map(|c| c.remaining -= 1)
            .is_some()
    };
    if crash {
        let body = serde_json::json!({
            "errorType": "Runtime.ExitError",
            "errorMessage": format!("RequestId: harness Error: Runtime exited with error: signal: aborted ({function} crashed, injected)")
        });
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
    let aws = door.clients_for(region, &format!("http://{host}"));
    let settings = door.settings.lock().unwrap().clone();
    match ephemera_functions::invoke(&aws, &settings, &function, payload).await {
        Ok(v) => json_response(200, v, &[("x-amz-executed-version", "$LATEST")]),
        Err(e) => {
            let body =
                serde_json::json!({"errorType": e.error_type(), "errorMessage": e.to_string()});
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

async fn proxy(
    door: &FrontDoor,
    parts: axum::http::request::Parts,
    bytes: axum::body::Bytes,
) -> Response<Body> {
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
    let resp = door
        .http
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(bytes)
        .send()
        .await;
    match resp {
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

//! Cold starts of the Lambda bootstraps, timed on this machine (`make lambdas`).
//!
//! Each start spawns the bootstrap as Lambda does (a fresh process, its runtime API in
//! `AWS_LAMBDA_RUNTIME_API`) against a local runtime API served here, and times two moments from
//! the spawn: **init**, when it first asks for an event (`GET …/invocation/next`, what Lambda
//! reports as Init Duration), and **first answer**, when it posts its answer to that event.
//!
//! The event is `{}`: every function answers it without the network. Those that read their
//! input refuse it (`Ephemera.BadInput`); those that do not (the sweeper) make their first
//! AWS call, which this same server answers `AccessDenied` (not retried by the SDK), so the
//! answer includes building, signing and sending a first request but no TLS or AWS latency.
//! Both the dispatcher that linked every handler and the per-function bootstraps get the same.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Notify;

/// What one start measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    /// Spawn → first `GET /next`.
    pub init: Duration,
    /// Spawn → the answer to the first event.
    pub answer: Duration,
    /// The answer was an error (its `errorType`), or a response (`None`).
    pub error_type: Option<String>,
    /// AWS requests the function sent before it answered.
    pub aws_calls: u32,
    /// The process's peak resident memory when it answered (VmHWM), in KiB.
    pub peak_rss_kib: u64,
}

/// Median, fastest and slowest of a set of durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: Duration,
    pub min: Duration,
    pub max: Duration,
}

impl Spread {
    /// None for no samples. The median of an even count is the mean of the middle two.
    pub fn of(samples: &[Duration]) -> Option<Spread> {
        let mut s = samples.to_vec();
        s.sort();
        let n = s.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => s[n / 2],
            _ => (s[n / 2 - 1] + s[n / 2]) / 2,
        };
        Some(Spread {
            median,
            min: s[0],
            max: s[n - 1],
        })
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "{:.1} ms ({:.1}–{:.1})",
            ms(self.median),
            ms(self.min),
            ms(self.max)
        )
    }
}

/// The state of the start under way, shared with the server's handlers.
#[derive(Default)]
struct Current {
    /// The event served to the start (`{}` when empty).
    event: String,
    spawned: Option<Instant>,
    init: Option<Duration>,
    answer: Option<(Duration, Option<String>)>,
    aws_calls: u32,
}

#[derive(Clone)]
struct Server {
    current: Arc<Mutex<Current>>,
    answered: Arc<Notify>,
}

const REQUEST_ID: &str = "00000000-0000-4000-8000-00000000c01d";

async fn next(State(s): State<Server>) -> Response {
    let first = {
        let mut c = s.current.lock().unwrap();
        match (c.spawned, c.init) {
            (Some(t0), None) => {
                c.init = Some(t0.elapsed());
                true
            }
            _ => false,
        }
    };
    if !first {
        // One event per start: a second poll waits until the process is killed.
        std::future::pending::<()>().await;
    }
    let deadline = chrono::Utc::now().timestamp_millis() + 60_000;
    let event = match std::mem::take(&mut s.current.lock().unwrap().event) {
        e if e.is_empty() => "{}".to_string(),
        e => e,
    };
    (
        [
            ("lambda-runtime-aws-request-id", REQUEST_ID.to_string()),
            ("lambda-runtime-deadline-ms", deadline.to_string()),
            (
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:coldstart".to_string(),
            ),
            (
                "lambda-runtime-trace-id",
                "Root=1-00000000-000000000000000000000000;Sampled=0".to_string(),
            ),
            (
                header::CONTENT_TYPE.as_str(),
                "application/json".to_string(),
            ),
        ],
        event,
    )
        .into_response()
}

fn answered(s: &Server, error_type: Option<String>) -> StatusCode {
    let mut c = s.current.lock().unwrap();
    if let (Some(t0), None) = (c.spawned, &c.answer) {
        c.answer = Some((t0.elapsed(), error_type));
        s.answered.notify_one();
    }
    StatusCode::ACCEPTED
}

async fn response(State(s): State<Server>, UrlPath(_id): UrlPath<String>) -> StatusCode {
    answered(&s, None)
}

async fn error(State(s): State<Server>, UrlPath(_id): UrlPath<String>, body: Bytes) -> StatusCode {
    let kind = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["errorType"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unreadable error".into());
    answered(&s, Some(kind))
}

async fn init_error(State(s): State<Server>, body: Bytes) -> StatusCode {
    let text = String::from_utf8_lossy(&body);
    answered(&s, Some(format!("init error: {text}")))
}

/// Any other request is an AWS call (AWS_ENDPOINT_URL points here): refused as AWS refuses a
/// call the role may not make, in the body its protocol reads, so that the SDK does not retry.
async fn aws(State(s): State<Server>, headers: HeaderMap) -> Response {
    s.current.lock().unwrap().aws_calls += 1;
    let (content_type, body) = denial(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
    (
        StatusCode::FORBIDDEN,
        [
            (header::CONTENT_TYPE.as_str(), content_type),
            ("x-amzn-errortype", "AccessDeniedException"),
            ("x-amzn-requestid", REQUEST_ID),
        ],
        body,
    )
        .into_response()
}

/// The AccessDenied body for a request of this content type: JSON for the awsJson protocols
/// (Step Functions, DynamoDB, Service Quotas, …), XML for the query ones (EC2, SNS, RDS) and S3.
pub fn denial(request_content_type: &str) -> (&'static str, &'static str) {
    if request_content_type.starts_with("application/x-amz-json") {
        (
            "application/x-amz-json-1.0",
            r#"{"__type":"AccessDeniedException","message":"denied by the cold-start timer"}"#,
        )
    } else if request_content_type.starts_with("application/x-www-form-urlencoded") {
        (
            "text/xml",
            "<Response><Errors><Error><Code>UnauthorizedOperation</Code>\
             <Message>denied by the cold-start timer</Message></Error></Errors>\
             <RequestID>00000000-0000-4000-8000-00000000c01d</RequestID></Response>",
        )
    } else {
        (
            "application/xml",
            "<Error><Code>AccessDenied</Code><Message>denied by the cold-start timer</Message></Error>",
        )
    }
}

/// A local Lambda runtime API (and stand-in AWS endpoint) that times starts of bootstraps.
pub struct Timer {
    server: Server,
    address: String,
}

impl Timer {
    pub async fn start() -> std::io::Result<Timer> {
        let server = Server {
            current: Arc::default(),
            answered: Arc::default(),
        };
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .fallback(aws)
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Timer { server, address })
    }

    /// One cold start of `bootstrap`: spawned, served `{}`, killed once it answered (or after
    /// `limit`, an error naming what it did not do).
    pub async fn time(&self, bootstrap: &Path, limit: Duration) -> Result<Start, String> {
        self.invoke(bootstrap, "{}", limit)
            .await
            .map(|(start, _)| start)
    }

    /// One start of `bootstrap` served `event`: how it went, and what it wrote to standard
    /// output (its logs, and the metrics it sends in the embedded metric format).
    pub async fn invoke(
        &self,
        bootstrap: &Path,
        event: &str,
        limit: Duration,
    ) -> Result<(Start, String), String> {
        *self.server.current.lock().unwrap() = Current {
            event: event.to_string(),
            ..Current::default()
        };
        // A bare name would be looked up on PATH, not in the current directory.
        let bootstrap =
            &std::path::absolute(bootstrap).map_err(|e| format!("{}: {e}", bootstrap.display()))?;
        let mut cmd = tokio::process::Command::new(bootstrap);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("AWS_LAMBDA_RUNTIME_API", &self.address)
            .env("AWS_LAMBDA_FUNCTION_NAME", "coldstart")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/coldstart")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "coldstart")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "AKIACOLDSTART0000000")
            .env("AWS_SECRET_ACCESS_KEY", "coldstart")
            .env("AWS_SESSION_TOKEN", "coldstart")
            .env("AWS_ENDPOINT_URL", format!("http://{}", self.address))
            .env(
                "EPHEMERA_TOPIC_ARN",
                "arn:aws:sns:us-east-1:123456789012:ephemera-reports",
            )
            .env("EPHEMERA_WORKER_PROFILE", "ephemera-worker")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let answered = self.server.answered.notified();
        tokio::pin!(answered);
        answered.as_mut().enable();
        let t0 = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", bootstrap.display()))?;
        self.server.current.lock().unwrap().spawned = Some(t0);
        // Read as it comes, so that a full pipe never blocks the bootstrap.
        let stdout = child.stdout.take().map(|mut out| {
            tokio::spawn(async move {
                let mut text = String::new();
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut out, &mut text).await;
                text
            })
        });
        let outcome = tokio::select! {
            _ = &mut answered => Ok(()),
            status = child.wait() => Err(format!("exited before answering ({:?})", status.ok())),
            _ = tokio::time::sleep(limit) => Err(format!("no answer within {limit:?}")),
        };
        let peak_rss_kib = child.id().map(peak_rss_kib).unwrap_or(0);
        let _ = child.kill().await;
        let stdout = match stdout {
            Some(reading) => reading.await.unwrap_or_default(),
            None => String::new(),
        };
        outcome.map_err(|e| format!("{}: {e}", bootstrap.display()))?;
        let c = std::mem::take(&mut *self.server.current.lock().unwrap());
        let fail = |what: &str| format!("{}: {what}", bootstrap.display());
        let (answer, error_type) = c.answer.ok_or_else(|| fail("woken without an answer"))?;
        if let Some(e) = error_type.as_ref().filter(|e| e.starts_with("init error")) {
            return Err(fail(e));
        }
        let start = Start {
            init: c
                .init
                .ok_or_else(|| fail("answered without asking for an event"))?,
            answer,
            error_type,
            aws_calls: c.aws_calls,
            peak_rss_kib,
        };
        Ok((start, stdout))
    }
}

/// VmHWM of a live process, in KiB (0 where /proc does not say).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A bootstrap's name: its directory's for `…/<name>/bootstrap` (cargo lambda's layout), else its own.
pub fn name_of(bootstrap: &Path) -> String {
    let file = bootstrap.file_name().unwrap_or_default();
    let named = if file == "bootstrap" {
        bootstrap.parent().and_then(Path::file_name).unwrap_or(file)
    } else {
        file
    };
    named.to_string_lossy().into_owned()
}

/// What `make lambdas` prints for one bootstrap.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub init: Spread,
    pub answer: Spread,
    pub peak_rss_kib: u64,
    pub answered_with: String,
}

/// `starts` timed cold starts of `bootstrap`, after one untimed start that reads it from disk
/// into the page cache (Lambda keeps a function's code in its own cache too).
pub async fn measure(timer: &Timer, bootstrap: &Path, starts: usize) -> Result<Row, String> {
    let limit = Duration::from_secs(30);
    timer.time(bootstrap, limit).await?;
    let mut runs = Vec::with_capacity(starts);
    for _ in 0..starts {
        runs.push(timer.time(bootstrap, limit).await?);
    }
    let inits: Vec<Duration> = runs.iter().map(|r| r.init).collect();
    let answers: Vec<Duration> = runs.iter().map(|r| r.answer).collect();
    let last = runs.last().ok_or("no starts asked for")?;
    let answered_with = match (&last.error_type, last.aws_calls) {
        (None, _) => "a response".to_string(),
        (Some(e), 0) => e.clone(),
        (Some(e), n) => format!("{e} after {n} AWS call(s)"),
    };
    Ok(Row {
        name: name_of(bootstrap),
        path: bootstrap.to_path_buf(),
        bytes: std::fs::metadata(bootstrap)
            .map_err(|e| format!("{}: {e}", bootstrap.display()))?
            .len(),
        init: Spread::of(&inits).expect("at least one start"),
        answer: Spread::of(&answers).expect("at least one start"),
        peak_rss_kib: runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0),
        answered_with,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn spread_takes_the_middle_value_or_the_mean_of_the_middle_two() {
        let odd = Spread::of(&ms(&[9, 1, 5])).unwrap();
        assert_eq!(
            (odd.median, odd.min, odd.max),
            (
                Duration::from_millis(5),
                Duration::from_millis(1),
                Duration::from_millis(9)
            )
        );
        let even = Spread::of(&ms(&[4, 2, 10, 8])).unwrap();
        assert_eq!(even.median, Duration::from_millis(6));
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn denials_speak_the_protocol_of_the_request() {
        assert!(denial("application/x-amz-json-1.0")
            .1
            .contains("AccessDeniedException"));
        assert!(denial("application/x-www-form-urlencoded; charset=utf-8")
            .1
            .contains("<Errors>"));
        assert!(denial("").1.starts_with("<Error>"));
    }

    #[test]
    fn a_bootstrap_is_named_after_its_directory() {
        assert_eq!(name_of(Path::new("/t/lambda/sweeper/bootstrap")), "sweeper");
        assert_eq!(name_of(Path::new("/t/debug/quota-check")), "quota-check");
    }
}

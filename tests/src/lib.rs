//! The test harness: moto server behind one front door (ARCHITECTURE.md, "The harness").
//!
//! Every client talks to the front door. It serves Lambda invocations from the real handler
//! code with real Lambda error semantics, Service Quotas from a stand-in that follows the
//! documented request states, EC2 requests matching a fault rule with EC2's own error responses,
//! and passes everything else to moto unchanged. moto's Step Functions executor finds the front
//! door by itself, because moto is started with `MOTO_PORT` naming it.
//!
//! One moto and one front door per test process; each test takes a region of its own, and the
//! front door keeps fault rules and quota state per region, so tests run in parallel.

pub mod cli;
pub mod coldstart;
pub mod containers;
pub mod deployed;
pub mod e2e;
pub mod fixtures;
pub mod frontdoor;
pub mod iam;
pub mod imds;
pub mod price_list;
pub mod quotas;
pub mod requests;
pub mod spot_placement;
pub mod sts;
pub mod throttle;
pub mod vcpu_limits;
pub mod worker_standin;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use ephemera_functions::Aws;

pub use ephemera_pg as postgres;
pub use frontdoor::{FaultRule, FrontDoor};

pub struct Harness {
    pub endpoint: String,
    pub moto: String,
    pub door: Arc<FrontDoor>,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn moto_server_path() -> PathBuf {
    if let Ok(p) = std::env::var("EPHEMERA_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv/bin/python3");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// moto server as the harness runs it: through `tests/moto/aws_answers.py`, which teaches it
/// AWS's answer where it differs (each patch cited there); `EPHEMERA_MOTO_SERVER` runs another
/// server as is.
fn moto_command() -> Command {
    let mut cmd = Command::new(moto_server_path());
    if std::env::var_os("EPHEMERA_MOTO_SERVER").is_none() {
        cmd.arg(workspace_root().join("tests/moto/aws_answers.py"));
    }
    cmd
}

/// Starts moto and the front door once per process, on a thread that lives as long as it.
pub fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let moto_port = free_port();
        let door_port = free_port();
        let door = Arc::new(FrontDoor::new(format!("http://127.0.0.1:{moto_port}")));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let door_for_thread = door.clone();
        std::thread::Builder::new()
            .name("harness".into())
            .spawn(move || {
                let log = std::env::temp_dir().join(format!("ephemera-moto-{moto_port}.log"));
                let log_file = std::fs::File::create(&log).expect("moto log file");
                let mut cmd = moto_command();
                cmd.args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
                    .env("MOTO_PORT", door_port.to_string())
                    .stdin(Stdio::null())
                    .stdout(log_file.try_clone().expect("log"))
                    .stderr(log_file);
                // moto dies with this thread, which lives as long as the test process.
                // SAFETY: pre_exec runs between fork and exec; prctl is async-signal-safe.
                #[allow(unsafe_code)]
                unsafe {
                    use std::os::unix::process::CommandExt;
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                // Never waited for: it ends with this thread (PDEATHSIG), which never returns.
                #[allow(clippy::zombie_processes)]
                let _child = cmd.spawn().unwrap_or_else(|e| {
                    panic!(
                        "cannot start {} ({e}); run `make setup` to install moto",
                        moto_server_path().display()
                    )
                });
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind(("127.0.0.1", door_port))
                        .await
                        .expect("front door port");
                    let app = frontdoor::router(door_for_thread.clone());
                    tokio::spawn(async move {
                        axum::serve(listener, app).await.expect("front door");
                    });
                    door_for_thread.wait_for_moto().await;
                    ready_tx.send(()).expect("ready");
                    std::future::pending::<()>().await;
                });
            })
            .expect("harness thread");
        ready_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("moto did not start within 120 s");
        Harness {
            endpoint: format!("http://127.0.0.1:{door_port}"),
            moto: format!("http://127.0.0.1:{moto_port}"),
            door,
        }
    })
}

/// Regions moto knows; each test takes its own so quotas, faults and instances never mix.
const REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-south-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ca-central-1",
    "sa-east-1",
];
static NEXT_REGION: AtomicUsize = AtomicUsize::new(0);

/// Where cargo put this workspace's binaries, for a test running from `<target>/debug/deps`.
pub fn host_bins() -> std::path::PathBuf {
    std::env::current_exe()
        .expect("the test's path")
        .parent()
        .and_then(std::path::Path::parent)
        .expect("<target>/debug")
        .to_path_buf()
}

pub fn fresh_region() -> &'static str {
    let i = NEXT_REGION.fetch_add(1, Ordering::SeqCst);
    REGIONS
        .get(i)
        .copied()
        .expect("more tests in this binary than regions: split the test file")
}

/// An SDK config pointed at the front door, signed as the account's administrator (the person
/// running ephemera: IAM lets everything through).
pub fn sdk_config(region: &str) -> SdkConfig {
    sdk_config_as(region, frontdoor::ADMIN_KEY)
}

/// An SDK config signed as `principal`: its calls are held to the template's policies.
pub fn principal_config(region: &str, principal: &iam::Principal) -> SdkConfig {
    sdk_config_as(region, &principal.access_key())
}

/// An SDK config signed as the worker role's session on `instance` (what its IMDS hands out).
pub fn instance_config(region: &str, instance: &str) -> SdkConfig {
    sdk_config_as(region, &iam::Principal::instance_key(instance))
}

/// The environment of a worker process standing in for an instance: no credentials of its
/// own, so that it takes its instance's from the local IMDS at `imds`, as on EC2.
pub fn instance_env(cmd: &mut tokio::process::Command, region: &str, imds: &str) {
    for v in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_EC2_METADATA_DISABLED",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("AWS_ENDPOINT_URL", &harness().endpoint)
        .env("AWS_REGION", region)
        .env("AWS_CONFIG_FILE", "/nonexistent/ephemera-no-aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/ephemera-no-aws-credentials",
        )
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv4");
}

/// The clients a Lambda's execution role has.
pub fn function_clients(region: &str, function: &str) -> Aws {
    Aws::from_conf(&principal_config(
        region,
        &iam::Principal::Function(function.into()),
    ))
}

/// An SDK config signed with `access_key` (a session STS minted, `sts`).
pub fn sdk_config_as(region: &str, access_key: &str) -> SdkConfig {
    let h = harness();
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(&h.endpoint)
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
            aws_sdk_ec2::config::Credentials::new(access_key, "testing", None, None, "harness"),
        ))
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
        .build()
}

pub fn clients(region: &str) -> Aws {
    Aws::from_conf(&sdk_config(region))
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

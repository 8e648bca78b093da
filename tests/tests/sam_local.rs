//! The path a SAM user takes, where Docker is absent: `sam build`, then the bootstraps it produced
//! invoked with `events/<name>.json` and `events/env.json` through a local Lambda runtime API
//! (`cargo lambda watch --only-lambda-apis`, called with `cargo lambda invoke`), against the
//! emulator behind the front door.
//!
//! One step is replaced: the compile. An arm64 release build of every function takes far longer
//! than CI has on two cores, so a `cargo-lambda` first on PATH answers SAM's
//! `cargo lambda build --release --arm64 --bin <Binary>` by putting this machine's build of that
//! same binary where cargo lambda writes it (`$CARGO_TARGET_DIR/lambda/<bin>/bootstrap`). What is
//! checked is SAM's part and the template's: every function's `Binary` exists, SAM asks for the
//! template's architecture and release mode, finds each bootstrap under an out-of-tree
//! `CARGO_TARGET_DIR` (as the Makefile sets it) and copies it. `make deploy` does the real compile.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ephemera_tests::iam::Principal;
use ephemera_tests::{fresh_region, harness, host_bins};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The tools `make setup` installs; without them the test says so, and fails in CI.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let venv = repo().join(".venv/bin");
    let (sam, cargo_lambda) = (venv.join("sam"), venv.join("cargo-lambda"));
    if sam.exists() && cargo_lambda.exists() {
        return Some((sam, cargo_lambda));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "SAM CLI or cargo-lambda missing from .venv: `make setup` installs them"
    );
    eprintln!("skipped: run `make setup` for SAM CLI and cargo-lambda");
    None
}

/// (logical id, BuildProperties.Binary) of every function in the template.
fn functions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("template.yaml")).unwrap();
    let t: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut out = vec![];
    for (id, r) in t["Resources"].as_mapping().unwrap() {
        if r["Type"].as_str() == Some("AWS::Serverless::Function") {
            let bin = r["Metadata"]["BuildProperties"]["Binary"]
                .as_str()
                .unwrap_or_else(|| panic!("{id:?} has no Metadata.BuildProperties.Binary"));
            out.push((id.as_str().unwrap().to_string(), bin.to_string()));
        }
    }
    out
}

const STAND_IN: &str = r#"#!/bin/bash
# Stand-in for cargo-lambda's compile (tests/tests/sam_local.rs): this machine's build of --bin.
echo "$*" >> "$EPHEMERA_SAM_CALLS"
bin=""
while [ $# -gt 0 ]; do [ "$1" = "--bin" ] && bin="$2"; shift; done
mkdir -p "$CARGO_TARGET_DIR/lambda/$bin"
# A hard link where it can: ten debug binaries copied twice (here, then by SAM) are gigabytes.
ln -f "$EPHEMERA_HOST_BINS/$bin" "$CARGO_TARGET_DIR/lambda/$bin/bootstrap" 2>/dev/null ||
  cp "$EPHEMERA_HOST_BINS/$bin" "$CARGO_TARGET_DIR/lambda/$bin/bootstrap"
"#;

/// `sam build` of the template as `make deploy` runs it; returns the build directory.
fn sam_build(sam: &Path, work: &Path) -> PathBuf {
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let stand_in = bin.join("cargo-lambda");
    std::fs::write(&stand_in, STAND_IN).unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&stand_in)
        .status()
        .unwrap();
    let build = work.join("build");
    let calls = work.join("calls");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(sam)
        .args(["build", "--beta-features", "--template"])
        .arg(repo().join("template.yaml"))
        .arg("--build-dir")
        .arg(&build)
        .arg("--base-dir")
        .arg(repo())
        .current_dir(work)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", work.join("target"))
        .env("SAM_CLI_TELEMETRY", "0")
        .env("EPHEMERA_HOST_BINS", host_bins())
        .env("EPHEMERA_SAM_CALLS", &calls)
        .output()
        .expect("sam build");
    assert!(
        out.status.success(),
        "sam build failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(&calls).unwrap_or_default();
    for (id, binary) in functions() {
        assert!(
            calls
                .lines()
                .any(|l| l == format!("lambda build --release --arm64 --bin {binary}")),
            "{id}: SAM did not ask for an arm64 release build of {binary}: {calls}"
        );
        let built = std::fs::read(build.join(&id).join("bootstrap"))
            .unwrap_or_else(|e| panic!("{id}: no bootstrap in SAM's build ({e})"));
        let compiled = std::fs::read(host_bins().join(&binary)).unwrap();
        assert!(built == compiled, "{id}: SAM copied another binary");
    }
    build
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Removes the build's scratch directory when the test ends, however it ends: SAM's copies of
/// every bootstrap are about a gigabyte.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the process when the test ends, however it ends.
struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One event through the runtime API to one bootstrap: its JSON answer.
fn invoke(
    cargo_lambda: &Path,
    port: u16,
    bootstrap: &Path,
    function: &str,
    event: &str,
    region: &str,
) -> Value {
    let env: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("events/env.json")).unwrap())
            .unwrap();
    let mut cmd = Command::new(bootstrap);
    for (k, v) in env["Parameters"].as_object().unwrap() {
        cmd.env(k, v.as_str().unwrap());
    }
    // events/env.json names the emulator as a container sees it; here it is the front door.
    let _function = Killed(
        cmd.env("AWS_ENDPOINT_URL", &harness().endpoint)
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{port}/.rt"),
            )
            .env("AWS_LAMBDA_FUNCTION_NAME", "_")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_REGION", region)
            // The function's execution role: its calls are held to the template's policy.
            .env(
                "AWS_ACCESS_KEY_ID",
                Principal::Function(function.into()).access_key(),
            )
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the bootstrap"),
    );
    let out = Command::new(cargo_lambda)
        .args(["lambda", "invoke", "--invoke-address", "127.0.0.1"])
        .args([
            "--invoke-port",
            &port.to_string(),
            "--output-format",
            "json",
        ])
        .arg("--data-file")
        .arg(repo().join("events").join(event))
        .arg("_")
        .output()
        .expect("cargo lambda invoke");
    assert!(
        out.status.success(),
        "{function} with {event}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{function}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn sam_build_copies_every_bootstrap_and_they_answer_the_sample_events() {
    let Some((sam, cargo_lambda)) = tools() else {
        return;
    };
    let region = fresh_region();
    let work = std::env::temp_dir().join(format!("ephemera-sam-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let work = Scratch(work);
    let build = sam_build(&sam, &work.0);

    let port = free_port();
    let _api = Killed(
        Command::new(&cargo_lambda)
            .args(["lambda", "watch", "--only-lambda-apis"])
            .args(["--invoke-address", "127.0.0.1", "--invoke-port"])
            .arg(port.to_string())
            .current_dir(repo())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cargo lambda watch"),
    );
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < until,
            "the local runtime API did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let verified = invoke(
        &cargo_lambda,
        port,
        &build.join("VerifyCompletionFunction/bootstrap"),
        "verify-completion",
        "verify-completion.json",
        region,
    );
    assert_eq!(verified["ok"], true, "{verified}");
    assert!(
        verified["checks"].as_array().unwrap().len() >= 3,
        "{verified}"
    );

    let quota = invoke(
        &cargo_lambda,
        port,
        &build.join("QuotaCheckFunction/bootstrap"),
        "quota-check",
        "quota-check.json",
        region,
    );
    assert_eq!(quota["verdict"], "enough", "{quota}");
}

//! A job whose command runs in a container image (`exec --image`), by the real worker binary
//! under podman: the image built from this machine's files and pulled from a registry on the
//! loopback address (playing ECR). Each of the command's endings reads as on the host, its
//! outputs are stored with their manifest, and a stopped attempt's checkpoint is restored
//! into the next attempt's container. Skipped without podman, failed under CI.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use ephemera_tests::containers::{self, Registry};

/// A fresh directory of this test's.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ephemera-container-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A registry of the test's own with an image of sh, sleep, cat, touch and mv in it: the
/// registry (stopped when dropped) and the image's reference.
fn image(base: &Path) -> (Registry, String) {
    let registry = Registry::start(&base.join("registry")).unwrap();
    let reference = containers::image_from_host(
        &registry,
        "ephemera/test-job:1",
        &["sleep", "cat", "touch", "mv", "id"],
        &[],
    )
    .unwrap();
    (registry, reference)
}

/// `ephemera-worker exec --image <image> <options> -- <command>` on its own (no run), in
/// `workdir`; `stop_when` (a file the command creates) sends the worker SIGTERM once it exists.
async fn exec(
    image: &str,
    workdir: &Path,
    options: &[&str],
    command: &str,
    stop_when: Option<PathBuf>,
) -> (Output, Duration) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ephemera-worker"));
    // The run is the test's (its directory's name): its checkpoints' place and its
    // containers' names are its own.
    let run_id = workdir
        .ancestors()
        .find_map(|d| d.file_name()?.to_str()?.strip_prefix("ephemera-container-"))
        .unwrap()
        .to_string();
    cmd.args(["exec", "--image", image, "--runtime", "podman", "--run-id"])
        .arg(run_id)
        .arg("--workdir")
        .arg(workdir)
        .args(options)
        .args(["--", "sh", "-c", command])
        .envs(containers::podman_env())
        .kill_on_drop(true);
    let began = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(ready) = stop_when {
        let pid = child.id().unwrap();
        tokio::spawn(async move {
            while !ready.exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        });
    }
    let out = tokio::time::timeout(Duration::from_secs(240), child.wait_with_output())
        .await
        .expect("the worker ended")
        .unwrap();
    (out, began.elapsed())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn a_container_job_that_exits_zero_has_its_environment_inputs_and_outputs() {
    if !containers::available() {
        eprintln!("SKIPPED: no podman or docker-registry (make setup installs them; with CI set this test fails instead)");
        return;
    }
    let base = dir("zero");
    let (_registry, image) = image(&base);
    let work = base.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("input.txt"), "fetched before the start\n").unwrap();
    let to = base.join("to");
    // As on an instance, the job's own user (`--run-as`, which launch-worker adds): the
    // container runs as it, on the directories handed to it. A user of this test's own.
    let uid = 62_000 + std::process::id() % 1000;
    let run_as = format!("{uid}:{uid}");
    let (o, _) = exec(
        &image,
        &work,
        &["--outputs", "out", "--to", to.to_str().unwrap(), "--worker", "2", "--workers", "3", "--run-as", &run_as],
        r#"cat input.txt > out/copy.txt && echo "$EPHEMERA_RUN_ID $EPHEMERA_WORKER/$EPHEMERA_WORKERS $EPHEMERA_ATTEMPT" > out/place.txt && id -u > out/uid.txt"#,
        None,
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    // The manifest of worker 2's share, each output in it, stored from the container's files.
    let share = to.join("worker-2");
    let manifest: ephemera_contract::Manifest =
        serde_json::from_slice(&std::fs::read(share.join("manifest.json")).unwrap()).unwrap();
    let mut keys: Vec<&str> = manifest.objects.iter().map(|o| o.key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["copy.txt", "place.txt", "uid.txt"]);
    assert_eq!(
        std::fs::read_to_string(share.join("uid.txt")).unwrap(),
        format!("{uid}\n"),
        "the container ran as the job's user"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("copy.txt")).unwrap(),
        "fetched before the start\n"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("place.txt")).unwrap(),
        format!("zero-{} 2/3 1\n", std::process::id())
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("manifest.json"),
        "the manifest's place printed"
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn a_container_job_that_exits_non_zero_fails_with_its_status_and_stderr() {
    if !containers::available() {
        eprintln!("SKIPPED: no podman or docker-registry (make setup installs them; with CI set this test fails instead)");
        return;
    }
    let base = dir("nonzero");
    let (_registry, image) = image(&base);
    let to = base.join("to");
    let (o, _) = exec(
        &image,
        &base,
        &["--outputs", "out", "--to", to.to_str().unwrap()],
        "echo 'the model diverged' >&2; exit 3",
        None,
    )
    .await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("exited with status 3"), "{err}");
    assert!(err.contains("the model diverged"), "{err}");
    assert!(
        !to.join("worker-1/manifest.json").exists(),
        "no outputs stored"
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn a_container_job_killed_by_a_signal_reads_as_killed() {
    if !containers::available() {
        eprintln!("SKIPPED: no podman or docker-registry (make setup installs them; with CI set this test fails instead)");
        return;
    }
    let base = dir("signal");
    let (_registry, image) = image(&base);
    let (o, _) = exec(&image, &base, &[], "kill -KILL $$", None).await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("was killed by signal 9"), "{err}");
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn a_container_job_that_ignores_sigterm_is_killed_after_its_grace() {
    if !containers::available() {
        eprintln!("SKIPPED: no podman or docker-registry (make setup installs them; with CI set this test fails instead)");
        return;
    }
    let base = dir("stubborn");
    let (_registry, image) = image(&base);
    let ready = base.join("ready");
    let (o, took) = exec(
        &image,
        &base,
        &["--grace", "3"],
        "trap '' TERM; touch ready; while true; do sleep 0.1; done",
        Some(ready),
    )
    .await;
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("was killed by signal 9"), "{err}");
    assert!(
        took >= Duration::from_secs(3),
        "the grace was given: {took:?}"
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn a_reclaimed_container_job_resumes_from_its_checkpoint() {
    if !containers::available() {
        eprintln!("SKIPPED: no podman or docker-registry (make setup installs them; with CI set this test fails instead)");
        return;
    }
    let base = dir("resume");
    let (_registry, image) = image(&base);
    let (kept, to) = (base.join("kept"), base.join("to"));
    // Counts up from its checkpoint, saving it (write, then rename) when it gets SIGTERM; the
    // attempt after a reclaim counts three more and writes where it started from.
    let script = r#"
        n=$(cat "$EPHEMERA_CHECKPOINT/n" 2>/dev/null || echo 0); first=$n
        trap 'echo $n > "$EPHEMERA_CHECKPOINT/n.tmp" && mv "$EPHEMERA_CHECKPOINT/n.tmp" "$EPHEMERA_CHECKPOINT/n"; exit 143' TERM
        if [ "$EPHEMERA_RESUMED" = true ]; then end=$((n + 3)); else end=1000000; fi
        while [ "$n" -lt "$end" ]; do n=$((n + 1)); [ "$n" -lt 20 ] || touch counting; sleep 0.01; done
        echo "$EPHEMERA_CHECKPOINT_RESTORED $first $n" > out/result
    "#;
    let options = |attempt: &'static str| {
        vec![
            "--attempt".to_string(),
            attempt.to_string(),
            "--checkpoint".into(),
            "ckpt".into(),
            "--checkpoint-to".into(),
            kept.display().to_string(),
            "--outputs".into(),
            "out".into(),
            "--to".into(),
            to.display().to_string(),
            "--grace".into(),
            "20".into(),
        ]
    };
    let first = base.join("attempt-1");
    std::fs::create_dir_all(&first).unwrap();
    let o1 = options("1");
    let o1: Vec<&str> = o1.iter().map(String::as_str).collect();
    let (o, _) = exec(&image, &first, &o1, script, Some(first.join("counting"))).await;
    assert!(!o.status.success(), "stopped, not done");
    // Its own `exit 143` after the trap: a runtime reports it as a shell reports SIGTERM.
    assert!(
        stderr(&o).contains("was killed by signal 15"),
        "{}",
        stderr(&o)
    );
    let saved: u64 = std::fs::read_to_string(first.join("ckpt/n"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(saved >= 20, "it counted before it was stopped: {saved}");

    // Another instance: an empty working directory, the checkpoint back before the container
    // starts, its outputs stored once it exits 0.
    let second = base.join("attempt-2");
    std::fs::create_dir_all(&second).unwrap();
    let o2 = options("2");
    let o2: Vec<&str> = o2.iter().map(String::as_str).collect();
    let (o, _) = exec(&image, &second, &o2, script, None).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(to.join("worker-1/result")).unwrap(),
        format!("1 {saved} {}\n", saved + 3),
        "restored one file and counted on from it"
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// A runtime that records its arguments, one call a line, and does nothing: what the worker
/// asks of podman for a GPU job, with no GPU or podman on this machine.
#[tokio::test]
async fn a_gpu_job_asks_the_runtime_for_the_instances_gpus() {
    let base = dir("gpus");
    let bin = base.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = base.join("calls");
    // The AWS CLI hands out ECR's login token, which the runtime reads on its stdin.
    for (name, extra) in [
        ("podman", "[ \"$1\" != login ] || cat > /dev/null"),
        ("aws", "echo ecr-token"),
    ] {
        let fake = bin.join(name);
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> {}\n{extra}\nexit 0\n",
                calls.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let work = base.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ephemera-worker"))
        .args([
            "exec",
            "--image",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1",
        ])
        .args(["--gpus", "--run-id", "gpu-1", "--grace", "45", "--workdir"])
        .arg(&work)
        .args(["--", "python3", "/app/train.py"])
        .env("PATH", path)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let calls = std::fs::read_to_string(&calls).unwrap();
    let run = calls
        .lines()
        .find(|l| l.starts_with("podman run "))
        .unwrap_or_else(|| panic!("no run in {calls}"));
    let work = std::fs::canonicalize(&work).unwrap().display().to_string();
    for part in [
        "--rm --init --name ephemera-gpu-1-w1-a1 --network host --stop-timeout 45".to_string(),
        format!("--volume {work}:{work} --workdir {work}"),
        "--env EPHEMERA_RUN_ID".into(),
        "--device nvidia.com/gpu=all --pull=never".into(),
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1 python3 /app/train.py".into(),
    ] {
        assert!(run.contains(&part), "{part} in {run}");
    }
    // Logged in to ECR with the instance role's token, pulled, then run.
    let order: Vec<&str> = calls
        .lines()
        .filter(|l| !l.starts_with("podman rm "))
        .collect();
    assert_eq!(
        order[..3],
        [
            "aws ecr get-login-password --region us-east-1",
            "podman login --username AWS --password-stdin 123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "podman pull 123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1",
        ],
        "{calls}"
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// A job's secret in its container: the worker reads it (Secrets Manager, through the harness's
/// front door with the instance role) and passes it by name (`--env API_KEY`), so the
/// container's command has the value (it checks its SHA-256) while no command line does; what
/// the container prints with it, on stdout and stderr and in its failure, is `[redacted]`.
#[tokio::test]
async fn a_container_jobs_secret_reaches_it_by_name_and_is_redacted_from_what_it_prints() {
    if !containers::available() {
        eprintln!("SKIPPED: no podman or docker-registry (make setup installs them; with CI set this test fails instead)");
        return;
    }
    let region = ephemera_tests::fresh_region();
    let value = "ctr-Secret-5e6f7a8b9c";
    let arn = aws_sdk_secretsmanager::Client::new(&ephemera_tests::sdk_config(region))
        .create_secret()
        .name("ephemera/container-job/api")
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let imds = ephemera_tests::imds::serve(|| "i-0c0ffee0c0ffee000".to_string(), || None).await;
    let base = dir("secret");
    let registry = Registry::start(&base.join("registry")).unwrap();
    let image = containers::image_from_host(
        &registry,
        "ephemera/test-secret:1",
        &["sha256sum", "cut"],
        &[],
    )
    .unwrap();
    let work = base.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let command = format!(
        "test \"$(printf %s \"$API_KEY\" | sha256sum | cut -c1-64)\" = {} || exit 7; \
         echo \"out: $API_KEY\"; echo \"err: $API_KEY\" >&2; exit 3",
        ephemera_worker::store::sha256_hex(value.as_bytes())
    );
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ephemera-worker"));
    ephemera_tests::instance_env(&mut cmd, region, &imds);
    cmd.args(["exec", "--image", &image, "--runtime", "podman"])
        .args(["--run-id", &format!("secret-{}", std::process::id())])
        .arg("--workdir")
        .arg(&work)
        .args(["--secret", &format!("API_KEY={arn}")])
        .args(["--", "sh", "-c", &command])
        .envs(containers::podman_env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let o = tokio::time::timeout(
        Duration::from_secs(240),
        cmd.spawn().unwrap().wait_with_output(),
    )
    .await
    .expect("the worker ended")
    .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "the job exits 3: {err}");
    assert!(
        err.contains("exited with status 3"),
        "the secret reached it: {err}"
    );
    assert!(
        err.contains("out: [redacted]") && err.contains("err: [redacted]"),
        "{err}"
    );
    assert!(!err.contains(value), "{err}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains(value));
    let _ = std::fs::remove_dir_all(&base);
}

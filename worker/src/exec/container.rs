//! A job whose command runs in a container image (`exec --image`, the RunSpec's `job.image`).
//! The instance's own runtime runs it (podman where installed, else docker: the ECS-optimized
//! Amazon Linux 2023 AMIs ship docker), with everything a command on the host has: the
//! `EPHEMERA_*` environment, the working directory (inputs), the checkpoint and outputs
//! directories mounted at their own paths, the instance's network, and the GPUs on a GPU type.
//! A stop is the runtime's own (`stop --time <grace>`: SIGTERM to the container, the grace,
//! SIGKILL), and the exit status reads as a command's. Around it, [`super::job`] keeps every
//! guarantee of `exec` unchanged: fetch, checkpoint, outputs and manifest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use super::supervise::{self, Ended, Outcome};

/// The container runtime on the instance: one argument builder for both (the flags used are
/// common to docker and podman), the GPU flag being the one difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    Podman,
    Docker,
}

impl Runtime {
    pub fn program(self) -> &'static str {
        match self {
            Runtime::Podman => "podman",
            Runtime::Docker => "docker",
        }
    }

    /// The runtime this host has: podman first (it needs no daemon), else docker.
    pub fn on_host() -> Result<Runtime> {
        let on_path = |name: &str| {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        };
        match (on_path("podman"), on_path("docker")) {
            (true, _) => Ok(Runtime::Podman),
            (false, true) => Ok(Runtime::Docker),
            _ => bail!(
                "exec --image: neither podman nor docker is on this host; launch an AMI that \
                 has a container runtime (the ECS-optimized Amazon Linux 2023 images have docker)"
            ),
        }
    }
}

/// What to run the job's command in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub image: String,
    pub runtime: Runtime,
    /// Hand the instance's GPUs to the container (a GPU type: `--gpus all` for docker, the CDI
    /// device `nvidia.com/gpu=all` for podman).
    pub gpus: bool,
}

/// Where an image comes from, which decides how the runtime reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registry {
    /// A private ECR repository: logged in with the instance role's own credentials.
    Ecr { host: String, region: String },
    /// A registry on the loopback address (the demo's, playing ECR): plain HTTP, which is safe
    /// only because nothing but this machine can reach it.
    Loopback { host: String },
    /// Any other registry (a public one): pulled as the runtime pulls it.
    Public,
}

impl Registry {
    /// The registry an image reference names: its first path segment when that looks like a
    /// host (a dot, a colon, or `localhost`), as docker and podman read it.
    pub fn of(image: &str) -> Registry {
        let Some((first, _)) = image.split_once('/') else {
            return Registry::Public;
        };
        if !(first.contains('.') || first.contains(':') || first == "localhost") {
            return Registry::Public;
        }
        let name = first.split(':').next().unwrap_or(first);
        if name == "localhost" || name == "127.0.0.1" || name == "[::1]" {
            return Registry::Loopback { host: first.into() };
        }
        // <account>.dkr.ecr.<region>.amazonaws.com (and .com.cn in China's regions).
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() >= 6 && parts[1] == "dkr" && parts[2] == "ecr" && parts[4] == "amazonaws" {
            return Registry::Ecr {
                host: name.into(),
                region: parts[3].into(),
            };
        }
        Registry::Public
    }

    /// The runtime's flag for a plain-HTTP registry, for the loopback one only.
    fn tls_flags(&self) -> Vec<String> {
        match self {
            Registry::Loopback { .. } => vec!["--tls-verify=false".into()],
            _ => vec![],
        }
    }
}

/// The container's name: its run, worker and attempt (so a leftover is recognisable), in the
/// characters the runtimes accept.
pub fn name(run_id: &str, worker: u32, attempt: u32) -> String {
    let run: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("ephemera-{run}-w{worker}-a{attempt}")
}

/// The directories mounted into the container, each at its own path: the working directory
/// (where the inputs were fetched), and the checkpoint and outputs directories when they lie
/// outside it. Absolute, existing, without one under another already listed.
pub fn mounts(workdir: &Path, others: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let workdir = std::fs::canonicalize(workdir)
        .with_context(|| format!("the job's working directory {}", workdir.display()))?;
    let mut out = vec![workdir.clone()];
    for d in others {
        let d = if d.is_absolute() {
            d.clone()
        } else {
            workdir.join(d)
        };
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        let d = std::fs::canonicalize(&d)?;
        if !out.iter().any(|m| d.starts_with(m)) {
            out.push(d);
        }
    }
    Ok(out)
}

/// The runtime's `run` arguments for `job` in `c`. The environment is passed by name only
/// (`-e NAME`, the value taken from the runtime client's own environment), so no value is on
/// a command line that `ps` shows. `--init` puts a small init as the container's PID 1, so the
/// command gets SIGTERM as it would on the host (PID 1 ignores a signal it has no handler for).
/// The instance's network: the job reaches S3 and the rest as a command on the host would, with
/// its run's job session (its credentials directory is among `mounts`), never the instance role.
pub fn run_args(
    c: &Container,
    name: &str,
    job: &supervise::Job,
    mounts: &[PathBuf],
) -> Vec<String> {
    let mut a: Vec<String> = ["run", "--rm", "--init", "--name", name, "--network", "host"]
        .map(String::from)
        .to_vec();
    a.extend(["--stop-timeout".into(), job.grace.as_secs().to_string()]);
    // The job's own user (`--run-as`) inside too: on the host's network, the user data's
    // firewall rule keeps IMDS from it as from a command on the host.
    // No way back to root inside: a setuid binary of the image (or file capabilities) would
    // make it the host's root on the host's network, which the rule does not stop.
    if let Some(who) = job.run_as {
        a.extend([
            "--user".into(),
            format!("{}:{}", who.uid, who.gid),
            "--security-opt".into(),
            "no-new-privileges".into(),
            "--cap-drop".into(),
            "ALL".into(),
        ]);
    }
    for m in mounts {
        a.extend(["--volume".into(), format!("{0}:{0}", m.display())]);
    }
    let workdir = mounts.first().map_or(job.workdir.clone(), |w| w.clone());
    a.extend(["--workdir".into(), workdir.display().to_string()]);
    for (k, _) in &job.env {
        a.extend(["--env".into(), k.clone()]);
    }
    if c.gpus {
        match c.runtime {
            Runtime::Docker => a.extend(["--gpus".into(), "all".into()]),
            Runtime::Podman => a.extend(["--device".into(), "nvidia.com/gpu=all".into()]),
        }
    }
    // Pulled before the run (`pull_args`): a run never reaches out on its own.
    if c.runtime == Runtime::Podman {
        a.push("--pull=never".into());
    }
    a.push(c.image.clone());
    a.extend(job.command.iter().cloned());
    a
}

/// The runtime's `pull` arguments for the image.
pub fn pull_args(c: &Container) -> Vec<String> {
    let mut a = vec!["pull".to_string()];
    if c.runtime == Runtime::Podman {
        a.extend(Registry::of(&c.image).tls_flags());
    }
    a.push(c.image.clone());
    a
}

/// The runtime's stop: SIGTERM to the container, `grace`, then SIGKILL.
pub fn stop_args(name: &str, grace: Duration) -> Vec<String> {
    vec![
        "stop".into(),
        "--time".into(),
        grace.as_secs().max(1).to_string(),
        name.into(),
    ]
}

/// How a container's command ended, read from the runtime's exit status: the runtimes report
/// a command killed by signal N as 128 + N, as a shell does.
pub fn ended_in_container(e: Ended) -> Ended {
    match e {
        Ended::Exited(c) if (129..=128 + 64).contains(&c) => Ended::Signalled(c - 128),
        e => e,
    }
}

/// Logs the runtime in to the image's registry where it needs it: ECR with a token of the
/// instance role's (`aws ecr get-login-password`, which the ECS-optimized AMIs ship).
async fn login(c: &Container) -> Result<()> {
    let Registry::Ecr { host, region } = Registry::of(&c.image) else {
        return Ok(());
    };
    let token = tokio::process::Command::new("aws")
        .args(["ecr", "get-login-password", "--region", &region])
        .output()
        .await
        .context("asking ECR for a login token (aws ecr get-login-password)")?;
    if !token.status.success() {
        bail!(
            "ECR refused a login token for {host}: {}",
            String::from_utf8_lossy(&token.stderr).trim()
        );
    }
    let mut child = tokio::process::Command::new(c.runtime.program())
        .args(["login", "--username", "AWS", "--password-stdin", &host])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("{} login {host}", c.runtime.program()))?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(&token.stdout).await?;
    }
    let status = child.wait().await?;
    anyhow::ensure!(
        status.success(),
        "{} login {host} failed ({status})",
        c.runtime.program()
    );
    Ok(())
}

/// How many times a pull is tried, and the wait after its first failure (doubled after each):
/// a registry answers an error or times out now and then, and podman's storage refuses a
/// commit that raced another pull of the same layers ("layer not known").
const PULL_TRIES: u32 = 3;
const PULL_BACKOFF: Duration = Duration::from_secs(2);

/// The image in the runtime's store, pulled (after a login where its registry needs one).
pub async fn pull(c: &Container) -> Result<()> {
    login(c).await?;
    let began = std::time::Instant::now();
    retried(PULL_TRIES, PULL_BACKOFF, || pull_once(c)).await?;
    tracing::info!(image = %c.image, runtime = c.runtime.program(), seconds = began.elapsed().as_secs_f64(), "the job's image pulled");
    Ok(())
}

/// One pull: Err when the runtime cannot be started (not worth trying again), Ok(Err) with
/// what the runtime said when it refused.
async fn pull_once(c: &Container) -> Result<Result<(), String>> {
    let out = tokio::process::Command::new(c.runtime.program())
        .args(pull_args(c))
        .output()
        .await
        .with_context(|| {
            format!(
                "starting {}: the AMI needs a container runtime for job.image (docs/container.md)",
                c.runtime.program()
            )
        })?;
    Ok(match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "pulling {} failed: {}",
            c.image,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    })
}

/// `once` until it succeeds, fails for good (Err) or was refused `tries` times, waiting
/// `backoff` (doubled each time) after each refusal; the last refusal as the error.
async fn retried<F, Fut>(tries: u32, mut backoff: Duration, mut once: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<(), String>>>,
{
    let mut n = 1;
    loop {
        match once().await? {
            Ok(()) => return Ok(()),
            Err(why) if n < tries => {
                tracing::warn!(error = %why, attempt = n, "the pull was refused; trying again");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                n += 1;
            }
            Err(why) => bail!("{why} (tried {n} times)"),
        }
    }
}

/// Time the runtime's client is given to return after the runtime's own stop has ended the
/// container, before it is stopped as a command is.
const CLIENT_AFTER_STOP: Duration = Duration::from_secs(30);

/// Runs `job`'s command in `c` (pulled), to its end or until `stop`: then the runtime's stop
/// (SIGTERM, the grace, SIGKILL) and the command's own ending.
pub async fn run(
    c: &Container,
    name: &str,
    mounts: &[PathBuf],
    job: &supervise::Job,
    stop: &CancellationToken,
) -> Result<Outcome> {
    let client = supervise::Job {
        command: std::iter::once(c.runtime.program().to_string())
            .chain(run_args(c, name, job, mounts))
            .collect(),
        grace: job.grace,
        env: job.env.clone(),
        workdir: job.workdir.clone(),
        // The runtime's client runs as the agent (it needs the runtime's socket); the job is
        // the container's process, not this client's.
        run_as: None,
    };
    // A container of this name is a leftover of this very attempt (a worker killed before its
    // container ended): it goes, or the name would refuse the run.
    let _ = tokio::process::Command::new(c.runtime.program())
        .args(["rm", "--force", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    tracing::info!(image = %c.image, container = name, gpus = c.gpus, "the job's command starts in its container");
    // The client is stopped only as a last resort: it is the container that gets the signal.
    let client_stop = CancellationToken::new();
    let running = supervise::run(&client, &client_stop);
    tokio::pin!(running);
    let mut stopped = false;
    let outcome = tokio::select! {
        o = &mut running => o,
        _ = stop.cancelled() => {
            stopped = true;
            tracing::warn!(container = name, grace_seconds = job.grace.as_secs(), "stopping the job's container: SIGTERM, then SIGKILL after the grace");
            let sent = tokio::process::Command::new(c.runtime.program())
                .args(stop_args(name, job.grace))
                .stdout(std::process::Stdio::null())
                .status()
                .await;
            if !sent.as_ref().is_ok_and(|s| s.success()) {
                tracing::warn!(?sent, "the runtime's stop failed; its client is stopped instead");
            }
            match tokio::time::timeout(job.grace + CLIENT_AFTER_STOP, &mut running).await {
                Ok(o) => o,
                Err(_) => {
                    client_stop.cancel();
                    running.await
                }
            }
        }
    };
    let mut o = outcome?;
    o.stopped |= stopped;
    o.ended = ended_in_container(o.ended);
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_pull_is_tried_again_and_a_missing_runtime_is_not() {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let tick = Duration::from_millis(1);
        // Refused twice (a registry's 503, a storage race), then pulled.
        let third = retried(3, tick, || async {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(if n < 2 {
                Err(format!("refused {n}"))
            } else {
                Ok(())
            })
        })
        .await;
        assert!(third.is_ok() && calls.load(std::sync::atomic::Ordering::SeqCst) == 3);
        // Refused every time: the last refusal, and how many tries.
        let e = retried(3, tick, || async { Ok(Err("layer not known".to_string())) })
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(e, "layer not known (tried 3 times)");
        // The runtime cannot start: said at once.
        calls.store(0, std::sync::atomic::Ordering::SeqCst);
        let e = retried(3, tick, || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(anyhow::anyhow!("starting docker"))
        })
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "starting docker");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    fn job() -> supervise::Job {
        supervise::Job {
            command: vec!["python3".into(), "train.py".into()],
            grace: Duration::from_secs(60),
            env: vec![
                ("EPHEMERA_RUN_ID".into(), "r1".into()),
                ("EPHEMERA_CHECKPOINT".into(), "/w/ckpt".into()),
            ],
            workdir: "/w".into(),
            run_as: None,
        }
    }

    fn container(runtime: Runtime, gpus: bool) -> Container {
        Container {
            image: "123456789012.dkr.ecr.eu-west-1.amazonaws.com/train:1".into(),
            runtime,
            gpus,
        }
    }

    #[test]
    fn the_run_arguments_mount_pass_the_environment_by_name_and_keep_the_grace() {
        let mounts = [PathBuf::from("/w"), PathBuf::from("/data/out")];
        let a = run_args(
            &container(Runtime::Docker, false),
            "ephemera-r1-w1-a2",
            &job(),
            &mounts,
        );
        assert_eq!(
            a,
            [
                "run",
                "--rm",
                "--init",
                "--name",
                "ephemera-r1-w1-a2",
                "--network",
                "host",
                "--stop-timeout",
                "60",
                "--volume",
                "/w:/w",
                "--volume",
                "/data/out:/data/out",
                "--workdir",
                "/w",
                "--env",
                "EPHEMERA_RUN_ID",
                "--env",
                "EPHEMERA_CHECKPOINT",
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/train:1",
                "python3",
                "train.py"
            ]
        );
        assert!(
            !a.iter().any(|x| x.contains("r1") && x.contains('=')),
            "no value on the command line: {a:?}"
        );
    }

    #[test]
    fn a_job_of_its_own_user_runs_so_in_its_container_with_no_way_back_to_root() {
        let mut j = job();
        j.run_as = Some(supervise::RunAs {
            uid: 61000,
            gid: 61001,
        });
        for runtime in [Runtime::Docker, Runtime::Podman] {
            let a = run_args(&container(runtime, false), "n", &j, &[PathBuf::from("/w")]);
            let at = a.iter().position(|x| x == "--user").expect("--user");
            assert_eq!(
                a[at..at + 6],
                [
                    "--user",
                    "61000:61001",
                    "--security-opt",
                    "no-new-privileges",
                    "--cap-drop",
                    "ALL"
                ],
                "{a:?}"
            );
        }
    }

    #[test]
    fn a_gpu_type_hands_its_gpus_to_the_container_in_each_runtimes_words() {
        let m = [PathBuf::from("/w")];
        let docker = run_args(&container(Runtime::Docker, true), "n", &job(), &m);
        let at = docker.iter().position(|x| x == "--gpus").expect("--gpus");
        assert_eq!(docker[at + 1], "all");
        let podman = run_args(&container(Runtime::Podman, true), "n", &job(), &m);
        let at = podman
            .iter()
            .position(|x| x == "--device")
            .expect("--device");
        assert_eq!(podman[at + 1], "nvidia.com/gpu=all");
        assert!(podman.contains(&"--pull=never".to_string()));
        // The flags come before the image, the command after it.
        let image = podman.iter().position(|x| x.ends_with("train:1")).unwrap();
        assert!(at < image);
        assert_eq!(podman[image + 1..], ["python3", "train.py"]);
        for cpu in [Runtime::Docker, Runtime::Podman] {
            let a = run_args(&container(cpu, false), "n", &job(), &m);
            assert!(!a.iter().any(|x| x == "--gpus" || x == "--device"), "{a:?}");
        }
    }

    #[test]
    fn only_the_loopback_registry_is_pulled_without_tls() {
        let pull = |image: &str| {
            pull_args(&Container {
                image: image.into(),
                runtime: Runtime::Podman,
                gpus: false,
            })
        };
        assert_eq!(
            pull("127.0.0.1:5077/ephemera/job:demo"),
            [
                "pull",
                "--tls-verify=false",
                "127.0.0.1:5077/ephemera/job:demo"
            ]
        );
        assert_eq!(
            pull("123456789012.dkr.ecr.us-east-1.amazonaws.com/job:1"),
            ["pull", "123456789012.dkr.ecr.us-east-1.amazonaws.com/job:1"]
        );
        assert_eq!(
            pull("public.ecr.aws/docker/library/python:3.12"),
            ["pull", "public.ecr.aws/docker/library/python:3.12"]
        );
    }

    #[test]
    fn the_registry_is_read_from_the_reference_as_the_runtimes_read_it() {
        assert_eq!(
            Registry::of("123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/train:1"),
            Registry::Ecr {
                host: "123456789012.dkr.ecr.eu-west-1.amazonaws.com".into(),
                region: "eu-west-1".into()
            }
        );
        assert_eq!(
            Registry::of("localhost:5000/job"),
            Registry::Loopback {
                host: "localhost:5000".into()
            }
        );
        for public in [
            "python:3.12",
            "library/python",
            "ghcr.io/org/job:1",
            "public.ecr.aws/x/y",
            // A path segment that is not a host.
            "team/dkr.ecr/x",
        ] {
            assert_eq!(Registry::of(public), Registry::Public, "{public}");
        }
    }

    #[test]
    fn a_stop_is_the_runtimes_with_the_grace_and_a_signal_reads_as_on_the_host() {
        assert_eq!(
            stop_args("n", Duration::from_secs(20)),
            ["stop", "--time", "20", "n"]
        );
        assert_eq!(stop_args("n", Duration::from_millis(300))[2], "1");
        assert_eq!(ended_in_container(Ended::Exited(137)), Ended::Signalled(9));
        assert_eq!(ended_in_container(Ended::Exited(143)), Ended::Signalled(15));
        assert_eq!(ended_in_container(Ended::Exited(3)), Ended::Exited(3));
        // The runtime's own failures (125: the runtime, 126/127: the command) stay codes.
        assert_eq!(ended_in_container(Ended::Exited(125)), Ended::Exited(125));
        assert_eq!(ended_in_container(Ended::Exited(128)), Ended::Exited(128));
    }

    #[test]
    fn the_name_says_whose_container_it_is() {
        assert_eq!(
            name("demo-container", 1, 2),
            "ephemera-demo-container-w1-a2"
        );
        assert_eq!(name("a b/c", 3, 1), "ephemera-a-b-c-w3-a1");
    }

    #[test]
    fn mounts_are_absolute_and_not_nested() {
        let b = std::env::temp_dir().join(format!("ephemera-mounts-{}", std::process::id()));
        std::fs::create_dir_all(b.join("w")).unwrap();
        let m = mounts(
            &b.join("w"),
            &[PathBuf::from("ckpt"), b.join("outside/out")],
        )
        .unwrap();
        let b = std::fs::canonicalize(&b).unwrap();
        assert_eq!(m, [b.join("w"), b.join("outside/out")]);
        assert!(b.join("w/ckpt").is_dir(), "made to be mounted");
        std::fs::remove_dir_all(&b).unwrap();
    }
}

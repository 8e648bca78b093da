//! `ephemera-worker exec -- <command>`: any job as a run's worker. The child runs with the
//! run's attempt in its environment, its output goes to the worker's log (and so to the run's
//! log stream), and it is stopped with SIGTERM, a grace period, then SIGKILL when the instance
//! is going away. How it ended becomes the run's report: its exit status, or the signal, with
//! the last lines of its standard error.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio_util::sync::CancellationToken;

/// Lines of the child's standard error kept for the failure's cause.
pub const TAIL_LINES: usize = 20;
/// Characters of one line kept (a line without a newline for megabytes must not fill memory).
pub const LINE_KEPT: usize = 500;
/// The Spot notice comes two minutes before the reclaim: the child's grace must end before it.
pub const MAX_GRACE: Duration = Duration::from_secs(110);

/// What to run and how to stop it.
#[derive(Debug, Clone)]
pub struct Job {
    pub command: Vec<String>,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Added to the child's environment.
    pub env: Vec<(String, String)>,
    /// Where the child runs (its inputs are fetched there).
    pub workdir: PathBuf,
    /// The unprivileged user the child runs as (issue 34 part 2); None: the worker's own.
    pub run_as: Option<RunAs>,
}

/// A user and group the child runs as, set before it starts (setgid, then setuid; the standard
/// library drops the supplementary groups when root does so). Such a child is not the agent:
/// it holds none of the instance's credentials (IMDS is closed to its uid by the user data's
/// firewall rule, and the variables that would point an SDK elsewhere are removed), so it can
/// read no task token and complete no run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Variables a child running as another user must not inherit: credentials, and where an SDK
/// would look for them.
pub const CREDENTIAL_VARIABLES: [&str; 8] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
];

/// How the child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signalled(i32),
}

impl Ended {
    pub fn succeeded(&self) -> bool {
        *self == Ended::Exited(0)
    }

    /// The summary's exit code: the status, or 128 + the signal as a shell reports it.
    pub fn code(&self) -> i32 {
        match *self {
            Ended::Exited(c) => c,
            Ended::Signalled(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(c) => write!(f, "exited with status {c}"),
            Ended::Signalled(s) => write!(f, "was killed by signal {s}"),
        }
    }
}

/// The run of a job: how it ended, whether it was stopped, for how long, its stderr's tail.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ended: Ended,
    /// Stopped by `stop` (a Spot notice or SIGTERM) rather than ending on its own.
    pub stopped: bool,
    pub seconds: f64,
    pub stderr_tail: Vec<String>,
}

/// The last lines of a stream, each cut to [`LINE_KEPT`] characters.
#[derive(Debug, Default, Clone)]
pub struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    pub fn push(&self, line: &str) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line.chars().take(LINE_KEPT).collect());
    }

    pub fn lines(&self) -> Vec<String> {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect()
    }
}

/// The cause a failed job's report carries: the command, how it ended, the tail of its stderr.
pub fn failure_cause(command: &str, outcome: &Outcome) -> String {
    let mut cause = format!(
        "`{command}` {} after {:.0} s",
        outcome.ended, outcome.seconds
    );
    if outcome.stderr_tail.is_empty() {
        cause.push_str(" (nothing on stderr)");
    } else {
        cause.push_str("; the last lines of its stderr:\n");
        cause.push_str(&outcome.stderr_tail.join("\n"));
    }
    cause
}

/// The command line as one string, as a shell would show it.
pub fn command_line(command: &[String]) -> String {
    command
        .iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where a job stands in its run: the run, the attempt, which of the run's workers it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place<'a> {
    pub run_id: &'a str,
    pub attempt: u32,
    /// 1..=workers: each worker's child takes its share of the work by it.
    pub worker: u32,
    pub workers: u32,
}

/// The environment a job's child is told of its run by.
pub fn run_env(p: &Place<'_>) -> Vec<(String, String)> {
    vec![
        ("EPHEMERA_RUN_ID".into(), p.run_id.into()),
        ("EPHEMERA_ATTEMPT".into(), p.attempt.to_string()),
        // A later attempt follows a Spot reclaim or a lost worker: the job may resume.
        ("EPHEMERA_RESUMED".into(), (p.attempt > 1).to_string()),
        ("EPHEMERA_WORKER".into(), p.worker.to_string()),
        ("EPHEMERA_WORKERS".into(), p.workers.to_string()),
    ]
}

/// Runs `job` to its end, or until `stop` is cancelled: then SIGTERM, `job.grace`, SIGKILL.
pub async fn run(job: &Job, stop: &CancellationToken) -> Result<Outcome> {
    let (program, args) = job
        .command
        .split_first()
        .context("exec: no command after --")?;
    let began = Instant::now();
    let mut command = tokio::process::Command::new(program);
    if let Some(who) = job.run_as {
        command.uid(who.uid).gid(who.gid);
        for v in CREDENTIAL_VARIABLES {
            command.env_remove(v);
        }
        command.env("AWS_EC2_METADATA_DISABLED", "true");
    }
    let mut child = command
        .args(args)
        .envs(job.env.iter().cloned())
        .current_dir(&job.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("exec: starting {program}"))?;
    let tail = Tail::default();
    let out = child
        .stdout
        .take()
        .map(|s| tokio::spawn(relay(s, "stdout", None)));
    let err = child
        .stderr
        .take()
        .map(|s| tokio::spawn(relay(s, "stderr", Some(tail.clone()))));
    let mut stopped = false;
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = stop.cancelled() => {
            stopped = true;
            terminate(&mut child, job.grace).await?
        }
    };
    // What a job of its own user left running goes with it (`job_user::kill_leftovers`): its
    // outputs and checkpoint are read next, and nothing of the job's may change them then.
    if let Some(who) = job.run_as {
        super::job_user::kill_leftovers(who).await;
    }
    // The pipes close with the child (or its last descendant): the last lines are relayed.
    for relay in [out, err].into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(5), relay).await;
    }
    Ok(Outcome {
        ended: ended_of(status),
        stopped,
        seconds: began.elapsed().as_secs_f64(),
        stderr_tail: tail.lines(),
    })
}

/// SIGTERM, then SIGKILL if the child is still there after `grace`.
async fn terminate(
    child: &mut tokio::process::Child,
    grace: Duration,
) -> Result<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        tracing::warn!(
            pid,
            grace_seconds = grace.as_secs(),
            "stopping the job: SIGTERM"
        );
        // kill(1) rather than kill(2): no unsafe code for one signal to a child not yet reaped.
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        if !sent.as_ref().is_ok_and(|s| s.success()) {
            tracing::warn!(
                ?sent,
                "SIGTERM could not be sent; the grace runs out to SIGKILL"
            );
        }
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => Ok(s?),
        Err(_) => {
            tracing::warn!("the job outlived its grace: SIGKILL");
            child.kill().await?;
            Ok(child.wait().await?)
        }
    }
}

fn ended_of(status: std::process::ExitStatus) -> Ended {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => Ended::Exited(c),
        (None, Some(s)) => Ended::Signalled(s),
        (None, None) => Ended::Exited(-1),
    }
}

/// Each line of the child's `stream` as a log line of the worker's (so shipped with them).
async fn relay(stream: impl AsyncRead + Unpin, name: &'static str, tail: Option<Tail>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        // Redacted whole, then cut: a cut could leave part of a secret no needle matches.
        let line: String = crate::agent::redact::scrub(&line)
            .chars()
            .take(LINE_KEPT)
            .collect();
        if let Some(t) = &tail {
            t.push(&line);
        }
        tracing::info!(stream = name, job = %line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(script: &str) -> Job {
        Job {
            command: vec!["sh".into(), "-c".into(), script.into()],
            grace: Duration::from_secs(5),
            env: run_env(&Place {
                run_id: "r1",
                attempt: 2,
                worker: 3,
                workers: 4,
            }),
            workdir: ".".into(),
            run_as: None,
        }
    }

    #[tokio::test]
    async fn a_job_run_as_another_user_has_its_ids_and_no_credentials_to_inherit() {
        // Only root may change its user: elsewhere the refusal is the proof.
        let root = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
        let dir = std::env::temp_dir().join(format!("ephemera-run-as-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let open = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
        std::fs::set_permissions(&dir, open).unwrap();
        let mut j = job(
            r#"echo "$(id -u):$(id -g) ${AWS_SESSION_TOKEN:-none} $AWS_EC2_METADATA_DISABLED" >&2"#,
        );
        j.workdir = dir.clone();
        j.env
            .push(("AWS_SESSION_TOKEN".into(), "kept-by-the-plan".into()));
        j.run_as = Some(RunAs {
            uid: 65534,
            gid: 65534,
        });
        let started = run(&j, &CancellationToken::new()).await;
        std::fs::remove_dir_all(&dir).ok();
        if !root {
            assert!(started.is_err(), "a non-root worker changed its user");
            return;
        }
        let o = started.unwrap();
        assert!(o.ended.succeeded(), "{o:?}");
        // The plan's own variables are the plan's (the agent gives the job its run's session);
        // what the worker inherited is not passed on.
        assert_eq!(
            o.stderr_tail,
            ["65534:65534 kept-by-the-plan true"],
            "{o:?}"
        );
    }

    #[tokio::test]
    async fn a_job_that_exits_zero_succeeds_and_sees_its_attempt() {
        let o = run(
            &job(
                r#"test "$EPHEMERA_ATTEMPT" = 2 && test "$EPHEMERA_RESUMED" = true && test "$EPHEMERA_WORKER/$EPHEMERA_WORKERS" = 3/4"#,
            ),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(o.ended.succeeded(), "{o:?}");
        assert!(!o.stopped);
    }

    #[tokio::test]
    async fn a_failure_keeps_the_last_lines_of_stderr() {
        let o = run(
            &job("for i in $(seq 1 30); do echo line $i >&2; done; exit 3"),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(o.ended, Ended::Exited(3));
        assert_eq!(o.stderr_tail.len(), TAIL_LINES);
        assert_eq!(o.stderr_tail.last().map(String::as_str), Some("line 30"));
        let cause = failure_cause("sh -c …", &o);
        assert!(
            cause.starts_with("`sh -c …` exited with status 3 after"),
            "{cause}"
        );
        assert!(cause.ends_with("line 11\nline 12\nline 13\nline 14\nline 15\nline 16\nline 17\nline 18\nline 19\nline 20\nline 21\nline 22\nline 23\nline 24\nline 25\nline 26\nline 27\nline 28\nline 29\nline 30"), "{cause}");
    }

    /// Cancels `stop` once the job has said (by creating `ready`) that its trap is set: a
    /// SIGTERM sent before the shell runs `trap` ends it with the signal's default (CI saw
    /// Signalled(15) where the test meant the trap to hold).
    fn stop_when_ready(ready: std::path::PathBuf, stop: CancellationToken) {
        tokio::spawn(async move {
            while !ready.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop.cancel();
        });
    }

    #[tokio::test]
    async fn a_stop_sends_sigterm_and_a_job_that_ignores_it_is_killed_after_its_grace() {
        let dir = std::env::temp_dir().join(format!("ephemera-supervise-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Traps SIGTERM and exits 7: the job's own ending is kept.
        let ready = dir.join("polite");
        let stop = CancellationToken::new();
        let polite = job(&format!(
            "trap 'echo checkpointed >&2; exit 7' TERM; touch {}; while true; do sleep 0.1; done",
            ready.display()
        ));
        stop_when_ready(ready, stop.clone());
        let o = run(&polite, &stop).await.unwrap();
        assert!(o.stopped);
        assert_eq!(o.ended, Ended::Exited(7));
        assert_eq!(o.stderr_tail, vec!["checkpointed".to_string()]);

        // Ignores it: SIGKILL once the grace is over.
        let ready = dir.join("stubborn");
        let stop = CancellationToken::new();
        let mut stubborn = job(&format!(
            "trap '' TERM; touch {}; while true; do sleep 0.1; done",
            ready.display()
        ));
        stubborn.grace = Duration::from_millis(300);
        stop_when_ready(ready, stop.clone());
        let o = run(&stubborn, &stop).await.unwrap();
        assert!(o.stopped);
        assert_eq!(o.ended, Ended::Signalled(9));
        assert_eq!(o.ended.code(), 137);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_command_line_reads_as_a_shell_would_take_it() {
        let c: Vec<String> = ["python3", "job.py", "--in", "s3://b/k", "it's"]
            .map(String::from)
            .to_vec();
        assert_eq!(command_line(&c), r"python3 job.py --in s3://b/k 'it'\''s'");
    }
}

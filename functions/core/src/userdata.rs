//! The instance's user data: fetch the worker and start it as a service. It holds no secret: the
//! worker reads its task token and database secret with its instance role at run time.

/// Quotes one word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What the user data starts on one instance: where to fetch the worker, and its command line.
pub struct WorkerLaunch<'a> {
    /// The stack's region (`AWS_REGION` for the worker and the AWS CLI).
    pub region: &'a str,
    /// `worker.artifact`: the `s3://` URL of the worker binary.
    pub artifact: &'a str,
    /// `worker.args`: the worker's own arguments, then a job's command after `--`.
    pub args: &'a [String],
    /// The RunSpec's `run_id` (`--run-id`).
    pub run_id: &'a str,
    /// Which of the run's workers (1..=workers) this instance is: a job takes its share by it.
    pub slot: u32,
    /// How many workers the run has (`worker.count`), for a job's `--workers`.
    pub workers: u32,
    /// Which of its worker's launches this instance is (`--attempt`).
    pub attempt: u32,
    /// `limits.heartbeat_seconds` (`--heartbeat-seconds`).
    pub heartbeat_seconds: u64,
    /// The run's SSM prefix, where the worker finds its task token and writes "started"
    /// (`--ssm-prefix`).
    pub ssm_prefix: &'a str,
    /// The stack's worker log group; None leaves the worker's default.
    pub log_group: Option<&'a str>,
    /// The runtime the run's cap granted this attempt, when less than
    /// `limits.max_runtime_seconds` (`crate::budget::grant`): the worker stops its work this
    /// long after it starts, as at a Spot notice, and reports `Worker.BudgetExhausted`.
    pub budget_seconds: Option<u64>,
    /// launch-worker hands the instance its run's session of the run role: the worker waits
    /// for it and signs its S3 and log calls with it (`--run-session`).
    pub run_session: bool,
}

/// The user a job's command runs as (`exec --run-as`), made by the user data.
pub const JOB_USER: &str = "ephemera-job";

/// The addresses closed to the job's user: IMDS (the instance role, which reads the run's task
/// token, and the user data) and the ECS agent's credentials endpoint (the ECS-optimized AMIs
/// run one). IMDS's IPv6 address is not enabled at launch (`HttpProtocolIpv6` is left
/// disabled), so it needs no rule.
pub const CLOSED_TO_THE_JOB: [&str; 2] = ["169.254.169.254", "169.254.170.2"];

/// The lines that make the job's user and close the instance's credentials to it, before the
/// worker starts: a rule that cannot be set fails the bootstrap (so the instance shuts down)
/// rather than run a job that can reach the instance role.
fn job_user_lines() -> String {
    let mut s = format!(
        "# The job runs as {JOB_USER} (no login, no home), which cannot reach the instance's\n\
         # credentials: IMDS, whose role reads the run's task token, is closed to it.\n\
         id -u {JOB_USER} >/dev/null 2>&1 || useradd --system --no-create-home --shell /sbin/nologin {JOB_USER}\n\
         command -v iptables >/dev/null || dnf install -y -q iptables-nft\n"
    );
    for addr in CLOSED_TO_THE_JOB {
        s.push_str(&format!(
            "iptables -I OUTPUT -d {addr} -m owner --uid-owner {JOB_USER} -j REJECT\n"
        ));
    }
    s
}

/// The user data script: installs the worker, writes its command line and starts it as a systemd
/// service that shuts the instance down when the worker ends; a job's user and its firewall rules
/// first.
pub fn render(w: &WorkerLaunch<'_>) -> String {
    let (cmd, a_job) = command_line(w);
    format!(
        r#"#!/bin/bash
# ephemera worker bootstrap. No secrets here: the worker reads them with its instance role.
set -euo pipefail
# A bootstrap that fails (the download, say) must not leave a billed, idle instance until the
# boot deadline: shut down, which terminates it (InstanceInitiatedShutdownBehavior=terminate).
trap 'echo "ephemera: bootstrap failed at line $LINENO; shutting down" >&2; /sbin/shutdown -h now' ERR
export AWS_REGION={region} AWS_DEFAULT_REGION={region}
install -d -m 0755 /opt/ephemera
# A job's working directory: its --fetch inputs, checkpoints and outputs are relative to it.
install -d -m 0700 /var/lib/ephemera/work
{job_user}# The ECS-optimized images (for a job's container image: docs/container.md) are built on AL2023's
# minimal image, which has no AWS CLI: from the distribution's own repository, then.
command -v aws >/dev/null || dnf install -y -q awscli-2
# S3 can fail transiently: a few tries before giving up.
for try in 1 2 3 4 5; do
  aws s3 cp {artifact} /opt/ephemera/ephemera-worker && break
  [ "$try" -lt 5 ] || false
  sleep $((try * 5))
done
chmod 0755 /opt/ephemera/ephemera-worker
cat > /opt/ephemera/run.sh <<'RUN'
#!/bin/bash
exec {cmd}
RUN
chmod 0755 /opt/ephemera/run.sh
cat > /etc/systemd/system/ephemera-worker.service <<'UNIT'
[Unit]
Description=ephemera worker
After=network-online.target
[Service]
Environment=AWS_REGION={region}
ExecStart=/opt/ephemera/run.sh
WorkingDirectory=/var/lib/ephemera/work
# Spot gives two minutes' notice: time to release partitions. SIGTERM to the worker only (mixed):
# it stops a job's command itself, with the job's grace, then saves its checkpoint and reports.
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=115
# Whatever happens to the worker, the instance does not outlive it (shutdown = terminate).
ExecStopPost=/sbin/shutdown -h +3
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl start ephemera-worker
"#,
        region = shell_quote(w.region),
        artifact = shell_quote(w.artifact),
        cmd = cmd.join(" "),
        job_user = if a_job {
            job_user_lines()
        } else {
            String::new()
        },
    )
}

/// The worker's command line, each word quoted for the shell, and whether it runs a job
/// (`exec`), which runs as the job's user.
fn command_line(w: &WorkerLaunch<'_>) -> (Vec<String>, bool) {
    let mut cmd = vec!["/opt/ephemera/ephemera-worker".to_string()];
    // `exec [options] -- <command>`: the link's options go before `--`, the job's after.
    let (own, job) = match w.args.iter().position(|a| a == "--") {
        Some(i) => w.args.split_at(i),
        None => (w.args, &[][..]),
    };
    cmd.extend(own.iter().map(|a| shell_quote(a)));
    cmd.extend([
        "--run-id".to_string(),
        shell_quote(w.run_id),
        "--attempt".to_string(),
        w.attempt.to_string(),
        "--ssm-prefix".to_string(),
        shell_quote(w.ssm_prefix),
        "--heartbeat-seconds".to_string(),
        w.heartbeat_seconds.to_string(),
    ]);
    if let Some(g) = w.log_group {
        cmd.extend(["--log-group".to_string(), shell_quote(g)]);
    }
    if let Some(b) = w.budget_seconds {
        cmd.extend(["--budget-seconds".to_string(), b.to_string()]);
    }
    if w.run_session {
        cmd.push("--run-session".to_string());
    }
    let a_job = own.first().map(String::as_str) == Some("exec");
    if a_job {
        cmd.extend([
            "--worker".to_string(),
            w.slot.to_string(),
            "--workers".to_string(),
            w.workers.to_string(),
            "--run-as".to_string(),
            JOB_USER.to_string(),
        ]);
    }
    cmd.extend(job.iter().map(|a| shell_quote(a)));
    (cmd, a_job)
}

/// The worker's command line as the instance runs it, read back from the script `render` wrote:
/// what stands in for the instance when EC2 is played locally (`make demo`) starts.
pub fn worker_command(script: &str) -> Option<Vec<String>> {
    let line = script
        .lines()
        .find_map(|l| l.strip_prefix("exec /opt/ephemera/"))?;
    shlex::split(&format!("/opt/ephemera/{line}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_reads_back_as_rendered() {
        let args: Vec<String> = ["run", "--stages", "a b", "--export", "s3://b/it's/"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let s = render(&WorkerLaunch {
            region: "eu-west-1",
            artifact: "s3://bkt/w",
            args: &args,
            run_id: "r 1",
            slot: 1,
            workers: 1,
            attempt: 3,
            heartbeat_seconds: 60,
            ssm_prefix: "/ephemera/runs/r 1",
            log_group: Some("/ephemera/prod/workers"),
            budget_seconds: None,
            run_session: false,
        });
        let cmd = worker_command(&s).unwrap();
        assert_eq!(cmd[0], "/opt/ephemera/ephemera-worker");
        assert_eq!(&cmd[1..6], &args[..]);
        assert_eq!(
            &cmd[6..],
            [
                "--run-id",
                "r 1",
                "--attempt",
                "3",
                "--ssm-prefix",
                "/ephemera/runs/r 1",
                "--heartbeat-seconds",
                "60",
                "--log-group",
                "/ephemera/prod/workers"
            ]
        );
        assert_eq!(worker_command("#!/bin/bash\necho hi\n"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote("indicators,regression"),
            "indicators,regression"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn script_starts_the_worker_with_its_arguments() {
        let args = vec!["run".to_string(), "--stages".to_string(), "a b".to_string()];
        let s = render(&WorkerLaunch {
            region: "eu-west-1",
            artifact: "s3://bkt/w",
            args: &args,
            run_id: "r1",
            slot: 1,
            workers: 1,
            attempt: 2,
            heartbeat_seconds: 60,
            ssm_prefix: "/ephemera/runs/r1",
            log_group: None,
            budget_seconds: Some(600),
            run_session: true,
        });
        assert!(s.starts_with("#!/bin/bash\n"));
        assert!(s.contains("aws s3 cp s3://bkt/w /opt/ephemera/ephemera-worker"));
        assert!(s.contains(
            "exec /opt/ephemera/ephemera-worker run --stages 'a b' --run-id r1 --attempt 2 --ssm-prefix /ephemera/runs/r1 --heartbeat-seconds 60 --budget-seconds 600 --run-session"
        ));
        // The run's session is in a parameter of the instance's own, never here: anything on
        // the instance that reaches IMDS reads the user data.
        assert!(!s.to_lowercase().contains("token"));
        assert!(!s.contains("AWS_ACCESS_KEY_ID") && !s.contains("ASIA"));
    }

    fn launch(args: &[String]) -> WorkerLaunch<'_> {
        WorkerLaunch {
            region: "eu-west-1",
            artifact: "s3://bkt/w",
            args,
            run_id: "r1",
            slot: 3,
            workers: 4,
            attempt: 1,
            heartbeat_seconds: 60,
            ssm_prefix: "/ephemera/runs/r1",
            log_group: None,
            budget_seconds: None,
            run_session: false,
        }
    }

    #[test]
    fn a_failed_bootstrap_shuts_the_instance_down() {
        let s = render(&launch(&[]));
        let trap = s.find("\ntrap '").expect("an ERR trap") + 1;
        let download = s.find("aws s3 cp").unwrap();
        assert!(trap < download, "the trap is set before the download");
        assert!(s[trap..].starts_with("trap '") && s.contains("/sbin/shutdown -h now' ERR"));
    }

    /// `script` run by bash with each of `stubs` (command, exit code) in place of the real
    /// command: each stub logs its name and arguments, a line a call, and exits with its code;
    /// `/sbin/shutdown` is the `shutdown` stub. Whether bash succeeded, and the calls.
    fn run_stubbed(tag: &str, script: &str, stubs: &[(&str, i32)]) -> (bool, String) {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("ephemera-ud-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("calls");
        for (name, code) in stubs {
            let p = dir.join(name);
            std::fs::File::create(&p)
                .unwrap()
                .write_all(
                    format!(
                        "#!/bin/sh\necho {name} \"$@\" >> {}\nexit {code}\n",
                        log.display()
                    )
                    .as_bytes(),
                )
                .unwrap();
            std::process::Command::new("chmod")
                .arg("+x")
                .arg(&p)
                .status()
                .unwrap();
        }
        let script = script.replace(
            "/sbin/shutdown",
            &dir.join("shutdown").display().to_string(),
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("PATH", format!("{}:/usr/bin:/bin", dir.display()))
            .output()
            .unwrap();
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        (out.status.success(), calls)
    }

    /// The script run by bash with `aws` failing: it must try five times, then shut down.
    #[test]
    fn the_script_really_shuts_down_when_the_download_keeps_failing() {
        let script = render(&launch(&[]))
            .replace("install -d -m 0755 /opt/ephemera", "true")
            .replace("install -d -m 0700 /var/lib/ephemera/work", "true");
        let (ok, calls) = run_stubbed(
            "download",
            &script,
            &[("aws", 1), ("sleep", 0), ("shutdown", 0)],
        );
        assert!(!ok);
        assert_eq!(calls.matches("aws").count(), 5, "{calls}");
        assert!(calls.trim_end().ends_with("shutdown -h now"), "{calls}");
    }

    #[test]
    fn a_jobs_command_comes_after_the_links_options() {
        let args: Vec<String> = [
            "exec", "--grace", "60", "--", "python3", "job.py", "--step", "2",
        ]
        .map(String::from)
        .to_vec();
        let script = render(&launch(&args));
        let line = script
            .lines()
            .find(|l| l.starts_with("exec /opt/ephemera/ephemera-worker"))
            .unwrap();
        let (before, after) = line.split_once(" -- ").unwrap();
        assert!(
            before.starts_with("exec /opt/ephemera/ephemera-worker exec --grace 60 --run-id"),
            "{line}"
        );
        assert!(
            before.contains("--ssm-prefix") && before.contains("--attempt"),
            "{line}"
        );
        assert_eq!(after, "python3 job.py --step 2");
        // The job runs in a directory of its own, and only the worker hears systemd's SIGTERM:
        // it gives the command its grace and saves the checkpoint before the stop timeout.
        assert!(script.contains("\nWorkingDirectory=/var/lib/ephemera/work\n"));
        assert!(script.contains("\nKillMode=mixed\n"));
    }

    #[test]
    fn a_job_runs_as_its_own_user_with_imds_closed_to_it_and_the_feature_worker_does_not() {
        let args: Vec<String> = ["exec", "--", "sh", "-c", "true"]
            .map(String::from)
            .to_vec();
        let script = render(&launch(&args));
        let line = script
            .lines()
            .find(|l| l.starts_with("exec /opt/ephemera/ephemera-worker"))
            .unwrap();
        let (own, _) = line.split_once(" -- ").unwrap();
        assert!(own.ends_with("--run-as ephemera-job"), "{line}");
        let trap = script.find("\ntrap '").unwrap();
        let user = script
            .find("useradd --system --no-create-home --shell /sbin/nologin ephemera-job")
            .expect("the job's user made");
        let start = script.find("systemctl start ephemera-worker").unwrap();
        for addr in ["169.254.169.254", "169.254.170.2"] {
            let rule = script
                .find(&format!(
                    "iptables -I OUTPUT -d {addr} -m owner --uid-owner ephemera-job -j REJECT\n"
                ))
                .unwrap_or_else(|| panic!("no rule for {addr}"));
            // Under the ERR trap (a rule that fails shuts the instance down), before the job.
            assert!(trap < user && user < rule && rule < start, "{script}");
        }
        let feature = render(&launch(&["run".to_string()]));
        assert!(!feature.contains("ephemera-job") && !feature.contains("iptables"));
    }

    /// The job's lines run by bash with `iptables` failing: the instance shuts down and the
    /// worker never starts.
    #[test]
    fn a_firewall_rule_that_cannot_be_set_shuts_the_instance_down() {
        let args: Vec<String> = ["exec", "--", "true"].map(String::from).to_vec();
        let (ok, calls) = run_stubbed(
            "firewall",
            &render(&launch(&args)),
            &[
                ("id", 1),
                ("useradd", 0),
                ("iptables", 3),
                ("shutdown", 0),
                ("aws", 0),
                ("systemctl", 0),
                ("install", 0),
            ],
        );
        assert!(!ok);
        assert!(calls.contains("useradd --system"), "{calls}");
        assert!(
            calls.contains("iptables -I OUTPUT -d 169.254.169.254"),
            "{calls}"
        );
        assert!(calls.trim_end().ends_with("shutdown -h now"), "{calls}");
        assert!(
            !calls.contains("aws s3 cp") && !calls.contains("systemctl"),
            "{calls}"
        );
    }
}

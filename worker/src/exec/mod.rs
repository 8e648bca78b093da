//! `exec`: any command as the run's worker. [`job`] runs one attempt around the command:
//! [`fetch`] puts its inputs in place, [`checkpoint`] restores and keeps its checkpoint,
//! [`supervise`] runs it (SIGTERM, grace, SIGKILL when stopped), [`publish`] stores its outputs.
//! Here: the command line, the job as a [`Workload`] of the agent, and the job run alone.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ephemera_contract::Summary;
use tokio_util::sync::CancellationToken;

use crate::agent::{on_sigterm, LinkArgs, Worked, Workload};
use crate::store;

pub mod checkpoint;
pub mod container;
pub mod fetch;
pub mod job;
pub mod job_user;
pub mod publish;
pub mod supervise;

/// `exec`'s command line.
#[derive(clap::Args, Debug, Clone)]
#[command(mut_arg("log_group", |a| a.help(
    "The CloudWatch Logs group the command's lines are shipped to; empty ships nothing"
)))]
pub struct ExecArgs {
    /// Seconds between SIGTERM and SIGKILL; within the Spot notice's two minutes.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=110))]
    pub grace: u64,
    /// The run's id, told to the command (EPHEMERA_RUN_ID).
    #[arg(long, default_value = "local")]
    pub run_id: String,
    /// Which of the run's workers this is (EPHEMERA_WORKER), of how many (EPHEMERA_WORKERS).
    #[arg(long, default_value_t = 1)]
    pub worker: u32,
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    #[command(flatten)]
    pub link: LinkArgs,
    /// After the command exits 0: every file under this directory is stored under --to with
    /// a manifest (key, bytes, SHA-256) that verify-completion checks.
    #[arg(long, requires = "to")]
    pub outputs: Option<PathBuf>,
    /// Where --outputs go: s3://bucket/prefix/ (the RunSpec's expect.export_prefix) or a
    /// directory.
    #[arg(long, requires = "outputs")]
    pub to: Option<String>,
    /// Where the command runs; --fetch, --checkpoint and --outputs are relative to it.
    #[arg(long, default_value = ".")]
    pub workdir: PathBuf,
    /// Before the command starts: an archive (s3://bucket/job.tar.gz, .tgz, .tar) unpacked
    /// into --workdir, or every object under a prefix (s3://bucket/inputs/) copied there.
    /// May be given more than once.
    #[arg(long)]
    pub fetch: Vec<String>,
    /// A directory the command keeps its checkpoints in (EPHEMERA_CHECKPOINT): saved under
    /// --checkpoint-to every --checkpoint-every seconds and when the instance is going away,
    /// and put back before the command starts on the next attempt.
    #[arg(long, requires = "checkpoint_to")]
    pub checkpoint: Option<PathBuf>,
    /// Where checkpoints are saved: s3://bucket/prefix/ (the export bucket), under
    /// <run id>/worker-<n>/; or a directory.
    #[arg(long, requires = "checkpoint")]
    pub checkpoint_to: Option<String>,
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub checkpoint_every: u64,
    /// Keep the checkpoints after the command succeeded (by default they are deleted once
    /// its outputs are stored).
    #[arg(long, requires = "checkpoint")]
    pub keep_checkpoints: bool,
    /// Run the command in this container image (a private ECR repository's, pulled with the
    /// instance role's credentials, or any registry's) with the host's podman or docker: the
    /// working, checkpoint and outputs directories mounted at their own paths, the
    /// environment passed, a stop delivered to the container. The RunSpec's `job.image`.
    #[arg(long)]
    pub image: Option<String>,
    /// Hand the instance's GPUs to the image's container (a GPU type; the RunSpec's types).
    #[arg(long, requires = "image")]
    pub gpus: bool,
    /// The container runtime; by default the one on the host (podman, else docker).
    #[arg(long, requires = "image")]
    pub runtime: Option<container::Runtime>,
    /// A secret the command gets as an environment variable: NAME=ARN of a Secrets Manager
    /// secret or an SSM SecureString parameter (the RunSpec's `job.secrets`). Read once before
    /// the command starts; its value is never on a command line and is redacted from every
    /// line of job text. May be given more than once.
    #[arg(long = "secret", value_name = "NAME=ARN")]
    pub secrets: Vec<crate::agent::secrets::Named>,
    /// Exit codes after which the command runs again on this instance, its working and
    /// checkpoint directories as it left them (the RunSpec's `job.retry.on_exit_codes`;
    /// 128 + N is a kill by signal N).
    #[arg(long = "retry-on", value_delimiter = ',', value_parser = clap::value_parser!(i32).range(1..=255))]
    pub retry_on: Vec<i32>,
    /// How many times at most (`job.retry.max`).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=ephemera_contract::summary::JOB_RETRIES_MAX as i64))]
    pub retry_max: u32,
    /// Seconds between a failed run and the next (`job.retry.backoff_seconds`).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub retry_backoff: u64,
    /// The user the command runs as (a name, or UID:GID; never root): its directories are
    /// handed to it, it holds the run's session alone (a config file with a
    /// `credential_process`, renewed by the agent) and none of the instance's credentials. The
    /// instance's user data makes `ephemera-job` and closes IMDS to it.
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

impl ExecArgs {
    /// The job's plan: what to do around the command.
    pub fn plan(&self) -> Result<job::Plan> {
        let outputs = match (&self.outputs, &self.to) {
            (Some(dir), Some(to)) => Some((dir.clone(), store::Target::parse(to)?)),
            _ => None,
        };
        let checkpoint = match (&self.checkpoint, &self.checkpoint_to) {
            (Some(dir), Some(to)) => Some(job::Checkpointing {
                dir: dir.clone(),
                to: store::Target::parse(to).context("--checkpoint-to")?,
                every: Duration::from_secs(self.checkpoint_every),
                keep: self.keep_checkpoints,
            }),
            _ => None,
        };
        Ok(job::Plan {
            job: supervise::Job {
                command: self.command.clone(),
                grace: Duration::from_secs(self.grace),
                env: supervise::run_env(&supervise::Place {
                    run_id: &self.run_id,
                    attempt: self.link.attempt,
                    worker: self.worker,
                    workers: self.workers,
                }),
                workdir: self.workdir.clone(),
                run_as: self.run_as.as_deref().map(job_user::resolve).transpose()?,
            },
            fetch: self
                .fetch
                .iter()
                .map(|f| fetch::Source::parse(f))
                .collect::<Result<_>>()?,
            checkpoint,
            outputs,
            container: self.container()?,
            secrets: self.secrets.clone(),
            retry: job::Retry {
                on: self.retry_on.clone(),
                max: self.retry_max,
                backoff: Duration::from_secs(self.retry_backoff),
            },
            run_id: self.run_id.clone(),
            worker: self.worker,
            attempt: self.link.attempt,
        })
    }
}

impl ExecArgs {
    /// The image to run the command in, with the runtime named or found on the host.
    fn container(&self) -> Result<Option<container::Container>> {
        let Some(image) = &self.image else {
            return Ok(None);
        };
        // Without either, docker is named: its pull fails before the command starts, which the
        // attempt reports (an error here would end the worker before it reported anything).
        let runtime = match self.runtime {
            Some(r) => r,
            None => container::Runtime::on_host().unwrap_or_else(|e| {
                tracing::error!(error = %e, "no container runtime found");
                container::Runtime::Docker
            }),
        };
        Ok(Some(container::Container {
            image: image.clone(),
            runtime,
            gpus: self.gpus,
        }))
    }
}

/// The job alone (no run): the command's own ending, its outputs stored, the manifest's URL
/// printed.
pub async fn alone(plan: &job::Plan) -> Result<()> {
    let plan = &with_secrets(plan).await?;
    let ready = job::prepare(plan).await?;
    let stop = CancellationToken::new();
    let sigterm = on_sigterm(stop.clone(), STOPPING);
    let (o, retried) = job::run_retrying(plan, &ready, &stop).await?;
    sigterm.abort();
    anyhow::ensure!(
        o.ended.succeeded(),
        "{}{}",
        supervise::failure_cause(&supervise::command_line(&plan.job.command), &o),
        job::retried_text(&retried)
    );
    if let Some(manifest) = job::publish(plan).await? {
        println!("{manifest}");
    }
    Ok(())
}

const STOPPING: &str = "SIGTERM: stopping the job";

/// The job as the run's worker: it waits for the token, then its inputs, its checkpoint and
/// its command; a success is delivered once its outputs are stored.
impl Workload for job::Plan {
    const STARTS_BEFORE_TOKEN: bool = false;
    const ON_SIGTERM: &'static str = STOPPING;

    fn run_id(&self) -> &str {
        &self.run_id
    }

    fn work(&self, stop: CancellationToken) -> impl Future<Output = Worked> + Send + 'static {
        let plan = self.clone();
        async move {
            let plan = match with_secrets(&plan).await {
                Ok(p) => p,
                Err(e) => {
                    return Worked::Failed {
                        cause: format!("before the command started: {e}"),
                    }
                }
            };
            let outcome = match job::prepare(&plan).await {
                Ok(ready) => job::run_retrying(&plan, &ready, &stop).await,
                Err(e) => Err(e.context("before the command started")),
            };
            let (o, retried) = match outcome {
                Ok(o) => o,
                Err(e) => {
                    return Worked::Failed {
                        cause: format!("{e:#}"),
                    }
                }
            };
            let command = supervise::command_line(&plan.job.command);
            let spot = format!(
                ": the job was stopped ({}) and runs again on the next attempt",
                o.ended
            );
            if o.ended.succeeded() && !o.stopped {
                Worked::Completed {
                    summary: summary(&plan.run_id, &command, o.seconds, retried),
                    spot,
                }
            } else {
                Worked::Unfinished {
                    cause: format!(
                        "{}{}",
                        supervise::failure_cause(&command, &o),
                        job::retried_text(&retried)
                    ),
                    spot,
                }
            }
        }
    }

    async fn deliver(&self, summary: Summary) -> Result<Summary, String> {
        match job::publish(self).await {
            Ok(manifest) => Ok(Summary {
                manifest,
                ..summary
            }),
            Err(e) => Err(format!(
                "`{}` exited 0, but its outputs could not be stored: {e:#}",
                supervise::command_line(&self.job.command)
            )),
        }
    }
}

/// `plan` with its secrets read into the job's environment (the container's too: it is passed
/// by name), before anything else of the attempt is done.
async fn with_secrets(plan: &job::Plan) -> Result<job::Plan, crate::agent::secrets::Unreadable> {
    let mut plan = plan.clone();
    let env = crate::agent::secrets::read_from_aws(&plan.secrets).await?;
    plan.job.env.extend(env);
    Ok(plan)
}

/// A job's summary: its command (cut to what the run document keeps) and how long it ran; the
/// manifest once its outputs are stored.
fn summary(
    run_id: &str,
    command: &str,
    seconds: f64,
    retries: Vec<ephemera_contract::summary::Retried>,
) -> Summary {
    Summary {
        run_id: run_id.to_string(),
        partitions_done: 0,
        partitions_failed: 0,
        rows_in: 0,
        rows_out: 0,
        processed_here: 0,
        stages: vec![],
        seconds,
        manifest: None,
        validation: None,
        job: Some(ephemera_contract::summary::Job {
            command: command
                .chars()
                .take(ephemera_contract::summary::JOB_COMMAND_KEPT)
                .collect(),
            exit_code: 0,
            seconds,
            retries,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Exec {
        #[command(flatten)]
        args: ExecArgs,
    }

    #[test]
    fn the_command_line_becomes_the_jobs_plan() {
        let exec = Exec::try_parse_from([
            "exec",
            "--run-id",
            "r1",
            "--attempt",
            "2",
            "--worker",
            "3",
            "--workers",
            "4",
            "--grace",
            "60",
            "--workdir",
            "/w",
            "--fetch",
            "s3://b/in/",
            "--checkpoint",
            "ckpt",
            "--checkpoint-to",
            "/keep",
            "--outputs",
            "out",
            "--to",
            "s3://b/out/",
            "--",
            "python3",
            "job.py",
            "--step",
            "2",
        ])
        .unwrap();
        assert!(
            !exec.args.link.ships_logs(),
            "no run to ship to without --ssm-prefix"
        );
        let plan = exec.args.plan().unwrap();
        assert_eq!(plan.job.command, ["python3", "job.py", "--step", "2"]);
        assert_eq!(plan.job.grace, Duration::from_secs(60));
        assert_eq!(plan.job.workdir, PathBuf::from("/w"));
        assert_eq!((plan.run_id.as_str(), plan.worker), ("r1", 3));
        for (k, v) in [
            ("EPHEMERA_RUN_ID", "r1"),
            ("EPHEMERA_ATTEMPT", "2"),
            ("EPHEMERA_RESUMED", "true"),
            ("EPHEMERA_WORKER", "3"),
            ("EPHEMERA_WORKERS", "4"),
        ] {
            assert!(
                plan.job.env.contains(&(k.to_string(), v.to_string())),
                "{k}={v} in {:?}",
                plan.job.env
            );
        }
        assert_eq!(plan.fetch.len(), 1);
        let c = plan.checkpoint.unwrap();
        assert_eq!(c.dir, PathBuf::from("ckpt"));
        assert_eq!(c.to, store::Target::Dir("/keep".into()));
        assert_eq!(c.every, Duration::from_secs(300));
        let (dir, to) = plan.outputs.unwrap();
        assert_eq!(dir, PathBuf::from("out"));
        assert_eq!(to, store::Target::parse("s3://b/out/").unwrap());
    }

    #[test]
    fn an_image_puts_the_command_in_a_container_of_the_runtime_named() {
        let exec = Exec::try_parse_from([
            "exec",
            "--image",
            "127.0.0.1:5000/ephemera/job:demo",
            "--gpus",
            "--runtime",
            "docker",
            "--",
            "python3",
            "job.py",
        ])
        .unwrap();
        let plan = exec.args.plan().unwrap();
        assert_eq!(
            plan.container,
            Some(container::Container {
                image: "127.0.0.1:5000/ephemera/job:demo".into(),
                runtime: container::Runtime::Docker,
                gpus: true,
            })
        );
        assert_eq!(
            plan.job.command,
            ["python3", "job.py"],
            "the command runs in the image"
        );
        assert!(
            Exec::try_parse_from(["exec", "--gpus", "--", "true"]).is_err(),
            "GPUs are handed to an image's container only"
        );
    }

    #[test]
    fn the_link_ships_logs_only_to_a_run_and_a_group() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["exec"];
            args.extend_from_slice(extra);
            args.extend(["--", "true"]);
            Exec::try_parse_from(args).unwrap().args.link
        };
        let linked = parse(&["--ssm-prefix", "/ephemera/runs/r1/"]);
        assert!(linked.ships_logs());
        assert_eq!(linked.log_group, ephemera_contract::logs::WORKER_LOG_GROUP);
        assert!(!parse(&["--ssm-prefix", "/p/", "--log-group", ""]).ships_logs());
        assert!(!parse(&[]).ships_logs());
    }
}

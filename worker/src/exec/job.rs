//! A job's attempt around its command (`exec`): its inputs fetched and its last checkpoint put
//! back before the command starts, the checkpoint kept while it runs and saved once more when
//! it is stopped, its outputs published after it exits 0. The link to the run (started, token,
//! heartbeat, report) is the caller's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ephemera_contract::manifest::worker_folder;
use ephemera_contract::summary::Retried;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{self, Checkpoint};
use super::container::{self, Container};
use super::fetch::{self, Source};
use super::{publish, supervise};
use crate::store::Target;

/// Where a job's checkpoints are kept and how often.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    pub dir: PathBuf,
    pub to: Target,
    pub every: Duration,
    /// Keep the checkpoints after the job succeeded (`--keep-checkpoints`); by default they
    /// are deleted once its outputs are stored.
    pub keep: bool,
}

/// Everything `exec` was asked to do around the command.
#[derive(Debug, Clone)]
pub struct Plan {
    pub job: supervise::Job,
    pub run_id: String,
    pub worker: u32,
    /// Which attempt this is: the checkpoint's fence (an earlier attempt never writes over a
    /// later one's).
    pub attempt: u32,
    pub fetch: Vec<Source>,
    pub checkpoint: Option<Checkpointing>,
    /// After a successful exit: (the directory, where its files go).
    pub outputs: Option<(PathBuf, Target)>,
    /// The image the command runs in (`--image`), or None: on the host.
    pub container: Option<Container>,
    /// Its secrets (`--secret`), read into `job.env` before it starts.
    pub secrets: Vec<crate::agent::secrets::Named>,
    /// Which failures run the command again (`--retry-on`).
    pub retry: Retry,
}

/// The RunSpec's `job.retry`: the exit codes worth another run, how many, after how long.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retry {
    pub on: Vec<i32>,
    pub max: u32,
    pub backoff: Duration,
}

impl Retry {
    /// Whether a run that ended so, after `done` retries, is run again: it ended on its own (a
    /// stopped job is the next attempt's, on another instance) with a listed code, and retries
    /// are left.
    pub fn again(&self, o: &supervise::Outcome, done: usize) -> bool {
        !o.stopped
            && !o.ended.succeeded()
            && self.on.contains(&o.ended.code())
            && done < self.max as usize
    }
}

/// `, after 2 retries (exit 75, exit 75)`: what a failure's cause adds when it was retried.
pub fn retried_text(retried: &[Retried]) -> String {
    if retried.is_empty() {
        return String::new();
    }
    let codes: Vec<String> = retried
        .iter()
        .map(|r| format!("exit {}", r.exit_code))
        .collect();
    format!(
        ", after {} retr{} on this instance ({})",
        retried.len(),
        if retried.len() == 1 { "y" } else { "ies" },
        codes.join(", ")
    )
}

/// [`run`], again while [`Retry::again`] says so, waiting the backoff between (a stop during
/// it ends the attempt as stopped: the next attempt resumes from the checkpoint). The last
/// run's outcome, and the runs before it.
pub async fn run_retrying(
    plan: &Plan,
    ready: &Ready,
    stop: &CancellationToken,
) -> Result<(supervise::Outcome, Vec<Retried>)> {
    let mut retried = vec![];
    loop {
        let o = run(ready, stop).await?;
        if !plan.retry.again(&o, retried.len()) {
            return Ok((o, retried));
        }
        retried.push(Retried {
            exit_code: o.ended.code(),
            seconds: o.seconds,
        });
        tracing::warn!(
            exit_code = o.ended.code(),
            retry = retried.len(),
            of = plan.retry.max,
            backoff_seconds = plan.retry.backoff.as_secs(),
            "the job failed with an exit code job.retry names: it runs again on this instance"
        );
        tokio::select! {
            () = tokio::time::sleep(plan.retry.backoff) => {}
            () = stop.cancelled() => return Ok((supervise::Outcome { stopped: true, ..o }, retried)),
        }
    }
}

/// A path given on the command line, relative to where the job runs.
pub fn in_workdir(workdir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        workdir.join(p)
    }
}

/// The attempt made ready: inputs in place, the checkpoint restored (and told to the child).
pub struct Ready {
    pub job: supervise::Job,
    checkpoint: Option<(Arc<Mutex<Checkpoint>>, Duration)>,
    container: Option<InContainer>,
    /// The job's copy of the run's session (`--run-as` with a run session), kept current while
    /// the attempt is ready.
    _credentials: Option<super::job_user::JobCredentials>,
}

/// A container made ready: its image pulled, its name, the directories it mounts.
struct InContainer {
    container: Container,
    name: String,
    mounts: Vec<PathBuf>,
}

/// Fetches the inputs and restores the checkpoint, in the job's working directory.
pub async fn prepare(plan: &Plan) -> Result<Ready> {
    let mut job = plan.job.clone();
    for source in &plan.fetch {
        fetch::fetch(source, &job.workdir).await?;
    }
    let checkpoint = match &plan.checkpoint {
        Some(c) => {
            let place = checkpoint::place(&c.to, &plan.run_id, plan.worker);
            let dir = in_workdir(&job.workdir, &c.dir);
            let mut cp = Checkpoint::open(&dir, place, plan.attempt).await?;
            let restored = cp
                .restore()
                .await
                .context("restoring the last checkpoint")?;
            // The last save comes after the grace: it must fit what the notice leaves.
            let room = cp.room(job.grace);
            if room.grace < job.grace {
                tracing::warn!(
                    asked_seconds = job.grace.as_secs(),
                    grace_seconds = room.grace.as_secs(),
                    save_seconds = room.save.as_secs_f64(),
                    fits = room.fits,
                    "the grace is lowered so that the last checkpoint save fits the Spot notice's two minutes"
                );
                job.grace = room.grace;
            } else if !room.fits {
                tracing::warn!(
                    grace_seconds = job.grace.as_secs(),
                    save_seconds = room.save.as_secs_f64(),
                    "the last checkpoint save may not fit the Spot notice: the next attempt would resume from the one before"
                );
            }
            job.env.extend([
                ("EPHEMERA_CHECKPOINT".into(), dir.display().to_string()),
                ("EPHEMERA_CHECKPOINT_RESTORED".into(), restored.to_string()),
            ]);
            Some((Arc::new(Mutex::new(cp)), c.every))
        }
        None => None,
    };
    let credentials = match job.run_as {
        Some(who) => Some(for_its_user(plan, &mut job, who).await?),
        None => None,
    }
    .flatten();
    let container = match &plan.container {
        Some(c) => Some(in_container(plan, c, &job, credentials.as_ref()).await?),
        None => None,
    };
    Ok(Ready {
        job,
        checkpoint,
        container,
        _credentials: credentials,
    })
}

/// The job given to its own user (`--run-as`): its directories handed over, the agent's file
/// reads held to that user's files, and the run's session (when the agent has one) as its only
/// credentials. Without a run session the job has no credentials at all.
async fn for_its_user(
    plan: &Plan,
    job: &mut supervise::Job,
    who: supervise::RunAs,
) -> Result<Option<super::job_user::JobCredentials>> {
    use super::job_user;
    let dirs = std::iter::once(job.workdir.clone())
        .chain(
            plan.checkpoint
                .iter()
                .map(|c| in_workdir(&job.workdir, &c.dir)),
        )
        .chain(
            plan.outputs
                .iter()
                .map(|(d, _)| in_workdir(&job.workdir, d)),
        );
    for dir in dirs {
        job_user::hand_over(&dir, who)?;
    }
    crate::store::reading_files_of(who.uid);
    let Some(run) = crate::agent::credentials::installed() else {
        tracing::info!(
            uid = who.uid,
            "the job runs as its own user without credentials (no run session)"
        );
        return Ok(None);
    };
    // Beside the working directory, not in it: never among its outputs, and not the job's.
    let workdir = std::fs::canonicalize(&job.workdir)
        .with_context(|| format!("the job's working directory {}", job.workdir.display()))?;
    let parent = workdir
        .parent()
        .map_or_else(std::env::temp_dir, Path::to_path_buf);
    let Some(creds) = job_user::JobCredentials::start(run, who, &parent).await? else {
        return Ok(None);
    };
    job.env.extend(creds.env());
    tracing::info!(
        uid = who.uid,
        "the job runs as its own user with its session of the run"
    );
    Ok(Some(creds))
}

/// The image pulled and the job's directories (working, checkpoint, outputs) to mount.
async fn in_container(
    plan: &Plan,
    c: &Container,
    job: &supervise::Job,
    credentials: Option<&super::job_user::JobCredentials>,
) -> Result<InContainer> {
    container::pull(c).await?;
    let dirs: Vec<PathBuf> = plan
        .checkpoint
        .iter()
        .map(|c| c.dir.clone())
        .chain(plan.outputs.iter().map(|(d, _)| d.clone()))
        .chain(credentials.map(|c| c.dir.clone()))
        .collect();
    Ok(InContainer {
        container: c.clone(),
        name: container::name(&plan.run_id, plan.worker, plan.attempt),
        mounts: container::mounts(&job.workdir, &dirs)?,
    })
}

/// Runs the command to its end or until `stop`, saving the checkpoint every so often and once
/// more after a stop (the Spot notice's two minutes cover the grace and that last save).
pub async fn run(ready: &Ready, stop: &CancellationToken) -> Result<supervise::Outcome> {
    let keeping = ready.checkpoint.as_ref().map(|(cp, every)| {
        let done = CancellationToken::new();
        (
            checkpoint::keep(cp.clone(), *every, ready.job.grace, done.clone()),
            done,
        )
    });
    let outcome = match &ready.container {
        Some(c) => container::run(&c.container, &c.name, &c.mounts, &ready.job, stop).await,
        None => supervise::run(&ready.job, stop).await,
    };
    if let Some((task, done)) = keeping {
        done.cancel();
        let _ = task.await;
    }
    if let (Some((cp, _)), Ok(o)) = (&ready.checkpoint, &outcome) {
        if o.stopped {
            match cp.lock().await.save().await {
                Ok(_) => {}
                Err(e) if e.is::<checkpoint::Fenced>() => {
                    tracing::warn!(error = %e, "the last checkpoint is not saved: the next attempt has taken over")
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "the last checkpoint could not be saved; the next attempt resumes from the one before")
                }
            }
        }
    }
    outcome
}

/// After a successful exit: the outputs stored with their manifest under this worker's own
/// folder of the target (`<to>/worker-<n>/`; its URL), then the checkpoints deleted unless they
/// are to be kept: the job needs them no more, and they would be billed for as long as they stay.
pub async fn publish(plan: &Plan) -> Result<Option<String>> {
    let manifest = match &plan.outputs {
        Some((dir, target)) => {
            let dir = in_workdir(&plan.job.workdir, dir);
            let share = target.under(&worker_folder(plan.worker));
            Some(publish::publish(&dir, &share, &plan.run_id).await?)
        }
        None => None,
    };
    if let Some(c) = plan.checkpoint.as_ref().filter(|c| !c.keep) {
        let place = checkpoint::place(&c.to, &plan.run_id, plan.worker);
        let url = place.url(&place.key(""));
        // The job's result is stored: a checkpoint left behind costs storage, not the run.
        match checkpoint::delete_all(&crate::store::Store::new(place).await).await {
            Ok(n) => tracing::info!(objects = n, place = %url, "the job's checkpoints deleted"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), place = %url, "the job's checkpoints stay")
            }
        }
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_exit_is_retried_until_the_max_and_a_stop_or_success_never_is() {
        let r = Retry {
            on: vec![75, 137],
            max: 2,
            backoff: Duration::ZERO,
        };
        let ended = |e: supervise::Ended, stopped: bool| supervise::Outcome {
            ended: e,
            stopped,
            seconds: 1.0,
            stderr_tail: vec![],
        };
        use supervise::Ended::{Exited, Signalled};
        assert!(r.again(&ended(Exited(75), false), 0));
        assert!(
            r.again(&ended(Signalled(9), false), 1),
            "137: the OOM killer's SIGKILL"
        );
        assert!(
            !r.again(&ended(Exited(75), false), 2),
            "two retries at most"
        );
        assert!(!r.again(&ended(Exited(1), false), 0), "1 is not listed");
        assert!(!r.again(&ended(Exited(0), false), 0));
        assert!(
            !r.again(&ended(Signalled(15), true), 0),
            "stopped: the next attempt's"
        );
        assert!(!Retry::default().again(&ended(Exited(75), false), 0));
        assert_eq!(retried_text(&[]), "");
        assert_eq!(
            retried_text(&[
                Retried {
                    exit_code: 75,
                    seconds: 1.0
                },
                Retried {
                    exit_code: 137,
                    seconds: 2.0
                }
            ]),
            ", after 2 retries on this instance (exit 75, exit 137)"
        );
    }

    #[tokio::test]
    async fn a_stopped_job_resumes_from_its_checkpoint_on_the_next_attempt() {
        let b = std::env::temp_dir().join(format!("ephemera-job-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(b.join("in")).unwrap();
        std::fs::write(b.join("in/start"), b"5").unwrap();
        // Counts up from its checkpoint (or from the fetched start), saving it on SIGTERM.
        let script = r#"
            n=$(cat ckpt/n 2>/dev/null || cat start); first=$n
            trap 'echo $n > ckpt/n.tmp && mv ckpt/n.tmp ckpt/n; exit 143' TERM
            if [ "$EPHEMERA_RESUMED" = true ]; then end=$((n + 3)); else end=1000000; fi
            while [ "$n" -lt "$end" ]; do n=$((n + 1)); touch counting; sleep 0.01; done
            echo "$EPHEMERA_CHECKPOINT_RESTORED $first $n" > out/result
        "#;
        let plan = |attempt: u32, workdir: &str| Plan {
            job: supervise::Job {
                command: vec!["sh".into(), "-c".into(), script.into()],
                grace: Duration::from_secs(5),
                env: supervise::run_env(&supervise::Place {
                    run_id: "r1",
                    attempt,
                    worker: 1,
                    workers: 1,
                }),
                workdir: b.join(workdir),
                run_as: None,
            },
            run_id: "r1".into(),
            worker: 1,
            attempt,
            fetch: vec![Source::parse(&b.join("in").display().to_string()).unwrap()],
            checkpoint: Some(Checkpointing {
                dir: "ckpt".into(),
                to: Target::Dir(b.join("store")),
                every: Duration::from_secs(3600),
                keep: false,
            }),
            outputs: None,
            container: None,
            secrets: vec![],
            retry: Retry::default(),
        };
        let first = plan(1, "w1");
        std::fs::create_dir_all(b.join("w1/out")).unwrap();
        let ready = prepare(&first).await.unwrap();
        let stop = CancellationToken::new();
        // Stopped once it has counted past its start with its trap set (it says so with
        // `counting`), not after a fixed time a loaded machine may not give it.
        let (s, counting) = (stop.clone(), b.join("w1/counting"));
        tokio::spawn(async move {
            while !counting.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            s.cancel();
        });
        let o = run(&ready, &stop).await.unwrap();
        assert!(o.stopped, "{o:?}");
        let saved: u64 = std::fs::read_to_string(b.join("w1/ckpt/n"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(saved > 5, "it counted before it was stopped: {saved}");

        // Another instance: an empty working directory, the checkpoint back before the start.
        let second = plan(2, "w2");
        std::fs::create_dir_all(b.join("w2/out")).unwrap();
        let ready = prepare(&second).await.unwrap();
        let o = run(&ready, &CancellationToken::new()).await.unwrap();
        assert!(o.ended.succeeded(), "{o:?}");
        assert_eq!(
            std::fs::read_to_string(b.join("w2/out/result")).unwrap(),
            format!("1 {saved} {}\n", saved + 3),
            "restored one file and counted on from it"
        );

        // The job succeeded: its checkpoints go once its outputs are stored (they would be
        // billed for nothing), unless --keep-checkpoints.
        let store =
            crate::store::Store::new(checkpoint::place(&Target::Dir(b.join("store")), "r1", 1))
                .await;
        assert!(!store.list().await.unwrap().is_empty());
        let mut keeping = second.clone();
        keeping.checkpoint.as_mut().unwrap().keep = true;
        publish(&keeping).await.unwrap();
        assert!(
            store
                .list()
                .await
                .unwrap()
                .contains(&checkpoint::LIST.to_string()),
            "kept"
        );
        publish(&second).await.unwrap();
        assert_eq!(store.list().await.unwrap(), Vec::<String>::new());
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[tokio::test]
    async fn each_worker_publishes_its_share_in_a_folder_of_its_own() {
        let b = std::env::temp_dir().join(format!("ephemera-share-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        let mut urls = vec![];
        for worker in [1, 2] {
            let workdir = b.join(format!("w{worker}"));
            std::fs::create_dir_all(workdir.join("out")).unwrap();
            std::fs::write(workdir.join("out/part.csv"), format!("share {worker}\n")).unwrap();
            let plan = Plan {
                job: supervise::Job {
                    command: vec!["true".into()],
                    grace: Duration::from_secs(5),
                    env: vec![],
                    workdir,
                    run_as: None,
                },
                run_id: "r1".into(),
                worker,
                attempt: 1,
                fetch: vec![],
                checkpoint: None,
                outputs: Some(("out".into(), Target::Dir(b.join("to")))),
                container: None,
                secrets: vec![],
                retry: Retry::default(),
            };
            urls.push(publish(&plan).await.unwrap().unwrap());
        }
        // Two manifests, neither replacing the other, each listing its own worker's file.
        for (worker, url) in [1, 2].into_iter().zip(&urls) {
            let folder = b.join("to").join(format!("worker-{worker}"));
            assert_eq!(url, &folder.join("manifest.json").display().to_string());
            let m: ephemera_contract::Manifest =
                serde_json::from_slice(&std::fs::read(url).unwrap()).unwrap();
            assert_eq!(m.objects.len(), 1, "{m:?}");
            assert_eq!(m.objects[0].key, "part.csv");
            assert_eq!(
                std::fs::read_to_string(folder.join("part.csv")).unwrap(),
                format!("share {worker}\n")
            );
        }
        std::fs::remove_dir_all(&b).unwrap();
    }

    /// A job in `dir` that appends the clock (ns) to `starts` each time it runs and exits 75.
    fn failing_plan(dir: &Path, retry: Retry) -> Plan {
        Plan {
            job: supervise::Job {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "date +%s%N >> starts; exit 75".into(),
                ],
                grace: Duration::from_secs(5),
                env: vec![],
                workdir: dir.to_path_buf(),
                run_as: None,
            },
            run_id: "r1".into(),
            worker: 1,
            attempt: 1,
            fetch: vec![],
            checkpoint: None,
            outputs: None,
            container: None,
            secrets: vec![],
            retry,
        }
    }

    fn starts(dir: &Path) -> Vec<u128> {
        std::fs::read_to_string(dir.join("starts"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn each_retry_starts_no_sooner_than_its_backoff_after_the_run_before() {
        let b = std::env::temp_dir().join(format!("ephemera-backoff-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(&b).unwrap();
        let backoff = Duration::from_millis(400);
        let plan = failing_plan(
            &b,
            Retry {
                on: vec![75],
                max: 2,
                backoff,
            },
        );
        let ready = prepare(&plan).await.unwrap();
        let (o, retried) = run_retrying(&plan, &ready, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(o.ended.code(), 75, "{o:?}");
        assert!(!o.stopped);
        assert_eq!(
            retried.iter().map(|r| r.exit_code).collect::<Vec<_>>(),
            [75, 75]
        );
        // Three runs, each started at least the backoff after the one before it started (a
        // lower bound: the wait is a sleep after the run before has ended).
        let at = starts(&b);
        assert_eq!(at.len(), 3, "{at:?}");
        for w in at.windows(2) {
            assert!(w[1] - w[0] >= backoff.as_nanos(), "{at:?}");
        }
        std::fs::remove_dir_all(&b).unwrap();
    }

    /// The attempt's stops (its money deadline, a Spot notice, SIGTERM) all cancel `stop`: one
    /// during the retries ends them as the attempt's stop, so a job that keeps failing can
    /// never run past the runtime the budget admitted for its attempt.
    #[tokio::test]
    async fn a_stop_while_a_job_keeps_failing_ends_its_retries() {
        let b = std::env::temp_dir().join(format!("ephemera-retry-stop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(&b).unwrap();
        let plan = failing_plan(
            &b,
            Retry {
                on: vec![75],
                max: 10,
                backoff: Duration::from_millis(200),
            },
        );
        let ready = prepare(&plan).await.unwrap();
        let stop = CancellationToken::new();
        // Stopped once it has run twice, as the money deadline would stop it.
        let (s, dir) = (stop.clone(), b.clone());
        tokio::spawn(async move {
            while starts(&dir).len() < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            s.cancel();
        });
        let (o, retried) = run_retrying(&plan, &ready, &stop).await.unwrap();
        assert!(o.stopped, "{o:?}");
        let ran = starts(&b).len();
        // Every run is a retry but the one the stop may have caught under way.
        assert!(
            ran < 10 && ran - retried.len() <= 1,
            "{ran} runs, {retried:?}"
        );
        // Nothing runs after the stop.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(starts(&b).len(), ran);
        std::fs::remove_dir_all(&b).unwrap();
    }
}

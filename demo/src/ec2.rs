//! EC2 played on this machine: each instance RunInstances created for the run becomes the real
//! worker binary, started with the command line of the instance's own user data and the
//! instance's identity (a local IMDS with its id and Spot's notice, the worker role's key), and
//! stopped as systemd would stop it when the instance is terminated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use aws_sdk_ec2::types::{Filter, Instance, InstanceAttributeName, InstanceStateName};
use base64::Engine;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::Console;
use ephemera_tests::{clients, harness};

/// systemd's `TimeoutStopSec` on the instance, scaled down: SIGTERM, then SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// One instance's worker process.
struct Worker {
    /// "worker 2 attempt 1".
    label: String,
    child: Child,
    /// When the instance began shutting down (SIGTERM sent).
    stopping_since: Option<Instant>,
    exited: bool,
}

impl Worker {
    fn signal_stop(&mut self) {
        if self.exited || self.stopping_since.is_some() {
            return;
        }
        if let Some(pid) = self.child.id() {
            // SAFETY: a plain signal to our own child.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM)
            };
        }
        self.stopping_since = Some(Instant::now());
    }
}

/// What the player knows of the run's instances, for the scenarios that act on them.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Instance id by (worker, attempt).
    pub instances: BTreeMap<(u32, u32), String>,
    /// The worker process's id by instance id.
    pub pids: BTreeMap<String, u32>,
}

pub struct Player {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    pub seen: watch::Receiver<Seen>,
}

pub struct Setup {
    pub region: &'static str,
    pub run_id: String,
    pub worker_bin: PathBuf,
    pub logs: PathBuf,
}

impl Player {
    pub fn start(setup: Setup, console: Console) -> Player {
        let (stop, stopped) = watch::channel(false);
        let (seen_tx, seen) = watch::channel(Seen::default());
        let task = tokio::spawn(play(setup, console, stopped, seen_tx));
        Player { stop, task, seen }
    }

    /// Stops every worker still running (as a shutdown would), and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn play(
    setup: Setup,
    console: Console,
    mut stopped: watch::Receiver<bool>,
    seen: watch::Sender<Seen>,
) {
    let ec2 = clients(setup.region).ec2;
    let mut fleet = Fleet {
        setup,
        console,
        seen,
        workers: BTreeMap::new(),
    };
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let listed = ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:ephemera:run")
                    .values(&fleet.setup.run_id)
                    .build(),
            )
            .send()
            .await;
        // Workers that ended by themselves first, so that a terminated instance's is not
        // "stopped" after the fact.
        reap(&mut fleet.workers, &fleet.console);
        let Ok(listed) = listed else { continue };
        for i in listed.reservations().iter().flat_map(|r| r.instances()) {
            fleet.follow(i).await;
        }
    }
    fleet.shut_down().await;
}

/// The run's instances as this machine plays them: one worker process each.
struct Fleet {
    setup: Setup,
    console: Console,
    seen: watch::Sender<Seen>,
    /// By instance id.
    workers: BTreeMap<String, Worker>,
}

impl Fleet {
    /// A pending or running instance gets its worker; one that is stopping or gone has its
    /// worker stopped.
    async fn follow(&mut self, i: &Instance) {
        let (Some(id), Some(state)) = (i.instance_id(), i.state().and_then(|s| s.name())) else {
            return;
        };
        match state {
            InstanceStateName::Pending | InstanceStateName::Running => {
                if !self.workers.contains_key(id) {
                    self.boot(i, id, state).await;
                }
            }
            _ => {
                if let Some(w) = self.workers.get_mut(id) {
                    if !w.exited && w.stopping_since.is_none() {
                        self.console.line(&format!(
                            "EC2: {id} is {}{}: stopping {}",
                            state.as_str(),
                            i.state_reason()
                                .and_then(|r| r.code())
                                .map(|c| format!(" ({c})"))
                                .unwrap_or_default(),
                            w.label
                        ));
                        w.signal_stop();
                    }
                }
            }
        }
    }

    /// Starts the instance's worker as its user data says.
    async fn boot(&mut self, i: &Instance, id: &str, state: &InstanceStateName) {
        let tag = |k: &str| {
            i.tags()
                .iter()
                .find(|t| t.key() == Some(k))
                .and_then(|t| t.value())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        };
        let (worker, attempt) = (
            tag(ephemera_core::tags::WORKER),
            tag(ephemera_core::tags::ATTEMPT),
        );
        let label = format!("worker {worker} attempt {attempt}");
        let child = match boot(&self.setup, id, worker, attempt).await {
            Ok(child) => child,
            // Right after launch EC2 may not know the id yet: next round.
            Err(e) if e.to_string().contains("NotFound") => return,
            Err(e) => {
                self.console.line(&format!("EC2: cannot boot {id}: {e:#}"));
                return;
            }
        };
        self.console.line(&format!(
            "EC2: {id} ({}, {}) is {}: {label} started (log: {})",
            i.instance_type().map(|t| t.as_str()).unwrap_or("?"),
            i.instance_lifecycle()
                .map(|l| l.as_str())
                .unwrap_or("on-demand"),
            state.as_str(),
            log_path(&self.setup.logs, worker, attempt).display()
        ));
        let pid = child.id();
        self.workers.insert(
            id.to_string(),
            Worker {
                label,
                child,
                stopping_since: None,
                exited: false,
            },
        );
        self.seen.send_modify(|s| {
            s.instances.insert((worker, attempt), id.to_string());
            if let Some(pid) = pid {
                s.pids.insert(id.to_string(), pid);
            }
        });
    }

    /// The demo is ending: every instance goes, as on a shutdown.
    async fn shut_down(mut self) {
        for w in self.workers.values_mut() {
            w.signal_stop();
        }
        let until = Instant::now() + STOP_GRACE;
        while self.workers.values().any(|w| !w.exited) && Instant::now() < until {
            reap(&mut self.workers, &self.console);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for w in self.workers.values_mut().filter(|w| !w.exited) {
            let _ = w.child.start_kill();
            let _ = w.child.wait().await;
        }
    }
}

/// Notes workers that ended, and kills those past their stop grace.
fn reap(workers: &mut BTreeMap<String, Worker>, console: &Console) {
    for w in workers.values_mut().filter(|w| !w.exited) {
        match w.child.try_wait() {
            Ok(Some(status)) => {
                w.exited = true;
                console.line(&format!("{} exited ({status})", w.label));
            }
            Ok(None) => {
                if w.stopping_since.is_some_and(|t| t.elapsed() > STOP_GRACE) {
                    let _ = w.child.start_kill();
                }
            }
            Err(_) => w.exited = true,
        }
    }
}

pub fn log_path(dir: &Path, worker: u32, attempt: u32) -> PathBuf {
    dir.join(format!("worker-{worker}-attempt-{attempt}.log"))
}

/// The user data's command line without `--run-as USER`: the demo's instances share this
/// machine, its users and its processes (a job's leftovers are killed by its user's id), and
/// the demo may not run as root; the job runs as the demo's user. The job's own user is held by
/// `worker/tests/run_session.rs` (a hostile job) and `userdata.rs`'s tests.
fn without_run_as(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            out.push(a.clone());
            out.extend(it.cloned());
            break;
        }
        if a == "--run-as" {
            it.next();
            continue;
        }
        out.push(a.clone());
    }
    out
}

/// Starts the instance's worker: its user data's command line, its IMDS, its role.
async fn boot(setup: &Setup, id: &str, worker: u32, attempt: u32) -> Result<Child> {
    let ec2 = clients(setup.region).ec2;
    let attr = ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .map_err(|e| anyhow!("{}", aws_sdk_ec2::error::DisplayErrorContext(&e)))?;
    let encoded = attr
        .user_data()
        .and_then(|v| v.value())
        .ok_or_else(|| anyhow!("the instance has no user data"))?;
    let script = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .context("user data is not base64")?,
    )
    .context("user data is not UTF-8")?;
    let command = ephemera_core::userdata::worker_command(&script)
        .ok_or_else(|| anyhow!("the user data starts no worker"))?;

    let door = harness().door.clone();
    let region = setup.region;
    let (imds_id, notice_id) = (id.to_string(), id.to_string());
    let imds = ephemera_tests::imds::serve(
        move || imds_id.clone(),
        move || door.spot_notice(region, &notice_id),
    )
    .await;
    let log = std::fs::File::create(log_path(&setup.logs, worker, attempt))?;
    // The instance's own disk: the unit's working directory, empty on each instance.
    let disk = setup.logs.join(format!("instance-{worker}-{attempt}"));
    std::fs::create_dir_all(&disk)?;
    let mut cmd = Command::new(&setup.worker_bin);
    cmd.current_dir(&disk);
    // The instance profile's role, from its IMDS: held to the template's WorkerRole policy.
    ephemera_tests::instance_env(&mut cmd, region, &imds);
    cmd.args(without_run_as(&command[1..]))
        .env_remove("DATABASE_URL")
        // podman's settings on this machine, for a job's image (`exec --image`).
        .envs(ephemera_tests::containers::podman_env())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    // The worker dies with the demo, however the demo ends.
    // SAFETY: pre_exec runs between fork and exec; prctl is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", setup.worker_bin.display()))
}

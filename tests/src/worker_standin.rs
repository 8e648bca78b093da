//! A worker stand-in: a local process doing what the worker does on the instance through the
//! same AWS calls — say "started" for its instance, read the task token from SSM, heartbeat,
//! then report success or failure — with behaviours that produce each failure path.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use aws_sdk_ssm::types::ParameterType;
use ephemera_core::contract::{ssm, RunParameters, Started};
use ephemera_core::{names, tags};
use serde_json::Value;

use crate::sdk_config;

#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Start, heartbeat, succeed with this report.
    Succeed(Value),
    /// As `Succeed`, holding the token this many seconds first (heartbeating).
    SucceedAfter(u64, Value),
    /// Never say "started" (the boot never completes).
    NeverStart,
    /// Start and take the token, then go silent (no heartbeat, no result).
    GoSilent,
    /// Attempt 1 reports a Spot interruption; later attempts succeed with the report.
    SpotInterruptFirst(Value),
    /// Every attempt reports a Spot interruption (a market that keeps taking the instance back).
    SpotInterruptAlways,
    /// Start, then fail with this error name.
    Fail(String),
    /// Start, then fail with this error name and cause.
    FailWith(String, String),
    /// Attempt 1 takes the token, then Spot reclaims its instance (notice, then termination
    /// after this many seconds) before the worker can say so: it goes silent. Later attempts
    /// succeed with the report.
    ReclaimedFirst(u64, Value),
}

pub struct StandIn {
    handle: tokio::task::JoinHandle<()>,
    log: Arc<Mutex<Vec<String>>>,
}

impl StandIn {
    /// What the stand-in did, for assertions and diagnostics.
    pub async fn log(self) -> Vec<String> {
        self.handle.abort();
        let _ = self.handle.await;
        let log = self.log.lock().unwrap().clone();
        log
    }
}

/// Serves every attempt of `run_id` in `region` for at most `lifetime`: each running instance of
/// the run, as it appears, in a task of its own, so that the workers of a run (up to 40) start,
/// take their tokens and report side by side as their instances would.
pub fn spawn(region: &str, run_id: &str, behaviour: Behaviour, lifetime: Duration) -> StandIn {
    spawn_for(
        region,
        &[run_id.to_string()],
        Arc::new(move |_: &str| behaviour.clone()),
        lifetime,
    )
}

/// What the worker of each run does, by run id.
pub type BehaviourOf = Arc<dyn Fn(&str) -> Behaviour + Send + Sync>;

/// As [`spawn`] for every run of `runs` at once: one DescribeInstances a poll for all of them
/// (as many stand-ins as runs would take EC2's Describe bucket, 20 a second, many times over).
pub fn spawn_for(
    region: &str,
    runs: &[String],
    behaviour_of: BehaviourOf,
    lifetime: Duration,
) -> StandIn {
    // It looks "its instance" up as the harness (IMDS knows it on EC2), and talks to SSM and
    // Step Functions with that instance's role session.
    let conf = sdk_config(region);
    let runs = runs.to_vec();
    let region = region.to_string();
    let shared = Arc::new(Mutex::new(vec![]));
    let log = Logger(shared.clone());
    let handle = tokio::spawn(async move {
        let ec2 = aws_sdk_ec2::Client::new(&conf);
        let mut served: BTreeSet<String> = BTreeSet::new();
        let mut tasks = tokio::task::JoinSet::new();
        let deadline = Instant::now() + lifetime;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Ok(found) = ec2
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name("tag:ephemera:run")
                        .set_values(Some(runs.clone()))
                        .build(),
                )
                .filters(
                    Filter::builder()
                        .name("instance-state-name")
                        .values("running")
                        .build(),
                )
                .send()
                .await
            else {
                continue;
            };
            let new: Vec<(u32, String, String)> = found
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(|i| {
                    let id = i.instance_id()?.to_string();
                    let tag = |key: &str| {
                        i.tags()
                            .iter()
                            .find(|t| t.key() == Some(key))
                            .and_then(|t| t.value())
                            .map(str::to_string)
                    };
                    let attempt: u32 = tag(tags::ATTEMPT)?.parse().ok()?;
                    Some((attempt, id, tag(tags::RUN)?))
                })
                .filter(|(_, id, _)| !served.contains(id))
                .collect();
            for (attempt, instance, run_id) in new {
                served.insert(instance.clone());
                let mine = Instance {
                    region: region.clone(),
                    run_id,
                    instance,
                    attempt,
                };
                let behaviour = behaviour_of(&mine.run_id);
                tasks.spawn(serve(mine, behaviour, log.clone(), deadline));
            }
        }
        // Aborting this task (StandIn::log) drops the set, which aborts the instances' tasks.
        while tasks.join_next().await.is_some() {}
    });
    StandIn {
        handle,
        log: shared,
    }
}

/// One instance the stand-in plays.
struct Instance {
    region: String,
    run_id: String,
    instance: String,
    attempt: u32,
}

/// What the worker on `me` does: say "started", wait for its token, then act as `behaviour` says.
async fn serve(me: Instance, behaviour: Behaviour, log: Logger, deadline: Instant) {
    let Instance {
        region,
        run_id,
        instance,
        attempt,
    } = me;
    let role = crate::instance_config(&region, &instance);
    let ssm = aws_sdk_ssm::Client::new(&role);
    let sfn = aws_sdk_sfn::Client::new(&role);
    if matches!(behaviour, Behaviour::NeverStart) {
        log.push(format!("{instance}: not starting"));
        return;
    }
    let parameters = RunParameters::of_run(&run_id);
    let started = Started {
        instance_id: instance.clone(),
        attempt,
        at: chrono::Utc::now(),
    };
    ssm.put_parameter()
        .name(parameters.started(&instance))
        .value(serde_json::to_string(&started).expect("a Started signal"))
        .r#type(ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .expect("PutParameter started");
    log.push(format!("{instance}: started (attempt {attempt})"));

    // The token appears once the state machine reaches AwaitCompletion.
    let mut token = None;
    let mut reads = 0;
    while Instant::now() < deadline {
        if let Ok(p) = ssm
            .get_parameter()
            .name(parameters.task_token(&instance))
            .with_decryption(true)
            .send()
            .await
        {
            // Until the state machine creates it, AWS answers AccessDenied (no tags yet).
            if let Some(v) = p.parameter().and_then(|p| p.value()) {
                token = Some(v.to_string());
                break;
            }
        }
        // As the worker reads it: backoff with jitter (Parameter Store's throughput is the
        // account's, and the front door plays it).
        let draw = ssm::token_poll_draw(&instance, reads);
        tokio::time::sleep(ssm::token_poll_wait(reads, draw)).await;
        reads += 1;
    }
    let Some(token) = token else { return };
    log.push(format!("{instance}: got the task token"));
    let succeed = |report: Value| {
        let sfn = sfn.clone();
        let token = token.clone();
        async move {
            sfn.send_task_heartbeat()
                .task_token(&token)
                .send()
                .await
                .expect("SendTaskHeartbeat");
            sfn.send_task_success()
                .task_token(&token)
                .output(report.to_string())
                .send()
                .await
                .expect("SendTaskSuccess");
        }
    };
    let fail = |error: String, cause: String| {
        let sfn = sfn.clone();
        let token = token.clone();
        async move {
            sfn.send_task_failure()
                .task_token(&token)
                .error(error)
                .cause(cause)
                .send()
                .await
                .expect("SendTaskFailure");
        }
    };
    match &behaviour {
        Behaviour::Succeed(report) => {
            succeed(report.clone()).await;
            log.push(format!("{instance}: succeeded"));
        }
        Behaviour::SucceedAfter(seconds, report) => {
            tokio::time::sleep(Duration::from_secs(*seconds)).await;
            succeed(report.clone()).await;
            log.push(format!("{instance}: succeeded"));
        }
        Behaviour::SpotInterruptFirst(report) if attempt > 1 => {
            succeed(report.clone()).await;
            log.push(format!("{instance}: succeeded"));
        }
        Behaviour::SpotInterruptFirst(_) | Behaviour::SpotInterruptAlways => {
            fail(
                names::SPOT_INTERRUPTED.into(),
                "reported by the worker stand-in".into(),
            )
            .await;
            log.push(format!("{instance}: spot interrupted"));
        }
        Behaviour::ReclaimedFirst(_, report) if attempt > 1 => {
            succeed(report.clone()).await;
            log.push(format!("{instance}: succeeded"));
        }
        Behaviour::ReclaimedFirst(notice, _) => {
            crate::harness()
                .door
                .reclaim_spot(&region, &instance, Duration::from_secs(*notice));
            log.push(format!("{instance}: reclaimed by Spot, silent"));
        }
        Behaviour::Fail(e) => {
            fail(e.clone(), "reported by the worker stand-in".into()).await;
            log.push(format!("{instance}: failed {e}"));
        }
        Behaviour::FailWith(e, cause) => {
            fail(e.clone(), cause.clone()).await;
            log.push(format!(
                "{instance}: failed {e} ({} bytes of cause)",
                cause.len()
            ));
        }
        Behaviour::GoSilent => log.push(format!("{instance}: silent")),
        Behaviour::NeverStart => {}
    }
}

#[derive(Clone)]
struct Logger(Arc<Mutex<Vec<String>>>);

impl Logger {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
}

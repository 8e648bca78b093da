//! One attempt of a workload on an ephemera instance, from "started" to the last log line:
//! started → the work and the token (in the order the workload allows) → heartbeat → the Spot
//! notice, SIGTERM and the money deadline watched while it works → its [`ending`] → the report →
//! the logs flushed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use ephemera_contract::names;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ending::{self, Ending, Happened, TokenState, Worked};
use super::link::{self, Link, Token};
use super::logship::{Buffer, Shipper};
use super::{LinkArgs, Workload};

/// How long the last log lines may take to reach CloudWatch Logs at exit.
const LOG_FLUSH_PATIENCE: Duration = Duration::from_secs(10);

/// The attempt's link to the run and its log stream.
pub struct Session {
    link: Link,
    shipper: Option<Shipper>,
    token_timeout: Duration,
    /// The money deadline (`--budget-seconds`) counted from the session's opening: the worker's
    /// start, before it says "started", so before AwaitCompletion's timeout begins.
    budget: Option<(u64, Instant)>,
}

impl Session {
    /// The link to the run at `prefix` (this instance's id read from IMDS) and, when there is a
    /// buffer, the buffered lines shipped to `<run id>/<attempt>/<instance id>`.
    pub async fn open(
        prefix: &str,
        args: &LinkArgs,
        run_id: &str,
        shipping: Option<Arc<Buffer>>,
    ) -> Result<Session> {
        let opened = Instant::now();
        let link = Link::new(prefix, args.attempt, args.heartbeat_seconds).await?;
        if args.run_session {
            // Before any S3 or log call: from here on they sign with the run's session.
            let run = link
                .wait_for_run_session(Duration::from_secs(args.token_timeout_seconds))
                .await?;
            super::credentials::install(super::credentials::RunCredentials::new(
                run,
                link::sdk_config().await,
                &link.instance_id,
            ));
        }
        let shipper = match shipping {
            Some(buffer) => {
                let stream = ephemera_contract::logs::worker_log_stream(
                    run_id,
                    args.attempt,
                    &link.instance_id,
                );
                let logs =
                    aws_sdk_cloudwatchlogs::Client::new(&super::credentials::sdk_config().await);
                Some(Shipper::start(logs, &args.log_group, &stream, buffer))
            }
            None => None,
        };
        Ok(Session {
            link,
            shipper,
            token_timeout: Duration::from_secs(args.token_timeout_seconds),
            budget: args
                .budget_seconds
                .map(|s| (s, opened + Duration::from_secs(s))),
        })
    }

    /// Ends the attempt: says why the worker stops when it does (so that the shipped lines tell
    /// it too), then sends the last lines.
    pub async fn close(self, outcome: &Result<()>) {
        if let Err(e) = outcome {
            tracing::error!(error = %format!("{e:#}"), "the worker stops");
        }
        if let Some(s) = self.shipper {
            s.finish(LOG_FLUSH_PATIENCE).await;
        }
    }

    /// The protocol around `workload`'s work; Ok once its ending is reported.
    pub async fn attempt<W: Workload>(&self, workload: &W) -> Result<()> {
        let link = &self.link;
        link.started(self.token_timeout).await?;
        let stop = CancellationToken::new();
        let notice = Arc::new(AtomicBool::new(false));
        let deadline = Arc::new(AtomicBool::new(false));
        // The watches begin with the work (a stop means nothing before it): before the token
        // for a workload that may begin without it, after the token otherwise.
        let mut working = None;
        if W::STARTS_BEFORE_TOKEN {
            working = Some(self.begin(workload, &stop, &notice, &deadline));
        }
        let token = match link.wait_for_token(self.token_timeout).await {
            Ok(t) => t,
            Err(e) => {
                // Without a token nothing can be reported: a work begun is left to the exit.
                let ending = ending::ending(Happened {
                    token: TokenState::Missing {
                        why: format!("{e:#}"),
                    },
                    worked: None,
                    notice: notice.load(Ordering::SeqCst),
                    stop: stop.is_cancelled(),
                    budget: self.passed(&deadline),
                    instance_id: link.instance_id.clone(),
                    attempt: link.attempt,
                });
                return self.report(None, ending).await;
            }
        };
        let heartbeat = link.heartbeat(&token);
        let working = match working {
            Some(w) => w,
            None => self.begin(workload, &stop, &notice, &deadline),
        };
        let worked = working.end().await;
        // SIGTERM on a Spot instance is usually the reclaim itself: resume elsewhere if so.
        if stop.is_cancelled() && !notice.load(Ordering::SeqCst) {
            if let Some(action) = link.spot_notice().await {
                tracing::warn!(%action, "the Spot interruption notice is posted");
                notice.store(true, Ordering::SeqCst);
            }
        }
        let ending = ending::ending(Happened {
            token: TokenState::Received,
            worked: Some(worked),
            notice: notice.load(Ordering::SeqCst),
            stop: stop.is_cancelled(),
            budget: self.passed(&deadline),
            instance_id: link.instance_id.clone(),
            attempt: link.attempt,
        });
        // Heartbeats go on while the success is delivered and the report is sent (and tried
        // again if throttled).
        let ending = match ending {
            Ending::Succeeded { summary } => ending::delivered(workload.deliver(*summary).await),
            other => other,
        };
        let reported = self.report(Some(&token), ending).await;
        heartbeat.abort();
        reported
    }

    /// The money deadline's seconds, if it passed and stopped the work.
    fn passed(&self, deadline: &AtomicBool) -> Option<u64> {
        self.budget
            .filter(|_| deadline.load(Ordering::SeqCst))
            .map(|(seconds, _)| seconds)
    }

    /// Starts the work with its watches: the Spot notice, SIGTERM and the money deadline
    /// cancel `stop`.
    fn begin<W: Workload>(
        &self,
        workload: &W,
        stop: &CancellationToken,
        notice: &Arc<AtomicBool>,
        deadline: &Arc<AtomicBool>,
    ) -> Working {
        Working {
            spot: self.link.watch_spot(notice.clone(), stop.clone()),
            sigterm: on_sigterm(stop.clone(), W::ON_SIGTERM),
            budget: self
                .budget
                .map(|(seconds, at)| on_deadline(at, seconds, deadline.clone(), stop.clone())),
            work: tokio::spawn(workload.work(stop.clone())),
        }
    }

    /// Sends the ending to the state machine; without a token there is nothing to send it
    /// with, and the attempt ends in error.
    async fn report(&self, token: Option<&Token>, ending: Ending) -> Result<()> {
        let error = ending.error();
        match (ending, token) {
            (Ending::Unreported { why }, _) => Err(anyhow::anyhow!(why)),
            // `ending` is Unreported whenever the token is missing.
            (_, None) => anyhow::bail!("no task token to report with"),
            (Ending::SpotInterrupted { cause }, Some(token)) => {
                self.link
                    .fail(token, names::SPOT_INTERRUPTED, &cause)
                    .await?;
                tracing::warn!(error, "reported the interruption");
                Ok(())
            }
            (Ending::BudgetExhausted { cause }, Some(token)) => {
                tracing::warn!(error, %cause, "the work was stopped at the money deadline");
                self.link.fail(token, names::BUDGET_EXHAUSTED, &cause).await
            }
            (Ending::Failed { cause }, Some(token)) => {
                tracing::error!(error, %cause, "the work failed");
                self.link.fail(token, names::WORKER_FAILED, &cause).await
            }
            (Ending::Succeeded { summary }, Some(token)) => {
                println!("{}", serde_json::to_string_pretty(&summary)?);
                self.link.succeed(token, &summary).await
            }
        }
    }
}

/// The work under way and its watches.
struct Working {
    spot: JoinHandle<()>,
    sigterm: JoinHandle<()>,
    budget: Option<JoinHandle<()>>,
    work: JoinHandle<Worked>,
}

impl Working {
    /// What the work hands back, the watches stopped once it has.
    async fn end(self) -> Worked {
        let worked = match self.work.await {
            Ok(w) => w,
            Err(e) => Worked::Crashed {
                cause: e.to_string(),
            },
        };
        self.spot.abort();
        self.sigterm.abort();
        if let Some(b) = self.budget {
            b.abort();
        }
        worked
    }
}

/// Cancels `stop` at `at`, the money deadline (`seconds` after the worker started), and says
/// so in `passed`: the work stops as at a Spot notice, the ending is `Worker.BudgetExhausted`.
fn on_deadline(
    at: Instant,
    seconds: u64,
    passed: Arc<AtomicBool>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep_until(at.into()).await;
        if stop.is_cancelled() {
            // Stopped already (a notice, SIGTERM): the deadline did not stop it.
            return;
        }
        tracing::warn!(
            budget_seconds = seconds,
            "the money deadline: the run's cap bought this attempt no more; stopping the work as at a Spot notice"
        );
        passed.store(true, Ordering::SeqCst);
        stop.cancel();
    })
}

/// Cancels `stop` on SIGTERM (the instance shutting down, usually a Spot reclaim), saying
/// `what` it does to the work.
pub fn on_sigterm(stop: CancellationToken, what: &'static str) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            tracing::warn!("{what}");
            stop.cancel();
        }
    })
}

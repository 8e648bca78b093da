//! Following a run: each state as it is entered with the time since the start, the attempts
//! launched, a cost so far, and at the end the outcome with the report's summary.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use aws_sdk_sfn::types::ExecutionStatus;
use chrono::{DateTime, Utc};
use ephemera_core::catalog;
use ephemera_core::cost::{billed_seconds, ebs_cost, on_demand_cost};
use ephemera_core::rundoc::Attempt;

use crate::errors::CliError;
use crate::history;
use crate::report;
use crate::resolve::{self, Execution};
use crate::terminal::printable;
use crate::Outcome;

/// How the running cost is worked out, said once above the figures.
pub const COST_SO_FAR_NOTE: &str = "≈ cost so far: an estimate at On-Demand list prices (the dated table, x1.6 outside us-east-1) from each launch to the next or now, EBS included; Spot bills less; the report at the end is measured";

const POLL: Duration = Duration::from_secs(2);
/// Off a terminal, a line this often while one state lasts.
const QUIET_LINE_EVERY: Duration = Duration::from_secs(300);

/// `0:07`, `12:34`, `1:02:03`.
pub fn elapsed(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// The estimate described by [`COST_SO_FAR_NOTE`], in USD; types the table does not know are
/// left out and named.
pub fn cost_so_far(attempts: &[Attempt], region: &str, now: DateTime<Utc>) -> (f64, Vec<String>) {
    let mut usd = 0.0;
    let mut unpriced = vec![];
    let mut sorted: Vec<&Attempt> = attempts.iter().collect();
    sorted.sort_by_key(|a| a.launched_at);
    for (i, a) in sorted.iter().enumerate() {
        let end = sorted.get(i + 1).map_or(now, |next| next.launched_at);
        let billed = billed_seconds(a.launched_at, end.max(a.launched_at));
        match catalog::on_demand_hourly_bound(&a.instance_type, region) {
            Some(hourly) => usd += on_demand_cost(hourly, billed) + ebs_cost(a.volume_gib, billed),
            None => unpriced.push(a.instance_type.clone()),
        }
    }
    (usd, unpriced)
}

pub fn cost_text(usd: f64, unpriced: &[String]) -> String {
    let mut s = format!("≈${usd:.4} so far");
    if !unpriced.is_empty() {
        s.push_str(&format!(
            " (without {}: not in the price table)",
            unpriced.join(", ")
        ));
    }
    s
}

/// `#2 i-0abc c7g.4xlarge on-demand`.
pub fn attempt_text(a: &Attempt) -> String {
    format!(
        "#{} {} {} {}",
        a.attempt,
        a.instance_id,
        a.instance_type,
        a.market.as_str()
    )
}

/// One line per state entered: `  1:05  WaitBoot  attempt #1 i-0abc c7g.4xlarge spot`.
pub fn step_line(since_start: chrono::Duration, state: &str, detail: &str) -> String {
    let line = format!("{:>9}  {state:<24} {detail}", elapsed(since_start));
    line.trim_end().to_string()
}

/// The live line: where the run is and for how long, the whole time, and the cost so far.
pub fn live_line(
    state: &str,
    in_state: chrono::Duration,
    total: chrono::Duration,
    cost: &str,
) -> String {
    format!(
        "  in {state} for {}, {} since the start, {cost}",
        elapsed(in_state),
        elapsed(total)
    )
}

/// `, waiting on boot (2), job`: each kind of wait, with how many lanes wait on it.
pub fn waiting_on(waiting: &[crate::waiting::Waiting]) -> String {
    let mut kinds: Vec<(&str, usize)> = vec![];
    for w in waiting {
        let kind = w.why.split(':').next().unwrap_or_default();
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind, 1)),
        }
    }
    if kinds.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = kinds
        .iter()
        .map(|(k, n)| {
            if *n > 1 {
                format!("{k} ({n})")
            } else {
                k.to_string()
            }
        })
        .collect();
    format!(", waiting on {}", parts.join(", "))
}

/// What following has shown so far, so that each poll prints only what is new.
struct Shown {
    region: String,
    terminal: bool,
    /// States printed.
    printed: usize,
    /// Attempts announced.
    launched: usize,
    /// The cost-so-far note was printed.
    noted: bool,
    /// A live line is on the terminal's last row.
    live: bool,
    quiet_since: Instant,
}

impl Shown {
    /// A line per state entered since the last poll, with the attempt it launched.
    fn new_states(&mut self, d: &Execution, events: &[history::Event]) {
        let steps = history::entered(events);
        if steps.len() > self.printed {
            // The live line gives way to the new states.
            self.clear_live();
        }
        for step in steps.iter().skip(self.printed) {
            // What the run document said when this state was entered.
            let known = history::attempts(&events[..=step.index]);
            let mut detail = String::new();
            if known.len() > self.launched {
                if !self.noted {
                    println!("  ({COST_SO_FAR_NOTE})");
                    self.noted = true;
                }
                let newest = &known[known.len() - 1];
                let (usd, unpriced) = cost_so_far(&known, &self.region, step.at);
                detail = format!(
                    "attempt {}, {}",
                    attempt_text(newest),
                    cost_text(usd, &unpriced)
                );
                self.launched = known.len();
            }
            println!("{}", step_line(step.at - d.started, &step.state, &detail));
            self.quiet_since = Instant::now();
        }
        self.printed = steps.len();
    }

    /// The state the run is in, for how long, and the cost so far: redrawn on a terminal,
    /// otherwise printed now and then.
    fn live(&mut self, d: &Execution, events: &[history::Event]) {
        let Some((state, since)) = history::current_state(events) else {
            return;
        };
        let now = Utc::now();
        let attempts = history::attempts(events);
        let (usd, unpriced) = cost_so_far(&attempts, &self.region, now);
        let cost = if attempts.is_empty() {
            "nothing launched yet".to_string()
        } else {
            cost_text(usd, &unpriced)
        };
        let line = live_line(&state, now - since, now - d.started, &cost);
        let waiting = crate::waiting::now(events, now);
        if self.terminal {
            // One row, redrawn: what each lane waits on in a word; `ephemera status` says why.
            print!("\r\x1b[2K{line}{}", waiting_on(&waiting));
            let _ = std::io::stdout().flush();
            self.live = true;
        } else if self.quiet_since.elapsed() >= QUIET_LINE_EVERY {
            println!("{line}");
            for w in &waiting {
                println!("    waiting: {}", printable(&w.line()));
            }
            self.quiet_since = Instant::now();
        }
    }

    fn clear_live(&mut self) {
        if self.live {
            print!("\r\x1b[2K");
            self.live = false;
        }
    }
}

/// Follows `execution` until it ends or `timeout` passes.
pub async fn follow(
    sfn: &aws_sdk_sfn::Client,
    execution: &str,
    timeout: Duration,
) -> Result<Outcome, CliError> {
    let until = Instant::now() + timeout;
    let mut shown = Shown {
        region: crate::aws::region_of_arn(execution)
            .unwrap_or_default()
            .to_string(),
        terminal: std::io::stdout().is_terminal(),
        printed: 0,
        launched: 0,
        noted: false,
        live: false,
        quiet_since: Instant::now(),
    };
    loop {
        let d = resolve::describe(sfn, execution).await?;
        let events = history::read(sfn, execution).await?;
        shown.new_states(&d, &events);
        if !d.is_running() {
            // Both ways out end the following: the live line gives way.
            shown.clear_live();
            return Ok(finish(&d, &events));
        }
        if Instant::now() >= until {
            shown.clear_live();
            println!(
                "still {} after {} s of waiting; it goes on without this terminal: ephemera status {}",
                d.status.as_str(),
                timeout.as_secs(),
                d.name
            );
            return Ok(Outcome::StillRunning);
        }
        shown.live(&d, &events);
        tokio::time::sleep(POLL).await;
    }
}

/// The outcome line and the report's summary.
pub fn finish(d: &Execution, events: &[history::Event]) -> Outcome {
    let took = d.stopped.unwrap_or_else(Utc::now) - d.started;
    let report = history::report(events).or_else(|| d.output.as_ref().and_then(history::report_in));
    let succeeded = d.status == ExecutionStatus::Succeeded;
    let mut headline = format!("{} after {}", d.status.as_str(), elapsed(took));
    if let Some(usd) = report.as_ref().and_then(|r| r["actual_usd"].as_f64()) {
        headline.push_str(&format!(", ${usd:.4}"));
    }
    if !succeeded {
        headline.push_str(&format!(
            ": {} - {}",
            d.error.as_deref().unwrap_or("no error name"),
            d.cause.as_deref().unwrap_or("no cause given")
        ));
    }
    // The cause and the report quote the job's own text.
    println!("{}", printable(&headline));
    match report.as_ref().map(report::summary) {
        Some(Ok(text)) => println!("\n{}", printable(&text)),
        Some(Err(e)) => println!("(the report cannot be read: {e})"),
        None => println!("no cost report: nothing was launched, so there was nothing to clean up"),
    }
    if succeeded {
        Outcome::Done
    } else {
        Outcome::RunFailed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::tests::{at, attempt};

    fn attempts(v: Vec<serde_json::Value>) -> Vec<Attempt> {
        serde_json::from_value(serde_json::Value::Array(v)).unwrap()
    }

    #[test]
    fn elapsed_times_read_as_clocks() {
        let s = chrono::Duration::seconds;
        assert_eq!(elapsed(s(7)), "0:07");
        assert_eq!(elapsed(s(754)), "12:34");
        assert_eq!(elapsed(s(3723)), "1:02:03");
        assert_eq!(elapsed(s(-3)), "0:00");
        assert_eq!(step_line(s(65), "WaitBoot", ""), "     1:05  WaitBoot");
        assert_eq!(
            live_line("AwaitCompletion", s(192), s(340), "≈$0.0100 so far"),
            "  in AwaitCompletion for 3:12, 5:40 since the start, ≈$0.0100 so far"
        );
    }

    #[test]
    fn the_live_line_names_each_kind_of_wait_once() {
        let w = |why: &str| crate::waiting::Waiting {
            slot: Some(1),
            state: "WaitBoot".into(),
            since: at(0),
            why: why.into(),
            job: None,
        };
        assert_eq!(
            waiting_on(&[w("boot: i-1"), w("job: on i-2"), w("boot: i-3")]),
            ", waiting on boot (2), job"
        );
        assert_eq!(waiting_on(&[]), "");
    }

    #[test]
    fn cost_so_far_prices_each_attempt_until_the_next() {
        // c7g.4xlarge: 16 vCPUs × 0.03625 = 0.58 $/h in us-east-1; 30 GiB gp3 at 0.08 $/GiB-month.
        let a = attempts(vec![
            attempt(1, "i-1", "c7g.4xlarge", "spot", 0),
            attempt(2, "i-2", "c7g.4xlarge", "on-demand", 1800),
        ]);
        let (usd, unpriced) = cost_so_far(&a, "us-east-1", at(3600));
        let ebs = 30.0 * 0.08 * 3600.0 / (730.0 * 3600.0);
        assert!((usd - (0.58 + ebs)).abs() < 1e-9, "{usd}");
        assert!(unpriced.is_empty());
        // Elsewhere the table's price is raised to a bound the region does not exceed.
        let (away, _) = cost_so_far(&a, "eu-west-1", at(3600));
        assert!((away - (0.58 * 1.6 + ebs)).abs() < 1e-9, "{away}");
        // A launch a moment ago bills EC2's 60 s minimum.
        let (just, _) = cost_so_far(&a[..1], "us-east-1", at(5));
        assert!((just - (0.58 / 60.0 + 30.0 * 0.08 * 60.0 / (730.0 * 3600.0))).abs() < 1e-9);
        let odd = attempts(vec![attempt(1, "i-1", "z9.huge", "spot", 0)]);
        let (usd, unpriced) = cost_so_far(&odd, "us-east-1", at(60));
        assert_eq!((usd, unpriced.clone()), (0.0, vec!["z9.huge".to_string()]));
        assert_eq!(
            cost_text(0.0, &unpriced),
            "≈$0.0000 so far (without z9.huge: not in the price table)"
        );
    }
}

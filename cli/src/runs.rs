//! `ephemera runs` (recent runs with outcome and cost) and `ephemera status [RUN]`.

use aws_sdk_sfn::types::ExecutionStatus;
use chrono::{DateTime, Utc};
use ephemera_aws::{Ledger, LedgerTable};
use ephemera_core::ledger;
use ephemera_core::month_html::{self, Month, MonthRun};
use ephemera_core::rundoc::Attempt;
use serde_json::Value;

use crate::errors::CliError;
use crate::follow::{attempt_text, cost_so_far, cost_text, elapsed, COST_SO_FAR_NOTE};
use crate::history;
use crate::report;
use crate::resolve::{self, Execution};
use crate::terminal::printable;
use crate::Outcome;

/// One line of `ephemera runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub run_id: String,
    pub execution: String,
    pub status: String,
    pub started: DateTime<Utc>,
    pub duration: Option<chrono::Duration>,
    pub cost_usd: Option<f64>,
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The table, columns as wide as their widest cell.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "RUN",
        "EXECUTION",
        "STATUS",
        "STARTED (UTC)",
        "DURATION",
        "COST",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.run_id.clone(),
                r.execution.clone(),
                r.status.clone(),
                when(r.started),
                r.duration.map(elapsed).unwrap_or_else(|| "-".into()),
                r.cost_usd
                    .map(|c| format!("${c:.4}"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for c in &cells {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |c: &[String]| {
        let parts: Vec<String> = c
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                // Money and durations line up on the right.
                if i >= 4 {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(&header.map(String::from))];
    out.extend(cells.iter().map(|c| line(c)));
    out.join("\n")
}

fn actual_usd(report: &Value) -> Option<f64> {
    report.get("actual_usd").and_then(Value::as_f64)
}

pub async fn runs(
    sfn: &aws_sdk_sfn::Client,
    ledger: Option<&LedgerTable>,
    machine: &str,
    limit: usize,
) -> Result<Outcome, CliError> {
    let listed = resolve::list(sfn, machine, limit).await?;
    if listed.is_empty() {
        println!("no runs yet on {machine}");
        return Ok(Outcome::Done);
    }
    let mut rows = vec![];
    for l in &listed {
        let e = resolve::describe(sfn, &l.arn).await?;
        let cost = report::find(sfn, &e).await?.as_ref().and_then(actual_usd);
        rows.push(Row {
            run_id: e.run_id().unwrap_or_else(|| "?".into()),
            execution: e.name.clone(),
            status: e.status.as_str().to_string(),
            started: e.started,
            duration: e.stopped.map(|s| s - e.started),
            cost_usd: cost,
        });
    }
    println!("{}", table(&rows));
    if let Some(l) = ledger {
        // The month's spend is a summary line: a ledger that cannot be read does not fail the
        // listing above it.
        let month = ledger::month_of(Utc::now());
        match l.entries(&month).await {
            Ok(entries) => println!("\n{}", month_line(&month, &l.table, &entries)),
            Err(e) => eprintln!("the ledger {} could not be read: {e}", l.table),
        }
    }
    Ok(Outcome::Done)
}

/// What `ephemera runs --html` draws: which month, against what budget, into which file.
pub struct Page {
    pub month: Option<String>,
    pub budget_usd: Option<f64>,
    pub file: std::path::PathBuf,
}

/// Writes the month's page: every execution started in the month, each costed by its report,
/// or by what the ledger holds for it while it runs.
pub async fn month_page(
    sfn: &aws_sdk_sfn::Client,
    ledger: Option<&LedgerTable>,
    machine: &str,
    page: Page,
) -> Result<Outcome, CliError> {
    let now = Utc::now();
    let month = page.month.unwrap_or_else(|| ledger::month_of(now));
    let mut m = Month {
        month: month.clone(),
        budget_usd: page.budget_usd,
        runs: vec![],
        generated_at: now,
    };
    let Some((start, end)) = m.bounds() else {
        return Err(CliError::Usage(format!(
            "--month {month}: expected a month as YYYY-MM, such as {}",
            ledger::month_of(now)
        )));
    };
    let reserved: Vec<ledger::Entry> = match ledger {
        Some(l) => l.entries(&month).await.unwrap_or_else(|e| {
            eprintln!("the ledger {} could not be read: {e}", l.table);
            vec![]
        }),
        None => vec![],
    };
    // ListExecutions answers newest first; a month of runs is well under its 1000 a page.
    for l in resolve::list(sfn, machine, 1000).await? {
        if l.started < start || l.started >= end {
            continue;
        }
        let e = resolve::describe(sfn, &l.arn).await?;
        let report = report::find(sfn, &e).await?;
        m.runs.push(month_run(&e, report.as_ref(), &reserved));
    }
    std::fs::write(&page.file, month_html::render(&m))
        .map_err(|e| CliError::Usage(format!("--html {}: {e}", page.file.display())))?;
    println!(
        "{}: {} run{}, ${:.2} of {} -> {}",
        m.month,
        m.runs.len(),
        if m.runs.len() == 1 { "" } else { "s" },
        m.total_usd(),
        m.budget_usd
            .map_or("no budget given".into(), |b| format!("${b:.2}")),
        page.file.display()
    );
    Ok(Outcome::Done)
}

/// One execution as the month's page shows it.
fn month_run(e: &Execution, report: Option<&Value>, reserved: &[ledger::Entry]) -> MonthRun {
    let on_ledger = reserved
        .iter()
        .find(|r| r.execution == e.arn)
        .map(ledger::Entry::charged_usd);
    let measured = report.and_then(actual_usd);
    MonthRun {
        run_id: e.run_id().unwrap_or_else(|| "?".into()),
        execution: e.name.clone(),
        started: e.started,
        status: e.status.as_str().to_string(),
        cost_usd: measured.or(on_ledger).unwrap_or(0.0),
        on_demand_usd: report
            .and_then(|r| r.get("on_demand_equivalent_usd"))
            .and_then(Value::as_f64),
        measured: measured.is_some(),
    }
}

/// `2026-11 so far: $667.06 spent or reserved by 2 runs (1 running, 1 ended) [ledger …]`.
pub fn month_line(month: &str, table: &str, entries: &[ledger::Entry]) -> String {
    let count = |s: ledger::EntryState| entries.iter().filter(|e| e.state == s).count();
    let mut states = vec![];
    for (s, name) in [
        (ledger::EntryState::Running, "running"),
        (ledger::EntryState::Ended, "ended"),
        (ledger::EntryState::Swept, "swept by the sweeper"),
    ] {
        if count(s) > 0 {
            states.push(format!("{} {name}", count(s)));
        }
    }
    format!(
        "{month} so far: ${:.2} spent or reserved by {} run{}{} [ledger {table}]",
        ledger::month_to_date(entries),
        entries.len(),
        if entries.len() == 1 { "" } else { "s" },
        if states.is_empty() {
            String::new()
        } else {
            format!(" ({})", states.join(", "))
        }
    )
}

pub async fn status(
    sfn: &aws_sdk_sfn::Client,
    logs: &aws_sdk_cloudwatchlogs::Client,
    e: &Execution,
) -> Result<Outcome, CliError> {
    let events = history::read(sfn, &e.arn).await?;
    let attempts = history::attempts(&events);
    let now = Utc::now();
    // A failed run's cause quotes the job's own text.
    let field = |k: &str, v: String| println!("{k:<10} {}", printable(&v));
    field("run", e.run_id().unwrap_or_else(|| "?".into()));
    field("execution", format!("{} ({})", e.name, e.arn));
    field("status", state_text(e, &events, now));
    if e.is_running() {
        for (i, w) in crate::waiting::now(&events, now).iter().enumerate() {
            let mut line = w.line();
            // A working job: when it last heartbeat and what it last wrote, from its stream.
            if let Some((attempt, instance)) = &w.job {
                match crate::logs::tail(logs, e, *attempt, instance).await {
                    Ok(lines) => {
                        line.push_str(&format!("; {}", crate::waiting::job_tail(&lines, now)))
                    }
                    Err(err) => line.push_str(&format!("; its log lines were not read: {err}")),
                }
            }
            field(if i == 0 { "waiting" } else { "" }, line);
        }
    }
    field(
        "started",
        format!("{} UTC, {} ago", when(e.started), elapsed(now - e.started)),
    );
    for (i, a) in attempts.iter().enumerate() {
        field(
            if i == 0 { "attempts" } else { "" },
            format!("{}, launched {} UTC", attempt_text(a), when(a.launched_at)),
        );
    }
    if attempts.is_empty() {
        field("attempts", "none launched".into());
    }
    let (cost, spent) = cost_status(e, &events, &attempts, now);
    field("cost", cost);
    if e.is_running() {
        if let Some(b) = crate::waiting::budget(&events, spent) {
            field("budget", b);
        }
    }
    Ok(match e.status {
        ExecutionStatus::Running | ExecutionStatus::Succeeded | ExecutionStatus::PendingRedrive => {
            Outcome::Done
        }
        _ => Outcome::RunFailed,
    })
}

/// The run's status line: running and in which state for how long, or how it ended.
fn state_text(e: &Execution, events: &[history::Event], now: DateTime<Utc>) -> String {
    match (e.is_running(), history::current_state(events)) {
        (true, Some((state, since))) => format!("RUNNING: in {state} for {}", elapsed(now - since)),
        (true, None) => "RUNNING".into(),
        (false, _) => {
            let took = e.stopped.unwrap_or(now) - e.started;
            let mut s = format!("{} after {}", e.status.as_str(), elapsed(took));
            if let Some(err) = &e.error {
                s.push_str(&format!(
                    ": {err} - {}",
                    e.cause.as_deref().unwrap_or("no cause given")
                ));
            }
            s
        }
    }
}

/// The run's cost line: measured by its report, or so far while it runs; and what it has
/// spent so far (0 when not estimated), which the budget line weighs.
fn cost_status(
    e: &Execution,
    events: &[history::Event],
    attempts: &[Attempt],
    now: DateTime<Utc>,
) -> (String, f64) {
    let region = crate::aws::region_of_arn(&e.arn).unwrap_or_default();
    let mut spent = 0.0;
    let cost = match (e.is_running(), history::report(events)) {
        (_, Some(r)) => match actual_usd(&r) {
            Some(usd) => format!("${usd:.4} (measured; ephemera report {})", e.name),
            None => "the report has no cost".into(),
        },
        (true, None) if !attempts.is_empty() => {
            let (usd, unpriced) = cost_so_far(attempts, region, now);
            spent = usd;
            format!(
                "{}\n{:<10} ({COST_SO_FAR_NOTE})",
                cost_text(usd, &unpriced),
                ""
            )
        }
        (true, None) => "nothing launched yet".into(),
        (false, None) => "none: nothing was launched".into(),
    };
    (cost, spent)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_months_line_counts_what_each_run_is_charged() {
        use ephemera_core::ledger::{Entry, EntryState};
        let e = |x: &str, reserved: f64, actual: Option<f64>, state| Entry {
            execution: x.into(),
            run_id: x.into(),
            month: "2026-11".into(),
            reserved_usd: reserved,
            workers: Default::default(),
            actual_usd: actual,
            state,
            started_at: None,
            outcome: None,
            placements: vec![],
        };
        let line = super::month_line(
            "2026-11",
            "ephemera-ledger",
            &[
                e("a", 3.0, Some(1.25), EntryState::Ended),
                e("b", 2.0, None, EntryState::Running),
            ],
        );
        assert_eq!(
            line,
            "2026-11 so far: $3.25 spent or reserved by 2 runs (1 running, 1 ended) [ledger ephemera-ledger]"
        );
        assert_eq!(
            super::month_line("2026-12", "t", &[]),
            "2026-12 so far: $0.00 spent or reserved by 0 runs [ledger t]"
        );
    }

    use super::*;
    use crate::history::tests::at;

    #[test]
    fn the_table_lines_up() {
        let rows = vec![
            Row {
                run_id: "fx".into(),
                execution: "fx-20260101T000000".into(),
                status: "SUCCEEDED".into(),
                started: at(0),
                duration: Some(chrono::Duration::seconds(754)),
                cost_usd: Some(0.42),
            },
            Row {
                run_id: "weekly-abc".into(),
                execution: "sched".into(),
                status: "RUNNING".into(),
                started: at(60),
                duration: None,
                cost_usd: None,
            },
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("RUN         EXECUTION           STATUS     STARTED (UTC)"),
            "{t}"
        );
        assert!(lines[1].ends_with("12:34  $0.4200"), "{t}");
        assert!(lines[2].ends_with("-        -"), "{t}");
        assert!(lines[1].contains("2027-01-15 08:00:00"), "{t}");
    }
}

//! The month at a glance as one static HTML page (`ephemera runs --html`): the spend against the
//! monthly budget over the month's days, the runs by outcome, and each run's cost and Spot
//! saving. Drawn as the run report is (inline SVG, the same stylesheet, no script).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};

use crate::ledger::{Entry, EntryState};
use crate::report_html::{escape, usd, when, STYLE};

/// One run of the month, as the page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct MonthRun {
    /// The RunSpec's `run_id`.
    pub run_id: String,
    /// The execution's name.
    pub execution: String,
    /// When the run started: its execution's start, or its first reservation in the ledger.
    pub started: DateTime<Utc>,
    /// The execution's status: RUNNING, SUCCEEDED, FAILED, TIMED_OUT, ABORTED.
    pub status: String,
    /// What it cost (its report), or what the ledger holds for it while it runs.
    pub cost_usd: f64,
    /// What the same instance time would have cost On-Demand (from its report).
    pub on_demand_usd: Option<f64>,
    /// The cost is the report's measure, not a reservation.
    pub measured: bool,
}

/// The month's page: its runs, started in `month` (`YYYY-MM`).
#[derive(Debug, Clone, PartialEq)]
pub struct Month {
    /// `YYYY-MM`.
    pub month: String,
    /// The stack's `MonthlyBudgetUsd`, when known.
    pub budget_usd: Option<f64>,
    /// The runs started in the month.
    pub runs: Vec<MonthRun>,
    /// When the page was made.
    pub generated_at: DateTime<Utc>,
}

impl Month {
    /// The month as the ledger knows it (what terminate-with-cost-report stores each time): a
    /// run's cost is what it is charged, its status its outcome once ended (SWEPT when the
    /// sweeper ended it), its start its first reservation (the month's first instant for an
    /// entry written before starts were kept). The ledger keeps no On-Demand figure.
    pub fn from_entries(
        month: &str,
        budget_usd: Option<f64>,
        entries: &[Entry],
        now: DateTime<Utc>,
    ) -> Month {
        let mut m = Month {
            month: month.into(),
            budget_usd,
            runs: vec![],
            generated_at: now,
        };
        let first = m.bounds().map_or(now, |(start, _)| start);
        m.runs = entries
            .iter()
            .map(|e| MonthRun {
                run_id: e.run_id.clone(),
                execution: e
                    .execution
                    .rsplit(':')
                    .next()
                    .unwrap_or(&e.execution)
                    .to_string(),
                started: e.started_at.unwrap_or(first),
                status: match e.state {
                    EntryState::Running => "RUNNING".into(),
                    EntryState::Swept => "SWEPT".into(),
                    EntryState::Ended => e.outcome.clone().unwrap_or_else(|| "ENDED".into()),
                },
                cost_usd: e.charged_usd(),
                on_demand_usd: None,
                measured: e.state == EntryState::Ended && e.actual_usd.is_some(),
            })
            .collect();
        m
    }

    /// The month's first instant and the next month's, or `None` for a malformed month.
    pub fn bounds(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let first = NaiveDate::parse_from_str(&format!("{}-01", self.month), "%Y-%m-%d").ok()?;
        let next = if first.month() == 12 {
            NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)?
        } else {
            NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)?
        };
        let at = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default());
        Some((at(first), at(next)))
    }

    /// What the month's runs cost or hold, in USD.
    pub fn total_usd(&self) -> f64 {
        self.runs.iter().map(|r| r.cost_usd).sum()
    }

    /// What Spot saved over On-Demand, over the runs whose report says both; `None` when no
    /// run's does (the ledger's page).
    pub fn savings_usd(&self) -> Option<f64> {
        let known: Vec<f64> = self
            .runs
            .iter()
            .filter_map(|r| r.on_demand_usd.map(|od| od - r.cost_usd))
            .collect();
        (!known.is_empty()).then(|| known.iter().sum())
    }

    /// The spend so far after each run, in the order they started: (start, cumulative USD).
    pub fn curve(&self) -> Vec<(DateTime<Utc>, f64)> {
        let mut runs: Vec<&MonthRun> = self.runs.iter().collect();
        runs.sort_by_key(|r| r.started);
        let mut total = 0.0;
        runs.iter()
            .map(|r| {
                total += r.cost_usd;
                (r.started, total)
            })
            .collect()
    }

    /// Runs and their cost by status, statuses in name order.
    pub fn by_status(&self) -> BTreeMap<&str, (usize, f64)> {
        let mut out: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
        for r in &self.runs {
            let e = out.entry(r.status.as_str()).or_default();
            e.0 += 1;
            e.1 += r.cost_usd;
        }
        out
    }
}

const CHART_W: f64 = 960.0;
const PLOT_X: f64 = 70.0;
const PLOT_W: f64 = 860.0;
const PLOT_TOP: f64 = 14.0;
const PLOT_H: f64 = 220.0;

/// The chart's scales: seconds into the month to x, dollars to y.
struct Scale {
    start: DateTime<Utc>,
    seconds: f64,
    top_usd: f64,
}

impl Scale {
    fn of(m: &Month, start: DateTime<Utc>, end: DateTime<Utc>) -> Scale {
        let top = m.budget_usd.unwrap_or(0.0).max(m.total_usd());
        Scale {
            start,
            seconds: (end - start).num_seconds().max(1) as f64,
            // Headroom above the higher of the budget and the spend; $1 for an empty month.
            top_usd: if top > 0.0 { top * 1.1 } else { 1.0 },
        }
    }
    fn x(&self, t: DateTime<Utc>) -> f64 {
        let s = ((t - self.start).num_seconds() as f64).clamp(0.0, self.seconds);
        PLOT_X + PLOT_W * s / self.seconds
    }
    fn y(&self, usd: f64) -> f64 {
        PLOT_TOP + PLOT_H * (1.0 - (usd / self.top_usd).clamp(0.0, 1.0))
    }
}

/// The spend against the budget: a step line through each run's start, a dot per run, the
/// budget as a dashed line, and the month's days along the axis.
fn svg_spend(m: &Month, out: &mut String) {
    let Some((start, end)) = m.bounds() else {
        return;
    };
    let sc = Scale::of(m, start, end);
    let height = PLOT_TOP + PLOT_H + 34.0;
    let _ = write!(
        out,
        r#"<svg id="spend" viewBox="0 0 {CHART_W} {height}" width="100%" role="img" aria-label="spend over {}">"#,
        escape(&m.month)
    );
    let base = sc.y(0.0);
    let days = (end - start).num_days();
    for day in (0..days).step_by(7).chain([days]) {
        let x = sc.x(start + Duration::days(day));
        let _ = write!(
            out,
            r#"<line class="grid" x1="{x:.1}" y1="{PLOT_TOP}" x2="{x:.1}" y2="{base:.1}"/>"#
        );
        if day < days {
            let _ = write!(
                out,
                r#"<text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                base + 16.0,
                (start + Duration::days(day)).format("%b %-d")
            );
        }
    }
    for usd_tick in [0.0, sc.top_usd / 2.0, sc.top_usd / 1.1] {
        let y = sc.y(usd_tick);
        let _ = write!(
            out,
            r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            PLOT_X - 6.0,
            y + 4.0,
            usd(usd_tick)
        );
    }
    if let Some(b) = m.budget_usd.filter(|b| *b > 0.0) {
        let y = sc.y(b);
        let _ = write!(
            out,
            r#"<line id="budget-line" class="budget" x1="{PLOT_X}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" data-usd="{b}"/><text class="budget-label" x="{:.1}" y="{:.1}" text-anchor="end">budget {}</text>"#,
            PLOT_X + PLOT_W,
            PLOT_X + PLOT_W,
            y - 5.0,
            usd(b)
        );
    }
    let curve = m.curve();
    let mut d = format!("M{PLOT_X:.1} {base:.1}");
    let mut y_now = base;
    for (t, total) in &curve {
        let x = sc.x(*t);
        let y = sc.y(*total);
        let _ = write!(d, " H{x:.1} V{y:.1}");
        y_now = y;
    }
    let until = sc.x(m.generated_at.min(end));
    let _ = write!(d, " H{until:.1}");
    let _ = write!(
        out,
        r#"<path id="spend-line" class="spend" d="{d}" data-end-y="{y_now:.1}"/>"#
    );
    for (i, (t, total)) in curve.iter().enumerate() {
        let _ = write!(
            out,
            r#"<circle class="run-dot" cx="{:.1}" cy="{:.1}" r="3.5" data-run="{i}" data-usd="{total:.4}"/>"#,
            sc.x(*t),
            sc.y(*total)
        );
    }
    let _ = write!(
        out,
        r#"<line class="axis" x1="{PLOT_X}" y1="{base:.1}" x2="{:.1}" y2="{base:.1}"/></svg>"#,
        PLOT_X + PLOT_W
    );
}

/// Runs by status as one bar split by count, and a line per status.
fn status_section(m: &Month, out: &mut String) {
    out.push_str(r#"<section id="outcomes"><h2>Runs by outcome</h2>"#);
    let by = m.by_status();
    let n = m.runs.len().max(1) as f64;
    out.push_str(r#"<svg id="outcome-bar" viewBox="0 0 960 22" width="100%" role="img" aria-label="runs by outcome">"#);
    let mut x = 0.0;
    for (status, (count, _)) in &by {
        let w = 960.0 * *count as f64 / n;
        let _ = write!(
            out,
            r#"<rect class="status status-{}" x="{x:.1}" y="0" width="{w:.1}" height="22" data-status="{}" data-count="{count}"/>"#,
            escape(&status.to_ascii_lowercase()),
            escape(status)
        );
        x += w;
    }
    out.push_str("</svg><table class=\"figures\"><tbody>");
    for (status, (count, cost)) in &by {
        let _ = write!(
            out,
            r#"<tr><th>{}</th><td class="num">{count} run{}</td><td class="num">{}</td></tr>"#,
            escape(status),
            if *count == 1 { "" } else { "s" },
            usd(*cost)
        );
    }
    out.push_str("</tbody></table></section>");
}

/// Every run, newest first.
fn runs_section(m: &Month, out: &mut String) {
    out.push_str(r#"<section><h2>Runs</h2><div class="wide"><table id="runs"><thead><tr><th>started (UTC)</th><th>run</th><th>outcome</th><th class="num">cost</th><th class="num">On-Demand</th><th class="num">Spot saved</th></tr></thead><tbody>"#);
    let mut runs: Vec<&MonthRun> = m.runs.iter().collect();
    runs.sort_by_key(|r| std::cmp::Reverse(r.started));
    for r in runs {
        let cost = if r.measured {
            usd(r.cost_usd)
        } else {
            format!("{} reserved", usd(r.cost_usd))
        };
        let (od, saved) = match r.on_demand_usd {
            Some(od) => (usd(od), usd(od - r.cost_usd)),
            None => ("-".into(), "-".into()),
        };
        let _ = write!(
            out,
            r#"<tr><td class="nw">{}</td><td>{} <code>{}</code></td><td>{}</td><td class="num cost">{cost}</td><td class="num">{od}</td><td class="num">{saved}</td></tr>"#,
            when(r.started),
            escape(&r.run_id),
            escape(&r.execution),
            escape(&r.status)
        );
    }
    out.push_str("</tbody></table></div></section>");
}

const MONTH_STYLE: &str = ".spend{fill:none;stroke:#1565c0;stroke-width:2.5}.run-dot{fill:#1565c0}
.budget{stroke:#c62828;stroke-width:1.5;stroke-dasharray:6 4}.budget-label{fill:#c62828}
.axis{stroke:#1d2329}.status-succeeded{fill:#2e7d32}.status-failed,.status-timed_out{fill:#c62828}
.status-running{fill:#4aa3c9}.status-aborted,.status-ended{fill:#616161}.status-swept{fill:#f0a030}.status{stroke:#fff;stroke-width:1}
.over{color:#c62828;font-weight:700}";

/// The whole page. Every figure comes from `m`; all text from it is escaped.
pub fn render(m: &Month) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let total = m.total_usd();
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>ephemera {}: {}</title><style>{STYLE}{MONTH_STYLE}</style></head><body><main>"#,
        escape(&m.month),
        usd(total)
    );
    let budget = match m.budget_usd.filter(|b| *b > 0.0) {
        Some(b) => {
            let class = if total > b { "over" } else { "" };
            format!(
                r#" of a <span id="budget">{}</span> budget (<span class="{class}" id="used">{:.0} %</span>)"#,
                usd(b),
                100.0 * total / b
            )
        }
        None => " (no monthly budget given)".into(),
    };
    let _ = write!(
        out,
        r#"<header><h1>ephemera, {}</h1><p class="meta"><span id="month-total">{}</span> spent or reserved by <span id="run-count">{}</span> run{}{budget}{} · generated {}</p></header>"#,
        escape(&m.month),
        usd(total),
        m.runs.len(),
        if m.runs.len() == 1 { "" } else { "s" },
        m.savings_usd().map_or(String::new(), |s| format!(
            r#" · Spot saved <span id="savings">{}</span>"#,
            usd(s)
        )),
        when(m.generated_at)
    );
    out.push_str(r#"<section><h2>Spend over the month</h2>"#);
    svg_spend(m, &mut out);
    out.push_str(r#"<p class="legend">each dot is a run, at its start; a running run counts what the ledger reserved for it</p></section>"#);
    status_section(m, &mut out);
    runs_section(m, &mut out);
    out.push_str("</main></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
    }

    fn run(id: &str, started: DateTime<Utc>, status: &str, cost: f64, od: Option<f64>) -> MonthRun {
        MonthRun {
            run_id: id.into(),
            execution: format!("{id}-x"),
            started,
            status: status.into(),
            cost_usd: cost,
            on_demand_usd: od,
            measured: status != "RUNNING",
        }
    }

    fn month() -> Month {
        Month {
            month: "2026-11".into(),
            budget_usd: Some(833.0),
            runs: vec![
                run("b", at(10, 12), "FAILED", 40.0, Some(100.0)),
                run("a", at(2, 8), "SUCCEEDED", 300.0, Some(900.0)),
                run("c", at(20, 0), "RUNNING", 200.0, None),
                run("<d>", at(25, 6), "SUCCEEDED", 100.0, Some(250.0)),
            ],
            generated_at: at(26, 0),
        }
    }

    #[test]
    fn the_month_adds_up_in_the_order_runs_started() {
        let m = month();
        assert_eq!(m.total_usd(), 640.0);
        assert_eq!(m.savings_usd(), Some(600.0 + 60.0 + 150.0));
        let curve: Vec<f64> = m.curve().iter().map(|c| c.1).collect();
        assert_eq!(curve, [300.0, 340.0, 540.0, 640.0]);
        let by = m.by_status();
        assert_eq!(by["SUCCEEDED"], (2, 400.0));
        assert_eq!(by["FAILED"], (1, 40.0));
        assert_eq!(by["RUNNING"], (1, 200.0));
        let (start, end) = m.bounds().unwrap();
        assert_eq!((end - start).num_days(), 30);
        let december = Month {
            month: "2026-12".into(),
            ..m.clone()
        };
        assert_eq!(december.bounds().unwrap().1.year(), 2027);
        let bad = Month {
            month: "2026-13".into(),
            ..m
        };
        assert_eq!(bad.bounds(), None);
    }

    #[test]
    fn the_ledgers_month_reads_each_entry_as_a_run() {
        let entry = |x: &str, state, actual: Option<f64>, outcome: Option<&str>| Entry {
            execution: format!("arn:aws:states:us-east-1:1:execution:ephemera-worker:{x}"),
            run_id: x.into(),
            month: "2026-11".into(),
            reserved_usd: 10.0,
            workers: Default::default(),
            actual_usd: actual,
            state,
            started_at: Some(at(3, 4)),
            outcome: outcome.map(String::from),
            placements: vec![],
        };
        let m = Month::from_entries(
            "2026-11",
            Some(833.0),
            &[
                entry("a", EntryState::Ended, Some(1.5), Some("SUCCEEDED")),
                entry("b", EntryState::Running, None, None),
                entry("c", EntryState::Swept, None, None),
                Entry {
                    started_at: None,
                    ..entry("d", EntryState::Ended, Some(0.5), None)
                },
            ],
            at(26, 0),
        );
        let seen: Vec<(&str, &str, f64, bool)> = m
            .runs
            .iter()
            .map(|r| {
                (
                    r.execution.as_str(),
                    r.status.as_str(),
                    r.cost_usd,
                    r.measured,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("a", "SUCCEEDED", 1.5, true),
                ("b", "RUNNING", 10.0, false),
                ("c", "SWEPT", 10.0, false),
                ("d", "ENDED", 0.5, true),
            ]
        );
        assert_eq!(m.runs[0].started, at(3, 4));
        assert_eq!(m.runs[3].started, m.bounds().unwrap().0);
        assert_eq!(m.savings_usd(), None);
        let html = render(&m);
        assert!(
            !html.contains(r#"id="savings""#),
            "no On-Demand figure, no saving in the header"
        );
        assert_eq!(html.matches(r#"class="run-dot""#).count(), 4);
    }

    #[test]
    fn the_page_draws_each_run_under_the_budget_and_escapes_names() {
        let m = month();
        let html = render(&m);
        assert_eq!(html.matches(r#"class="run-dot""#).count(), 4);
        assert!(html.contains(r#"id="budget-line""#));
        assert!(
            html.contains(r#"<span id="month-total">$640.0000</span>"#),
            "{html}"
        );
        assert!(html.contains("77 %"), "640 of 833");
        assert!(html.contains("&lt;d&gt;") && !html.contains("<d>"));
        assert!(html.contains("$200.0000 reserved"));
        assert!(!html.contains("<script"));
        // The dots climb: each later run is higher on the page (smaller y).
        let ys: Vec<f64> = html
            .split(r#"class="run-dot" cx=""#)
            .skip(1)
            .map(|s| {
                let cy = s.split("cy=\"").nth(1).unwrap();
                cy.split('"').next().unwrap().parse().unwrap()
            })
            .collect();
        assert!(ys.windows(2).all(|w| w[1] < w[0]), "{ys:?}");
        // Over the budget, it says so.
        let mut over = m.clone();
        over.budget_usd = Some(500.0);
        assert!(render(&over).contains(r#"class="over""#));
        // No budget and no run still draw a page.
        let empty = Month {
            budget_usd: None,
            runs: vec![],
            ..m
        };
        let page = render(&empty);
        assert!(page.contains("no monthly budget given") && page.contains("id=\"spend\""));
    }
}

//! The run report as one static HTML page: a timeline of the run drawn as an inline SVG chart,
//! the cost split, the attempts and the verification checks. No script, no stylesheet or font
//! to fetch: it reads the same from S3, a mail client or a local file.

use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};

use crate::instance_state::InstanceState;
use crate::report::{AttemptCost, CostReport};

/// Chart size in SVG user units; the SVG scales to the page width through its viewBox.
pub const CHART_WIDTH: f64 = 960.0;
/// Where the time axis starts (the lane labels sit left of it) and how wide it is.
pub const PLOT_X: f64 = 250.0;
/// The time axis's width, in SVG user units.
pub const PLOT_WIDTH: f64 = 680.0;
/// A phase that took no measurable time still gets a visible mark at its place.
pub const MIN_BAR_WIDTH: f64 = 2.0;
const LANE_HEIGHT: f64 = 34.0;
const TOP: f64 = 10.0;
const AXIS_HEIGHT: f64 = 34.0;

/// Text for HTML element content and double- or single-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One lane of the timeline: a phase of the run or one attempt's instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Lane {
    /// `quota-wait`, `boot`, `work` (one lane per attempt) or `teardown`.
    pub phase: &'static str,
    /// The attempt's place in the report's `attempts` (each worker numbers its own attempts).
    pub attempt: Option<usize>,
    /// The lane's name left of its bar: the phase, or the attempt's worker (when there are
    /// several), number, type and market (`w1 #2 c7g.large spot`).
    pub label: String,
    /// Where its bar starts.
    pub start: DateTime<Utc>,
    /// Where its bar ends.
    pub end: DateTime<Utc>,
    /// A Spot attempt whose instance was gone before teardown: Spot took it back.
    pub reclaimed: bool,
    /// Another attempt of the same worker followed this one (the next lane).
    pub relaunched: bool,
}

/// The run drawn as lanes over time, from the report alone ([`timeline`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// The earliest lane's start: the axis's left end.
    pub start: DateTime<Utc>,
    /// The latest lane's end (at least a second after `start`): the axis's right end.
    pub end: DateTime<Utc>,
    /// The run's phases and attempts, in the order they are drawn: quota wait, boot, each attempt,
    /// teardown.
    pub lanes: Vec<Lane>,
}

/// The lanes, from the report alone. The report keeps durations, not instants, for the phases,
/// so they are laid back from `generated_at` (the moment the instances were terminated, which
/// is where work ends): teardown follows it, work precedes it, boot precedes work, and the
/// quota wait opens the run (`generated_at - total_seconds`). Attempts use their own instants.
pub fn timeline(r: &CostReport) -> Timeline {
    let p = &r.phases;
    let secs = |s: i64| Duration::seconds(s.max(0));
    let g = r.generated_at;
    let work_start = g - secs(p.work_seconds);
    let boot_start = work_start - secs(p.boot_seconds);
    let run_start = g - secs(p.total_seconds);
    let mut lanes = vec![
        Lane {
            phase: "quota-wait",
            attempt: None,
            label: "quota wait".into(),
            start: run_start,
            end: run_start + secs(p.quota_wait_seconds),
            reclaimed: false,
            relaunched: false,
        },
        Lane {
            phase: "boot",
            attempt: None,
            label: "boot".into(),
            start: boot_start,
            end: work_start,
            reclaimed: false,
            relaunched: false,
        },
    ];
    for (i, a) in r.attempts.iter().enumerate() {
        lanes.push(Lane {
            phase: "work",
            attempt: Some(i),
            label: format!(
                "{}#{} {} {}",
                worker_of(r, a),
                a.attempt,
                a.instance_type,
                a.market.as_str()
            ),
            start: a.launched_at,
            end: a.ended_at.max(a.launched_at),
            reclaimed: a.reclaimed(),
            relaunched: relaunched(r, i),
        });
    }
    lanes.push(Lane {
        phase: "teardown",
        attempt: None,
        label: "teardown".into(),
        start: g,
        end: g + secs(p.teardown_seconds),
        reclaimed: false,
        relaunched: false,
    });
    let start = lanes.iter().map(|l| l.start).min().unwrap_or(g);
    let mut end = lanes.iter().map(|l| l.end).max().unwrap_or(g);
    if end <= start {
        end = start + Duration::seconds(1);
    }
    Timeline { start, end, lanes }
}

/// A time axis mapped onto `width` units from `x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Axis {
    /// The instant at the axis's left end.
    pub start: DateTime<Utc>,
    /// The instant at the axis's right end.
    pub end: DateTime<Utc>,
    /// Where the axis starts, in SVG user units.
    pub x: f64,
    /// How wide it is, in SVG user units.
    pub width: f64,
}

/// A bar on an [`Axis`]: where it starts and how wide it is, in SVG user units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bar {
    /// Its left edge.
    pub x: f64,
    /// Its width, at least [`MIN_BAR_WIDTH`].
    pub width: f64,
}

impl Axis {
    /// Where instant `t` falls, clamped to the axis.
    pub fn x_at(&self, t: DateTime<Utc>) -> f64 {
        let total = (self.end - self.start).num_milliseconds().max(1) as f64;
        let at = (t - self.start).num_milliseconds() as f64 / total;
        self.x + at.clamp(0.0, 1.0) * self.width
    }

    /// The bar of `start..end`: at least `MIN_BAR_WIDTH` wide, and moved left rather than past
    /// the axis's end when that minimum would overflow it.
    pub fn bar(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> Bar {
        let x = self.x_at(start);
        let width = (self.x_at(end) - x).max(MIN_BAR_WIDTH);
        Bar {
            x: x.min(self.x + self.width - width),
            width,
        }
    }
}

/// Tick offsets in seconds from the axis start: the first round step that gives at most
/// eight intervals.
pub fn ticks(total_seconds: i64) -> Vec<i64> {
    const STEPS: [i64; 21] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
        172800, 604800, 2592000,
    ];
    let total = total_seconds.max(1);
    let step = STEPS
        .iter()
        .copied()
        .find(|s| total <= s * 8)
        .unwrap_or(total);
    (0..=total / step).map(|i| i * step).collect()
}

/// `0 s`, `45 s`, `12 min 5 s`, `2 h 3 min`, `1 d 2 h`: two units at most.
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (d, h, m, sec) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec} s"),
        (0, 0, _) if sec == 0 => format!("{m} min"),
        (0, 0, _) => format!("{m} min {sec} s"),
        (0, _, 0) => format!("{h} h"),
        (0, _, _) => format!("{h} h {m} min"),
        (_, 0, _) => format!("{d} d"),
        _ => format!("{d} d {h} h"),
    }
}

pub(crate) fn usd(v: f64) -> String {
    format!("${v:.4}")
}

pub(crate) fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// "w2 " before an attempt's number when the run had several workers.
fn worker_of(r: &CostReport, a: &AttemptCost) -> String {
    if r.workers.len() > 1 || r.attempts.iter().any(|b| b.worker != a.worker) {
        format!("w{} ", a.worker)
    } else {
        String::new()
    }
}

/// Whether the attempt at `i` was followed by another of its worker (attempts are in worker,
/// then attempt order, so that one comes next).
fn relaunched(r: &CostReport, i: usize) -> bool {
    r.attempts
        .get(i + 1)
        .is_some_and(|b| b.worker == r.attempts[i].worker)
}

/// Roughly how wide a label is at the chart's 12-unit font, to keep it inside the chart.
fn text_width(s: &str) -> f64 {
    s.chars().count() as f64 * 6.8
}

fn annotation(r: &CostReport, lane: &Lane) -> String {
    let seconds = (lane.end - lane.start).num_seconds();
    match lane.attempt.and_then(|i| r.attempts.get(i)) {
        Some(a) => {
            let mut s = format!("{} s billed · {}", a.billed_seconds, usd(a.compute_usd));
            if lane.reclaimed {
                s.push_str(" · reclaimed by Spot");
            }
            if lane.relaunched {
                s.push_str(" → relaunched");
            }
            s
        }
        None => duration(seconds),
    }
}

fn svg_timeline(r: &CostReport, out: &mut String) {
    let t = timeline(r);
    let axis = Axis {
        start: t.start,
        end: t.end,
        x: PLOT_X,
        width: PLOT_WIDTH,
    };
    let lanes_bottom = TOP + LANE_HEIGHT * t.lanes.len() as f64;
    let height = lanes_bottom + AXIS_HEIGHT;
    let _ = write!(
        out,
        r#"<svg id="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {CHART_WIDTH} {height}" width="100%" role="img" aria-labelledby="timeline-title" data-start="{}" data-end="{}">"#,
        t.start.to_rfc3339(),
        t.end.to_rfc3339()
    );
    let _ = write!(
        out,
        r#"<title id="timeline-title">Timeline of run {}: {} from {} to {}</title>"#,
        escape(&r.run_id),
        duration((t.end - t.start).num_seconds()),
        when(t.start),
        when(t.end)
    );
    svg_grid(&t, &axis, lanes_bottom, out);
    let mut ends = vec![];
    for (i, lane) in t.lanes.iter().enumerate() {
        ends.push(svg_lane(r, lane, i, &axis, out));
    }
    svg_relaunches(&t, &ends, out);
    out.push_str("</svg>");
}

/// The grid and the time labels, drawn first so the bars are drawn over them.
fn svg_grid(t: &Timeline, axis: &Axis, lanes_bottom: f64, out: &mut String) {
    let total = (t.end - t.start).num_seconds();
    for s in ticks(total) {
        let x = axis.x_at(t.start + Duration::seconds(s));
        let _ = write!(
            out,
            r#"<line class="grid" x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{lanes_bottom}"/><text class="tick" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            lanes_bottom + 16.0,
            if s == 0 {
                "0".to_string()
            } else {
                format!("+{}", duration(s))
            }
        );
    }
    let _ = write!(
        out,
        r#"<text class="axis-caption" x="{PLOT_X}" y="{:.1}">time since {}</text>"#,
        lanes_bottom + 31.0,
        when(t.start)
    );
}

/// One lane: its label, its bar (with a cross where Spot took the instance back) and its
/// note; where its bar is, for the relaunch lines.
fn svg_lane(r: &CostReport, lane: &Lane, i: usize, axis: &Axis, out: &mut String) -> (Bar, f64) {
    let y = TOP + LANE_HEIGHT * i as f64;
    let bar = axis.bar(lane.start, lane.end);
    let mut class = format!("bar bar-{}", lane.phase);
    let mut data = format!(r#" data-phase="{}""#, lane.phase);
    if let Some(a) = lane.attempt.and_then(|i| r.attempts.get(i)) {
        let _ = write!(
            data,
            r#" data-worker="{}" data-attempt="{}""#,
            a.worker, a.attempt
        );
        let _ = write!(class, " market-{}", a.market.as_str());
    }
    if lane.reclaimed {
        class.push_str(" reclaimed");
        data.push_str(r#" data-reclaimed="true""#);
    }
    let seconds = (lane.end - lane.start).num_seconds();
    let _ = write!(
        out,
        r#"<g class="lane"><text class="lane-label" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
        PLOT_X - 10.0,
        y + 22.0,
        escape(&lane.label)
    );
    let _ = write!(
        out,
        r#"<rect class="{class}"{data} data-seconds="{seconds}" x="{:.2}" y="{:.1}" width="{:.2}" height="20" rx="3"><title>{}: {} ({} to {})</title></rect>"#,
        bar.x,
        y + 7.0,
        bar.width,
        escape(&lane.label),
        duration(seconds),
        when(lane.start),
        when(lane.end)
    );
    if lane.reclaimed {
        // A red cross where Spot took the instance back.
        let (cx, cy) = (bar.x + bar.width, y + 17.0);
        let _ = write!(
            out,
            r#"<path class="reclaim-mark" d="M{:.1} {:.1} l10 10 m0 -10 l-10 10"/>"#,
            cx - 5.0,
            cy - 5.0
        );
    }
    let note = annotation(r, lane);
    let w = text_width(&note);
    let after = bar.x + bar.width + if lane.reclaimed { 12.0 } else { 6.0 };
    let (x, anchor, inside) = if after + w <= CHART_WIDTH {
        (after, "start", false)
    } else if bar.width >= w + 12.0 {
        (bar.x + bar.width - 6.0, "end", true)
    } else {
        (bar.x - 6.0, "end", false)
    };
    let _ = write!(
        out,
        r#"<text class="bar-note{}" x="{x:.1}" y="{:.1}" text-anchor="{anchor}">{}</text></g>"#,
        if inside { " inside" } else { "" },
        y + 22.0,
        escape(&note)
    );
    (bar, y)
}

/// A relaunch: a dashed line from the reclaimed attempt's end to the next attempt's start.
fn svg_relaunches(t: &Timeline, ends: &[(Bar, f64)], out: &mut String) {
    for (i, lane) in t.lanes.iter().enumerate() {
        if lane.relaunched {
            let (from, y0) = ends[i];
            let (to, y1) = ends[i + 1];
            let _ = write!(
                out,
                r#"<path class="relaunch" d="M{:.1} {:.1} L{:.1} {:.1}"/>"#,
                from.x + from.width,
                y0 + 27.0,
                to.x,
                y1 + 7.0
            );
        }
    }
}

fn svg_cost_split(r: &CostReport, out: &mut String) {
    let parts = [
        ("compute", r.compute_usd),
        ("ebs", r.ebs_usd),
        ("orchestration", r.orchestration.usd),
    ];
    let total: f64 = parts.iter().map(|p| p.1.max(0.0)).sum();
    if total <= 0.0 {
        return;
    }
    out.push_str(r#"<svg id="cost-split" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 600 22" width="100%" height="22" preserveAspectRatio="none" role="img" aria-label="cost split">"#);
    let mut x = 0.0;
    for (name, v) in parts {
        let w = v.max(0.0) / total * 600.0;
        let _ = write!(
            out,
            r#"<rect class="split split-{name}" x="{x:.2}" y="0" width="{w:.2}" height="22"><title>{name}: {}</title></rect>"#,
            usd(v)
        );
        x += w;
    }
    out.push_str("</svg>");
}

fn row(out: &mut String, label: &str, id: &str, value: &str, detail: &str) {
    let _ = write!(
        out,
        r#"<tr><th scope="row">{label}</th><td id="{id}" class="num">{value}</td><td class="detail">{detail}</td></tr>"#
    );
}

fn cost_table(r: &CostReport, out: &mut String) {
    let o = &r.orchestration;
    out.push_str(r#"<table class="figures"><tbody>"#);
    row(
        out,
        r#"<span class="key split-compute"></span>Compute"#,
        "cost-compute",
        &usd(r.compute_usd),
        "the instances, per second with the 60 s minimum",
    );
    row(
        out,
        r#"<span class="key split-ebs"></span>EBS"#,
        "cost-ebs",
        &usd(r.ebs_usd),
        "gp3 root volumes, GiB-seconds",
    );
    row(
        out,
        r#"<span class="key split-orchestration"></span>Orchestration"#,
        "cost-orchestration",
        &usd(o.usd),
        &format!(
            "{} state transitions, {} Lambda invocations, {:.1} GB-s",
            o.state_transitions, o.lambda_invocations, o.lambda_gb_seconds
        ),
    );
    out.push_str(r#"</tbody><tbody class="total">"#);
    row(
        out,
        "Total",
        "cost-total",
        &usd(r.actual_usd),
        "what the run cost",
    );
    out.push_str("</tbody><tbody>");
    row(
        out,
        "Estimate",
        "cost-estimate",
        &usd(r.estimate_usd),
        "before launch, for the whole max runtime",
    );
    let used = if r.budget_usd > 0.0 {
        format!("{:.1} % used", r.actual_usd / r.budget_usd * 100.0)
    } else {
        String::new()
    };
    row(
        out,
        "Budget",
        "cost-budget",
        &format!("${:.2}", r.budget_usd),
        &used,
    );
    row(
        out,
        "On-Demand equivalent",
        "cost-on-demand",
        &usd(r.on_demand_equivalent_usd),
        "the same seconds at On-Demand prices",
    );
    row(
        out,
        "Saved",
        "cost-savings",
        &usd(r.savings_usd),
        "against On-Demand",
    );
    out.push_str("</tbody></table>");
}

fn phases_table(r: &CostReport, out: &mut String) {
    let p = &r.phases;
    out.push_str(r#"<table id="phases" class="figures"><tbody>"#);
    for (phase, label, s) in [
        ("quota-wait", "Quota wait", p.quota_wait_seconds),
        ("boot", "Boot", p.boot_seconds),
        ("work", "Work", p.work_seconds),
        ("teardown", "Teardown", p.teardown_seconds),
        ("total", "Total", p.total_seconds),
    ] {
        // Under a minute the readable form is the figure again: said once.
        let readable = Some(duration(s)).filter(|d| *d != format!("{s} s"));
        let _ = write!(
            out,
            r#"<tr data-phase="{phase}"><th scope="row">{label}</th><td id="phase-{phase}" class="num">{s} s</td><td class="detail">{}</td></tr>"#,
            readable.unwrap_or_default()
        );
    }
    out.push_str("</tbody></table>");
}

fn attempt_row(a: &AttemptCost, worker: &str, relaunched: bool, out: &mut String) {
    let reclaimed = a.reclaimed();
    let mut how = String::new();
    if reclaimed {
        how.push_str("reclaimed by Spot");
    }
    if relaunched {
        how.push_str(if reclaimed {
            ", relaunched"
        } else {
            "relaunched"
        });
    }
    let _ = write!(
        out,
        r#"<tr data-worker="{}" data-attempt="{}"{}><td>{}#{}</td><td class="nw"><code>{}</code><br>{} · {} · {}{}</td><td class="nw">{}<br>{}</td><td class="num billed">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{}<br>was {}{}</td></tr>"#,
        a.worker,
        a.attempt,
        if reclaimed {
            r#" class="reclaimed""#
        } else {
            ""
        },
        escape(worker),
        a.attempt,
        escape(&a.instance_id),
        escape(&a.instance_type),
        a.market.as_str(),
        escape(a.availability_zone.as_deref().unwrap_or("?")),
        a.placement.as_deref().map_or(String::new(), |p| format!(
            r#"<br><small class="placement">{}</small>"#,
            escape(p)
        )),
        when(a.launched_at),
        when(a.ended_at),
        a.billed_seconds,
        usd(a.compute_usd),
        usd(a.ebs_usd),
        usd(a.on_demand_equivalent_usd),
        usd(a.average_usd_per_hour),
        escape(&a.price_source),
        a.state_before.map_or("unknown", InstanceState::name),
        if how.is_empty() {
            String::new()
        } else {
            format!("<br><strong>{how}</strong>")
        }
    );
}

pub(crate) const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2329;margin:0;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:12px 18px;margin:14px 0}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:4px 0 10px}
.meta{color:#56606b;margin:0}code{font:12px ui-monospace,Menlo,monospace}
.outcome{font-size:14px;padding:2px 8px;border-radius:4px;color:#fff;vertical-align:middle}
.outcome.succeeded{background:#2e7d32}.outcome.failed{background:#c62828}.outcome.budget_exhausted{background:#b26a00}.outcome.cancelled{background:#546e7a}
.failure{border-color:#e57373;background:#fff5f5}.failure .cause{white-space:pre-wrap;overflow-wrap:anywhere}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceff2;vertical-align:top}
.figures th{width:200px}.figures td.num{width:110px}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.detail{color:#56606b}
tbody.total th,tbody.total td{font-weight:700;border-top:2px solid #1d2329}
.wide{overflow-x:auto}#attempts{font-size:13px}th.num{text-align:right}.nw{white-space:nowrap}
#verification td.ok,#verification td.bad{width:20px}
tr.reclaimed td{background:#fff3e0}tr.failed td{background:#ffebee}
.ok{color:#2e7d32;font-weight:700}.bad{color:#c62828;font-weight:700}
.key{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
svg text{font:12px system-ui,sans-serif;fill:#1d2329}
.lane-label{font-weight:600}.tick,.axis-caption{fill:#56606b}.grid{stroke:#e3e6ea}
.bar-quota-wait{fill:#f0a030}.bar-boot{fill:#4aa3c9}.bar-work.market-spot{fill:#2e7d32}
.bar-work.market-on-demand{fill:#1565c0}.bar-teardown{fill:#616161}.bar.reclaimed{fill-opacity:.75}
.bar-note.inside{fill:#fff}.reclaim-mark{stroke:#c62828;stroke-width:3}
.relaunch{stroke:#c62828;stroke-width:1.5;stroke-dasharray:4 3;fill:none}
.split-compute{fill:#2e7d32;background:#2e7d32}.split-ebs{fill:#8e24aa;background:#8e24aa}
.split-orchestration{fill:#f0a030;background:#f0a030}
.legend{color:#56606b;font-size:12px;margin:6px 0 0}.legend .key{margin-left:12px}
ul{margin:4px 0;padding-left:20px}
";

/// The whole page. Every figure comes from `r`; all text from it is escaped.
pub fn render(r: &CostReport) -> String {
    let mut out = String::with_capacity(16 * 1024);
    for section in [
        header_section,
        failure_section,
        timeline_section,
        cost_section,
        workers_section,
        attempts_section,
        verification_section,
        closing_section,
    ] {
        section(r, &mut out);
    }
    out.push_str("</main></body></html>\n");
    out
}

/// The page's head and the run's title line.
fn header_section(r: &CostReport, out: &mut String) {
    let outcome_class = r.outcome.as_str().to_ascii_lowercase();
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>ephemera {}: {} {}</title><style>{STYLE}</style></head><body><main>"#,
        escape(&r.run_id),
        r.outcome,
        usd(r.actual_usd)
    );
    let _ = write!(
        out,
        r#"<header><h1>ephemera run <span id="run-id">{}</span> <span id="outcome" class="outcome {outcome_class}">{}</span></h1><p class="meta">{} in {} · report generated {} · execution <code id="execution">{}</code></p></header>"#,
        escape(&r.run_id),
        r.outcome,
        usd(r.actual_usd),
        duration(r.phases.total_seconds),
        when(r.generated_at),
        escape(&r.execution)
    );
}

/// Why the run failed, first, when it did.
fn failure_section(r: &CostReport, out: &mut String) {
    if let Some(f) = r.failure.as_ref().or(r.error.as_ref()) {
        let _ = write!(
            out,
            r#"<section id="failure" class="failure"><h2>Failed: <code id="failure-error">{}</code></h2><p id="failure-cause" class="cause">{}</p>"#,
            escape(&f.error),
            escape(f.cause.as_deref().unwrap_or("(no cause given)"))
        );
        if let Some(e) = r.error.as_ref().filter(|e| e.error != f.error) {
            let _ = write!(
                out,
                r#"<p class="meta">caught as <code>{}</code></p>"#,
                escape(&e.error)
            );
        }
        out.push_str("</section>");
    }
}

/// The timeline drawing and its legend.
fn timeline_section(r: &CostReport, out: &mut String) {
    out.push_str(r#"<section><h2>Timeline</h2>"#);
    svg_timeline(r, out);
    out.push_str(concat!(
        r#"<p class="legend"><span class="key" style="background:#f0a030"></span>quota wait"#,
        r#"<span class="key" style="background:#4aa3c9"></span>boot (the last attempt's, until the worker was healthy)"#,
        r#"<span class="key" style="background:#2e7d32"></span>Spot instance"#,
        r#"<span class="key" style="background:#1565c0"></span>On-Demand instance"#,
        r#"<span class="key" style="background:#616161"></span>teardown"#,
        r#" · an attempt's bar runs from launch to its end; a red cross marks a Spot reclaim</p></section>"#
    ));
}

/// What it cost, split, and the time per phase.
fn cost_section(r: &CostReport, out: &mut String) {
    out.push_str(r#"<section id="cost"><h2>Cost</h2>"#);
    svg_cost_split(r, out);
    cost_table(r, out);
    out.push_str("</section>");

    out.push_str(r#"<section><h2>Time per phase</h2>"#);
    phases_table(r, out);
    out.push_str("</section>");
}

/// Each worker when there are several or one was lost; a single worker's work.
fn workers_section(r: &CostReport, out: &mut String) {
    if r.workers.len() > 1 || r.workers.iter().any(|w| w.error.is_some()) {
        out.push_str(r#"<section><h2>Workers</h2><table id="workers"><thead><tr><th>worker</th><th class="num">instances</th><th>ended</th></tr></thead><tbody>"#);
        for w in &r.workers {
            let _ = write!(
                out,
                r#"<tr data-worker="{}"><td>{}</td><td class="num">{}</td><td>{}</td></tr>"#,
                w.slot,
                w.slot,
                w.attempts,
                escape(&w.ended())
            );
        }
        out.push_str("</tbody></table></section>");
    }
    if let [w] = r.workers.as_slice() {
        if let (None, Some(work)) = (&w.error, &w.work) {
            let _ = write!(out, r#"<p id="work">Work: {}</p>"#, escape(work));
        }
    }
}

/// Each instance launched, priced.
fn attempts_section(r: &CostReport, out: &mut String) {
    out.push_str(r#"<section><h2>Attempts</h2>"#);
    if r.attempts.is_empty() {
        out.push_str(r#"<p id="attempts-none">None: nothing was launched.</p>"#);
    } else {
        out.push_str(r#"<div class="wide"><table id="attempts"><thead><tr><th>#</th><th>instance</th><th>launched<br>ended</th><th class="num">billed s</th><th class="num">compute</th><th class="num">EBS</th><th class="num">On-Demand eq.</th><th class="num">avg $/h</th><th>price source<br>state before teardown</th></tr></thead><tbody>"#);
        for (i, a) in r.attempts.iter().enumerate() {
            attempt_row(a, &worker_of(r, a), relaunched(r, i), out);
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str("</section>");
}

/// verify-completion's checks and the outputs they found.
fn verification_section(r: &CostReport, out: &mut String) {
    out.push_str(r#"<section><h2>Verification</h2>"#);
    match &r.verification {
        Some(v) => {
            let failed = v.checks.iter().filter(|c| !c.ok).count();
            let _ = write!(
                out,
                r#"<p id="verification-summary">{} checks, {} failed, at {}</p><table id="verification"><tbody>"#,
                v.checks.len(),
                failed,
                when(v.verified_at)
            );
            for c in &v.checks {
                let _ = write!(
                    out,
                    r#"<tr class="check {}" data-check="{}"><td class="{}">{}</td><th scope="row"><code>{}</code></th><td>{}</td></tr>"#,
                    if c.ok { "passed" } else { "failed" },
                    escape(&c.name),
                    if c.ok { "ok" } else { "bad" },
                    if c.ok { "✓" } else { "✗" },
                    escape(&c.name),
                    escape(&c.detail)
                );
            }
            out.push_str("</tbody></table>");
            if let Some(o) = &v.outputs {
                let _ = write!(
                    out,
                    r#"<p id="outputs">Outputs: {} object(s), {} bytes, listed in <code>{}</code></p>"#,
                    o.objects,
                    o.bytes,
                    escape(&o.listed_in())
                );
            }
        }
        None => out.push_str(
            r#"<p id="verification-none">Not verified: the run ended before verify-completion passed (its failed checks, if any, are in the error above).</p>"#,
        ),
    }
    out.push_str("</section>");
}

/// The snapshot, what was terminated, and the notes.
fn closing_section(r: &CostReport, out: &mut String) {
    if let Some(snap) = &r.snapshot {
        let _ = write!(
            out,
            r#"<section><h2>Snapshot before writing</h2><p id="snapshot"><code>{}</code> of {} <code>{}</code>: {}, requested {}</p></section>"#,
            escape(&snap.identifier),
            snap.kind.noun(),
            escape(&snap.source),
            escape(&snap.status),
            snap.requested_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    out.push_str(r#"<section><h2>Terminated</h2><p id="terminated">"#);
    if r.terminated.is_empty() {
        out.push_str("Nothing left to terminate.");
    } else {
        let ids: Vec<String> = r
            .terminated
            .iter()
            .map(|i| format!("<code>{}</code>", escape(i)))
            .collect();
        out.push_str(&ids.join(", "));
    }
    out.push_str("</p></section>");

    if !r.notes.is_empty() {
        out.push_str(r#"<section><h2>Notes</h2><ul id="notes">"#);
        for n in &r.notes {
            let _ = write!(out, "<li>{}</li>", escape(n));
        }
        out.push_str("</ul></section>");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cost::Orchestration;
    use crate::market::Market;
    use crate::report::{Outcome, Phases};
    use crate::rundoc::CaughtError;
    use crate::verify::Check;
    use crate::verify::Verification;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap() + Duration::seconds(s)
    }

    fn attempt(n: u32, market: Market, from: i64, to: i64, state: &str) -> AttemptCost {
        AttemptCost {
            worker: 1,
            attempt: n,
            instance_id: format!("i-000{n}"),
            instance_type: "c7g.4xlarge".into(),
            market,
            availability_zone: Some("us-east-1a".into()),
            launched_at: at(from),
            ended_at: at(to),
            billed_seconds: to - from,
            compute_usd: 0.0123 * n as f64,
            ebs_usd: 0.001,
            on_demand_equivalent_usd: 0.05,
            average_usd_per_hour: 0.2,
            price_source: "spot-price-history".into(),
            state_before: InstanceState::from_name(state),
            placement: None,
        }
    }

    /// A run from t=0 to t=1000: quota wait 100 s; attempt 1 (Spot) 100..400 reclaimed;
    /// attempt 2 (On-Demand) 420..1000 with boot 420..500 and work 500..1000; teardown 1000..1010.
    pub(crate) fn report() -> CostReport {
        CostReport {
            run_id: "fx-2023".into(),
            execution: "arn:aws:states:us-east-1:123456789012:execution:ephemera-worker:x".into(),
            outcome: Outcome::Succeeded,
            error: None,
            failure: None,
            estimate_usd: 2.3331,
            budget_usd: 5.0,
            actual_usd: 0.0399,
            compute_usd: 0.0369,
            ebs_usd: 0.002,
            on_demand_equivalent_usd: 0.1010,
            savings_usd: 0.0621,
            orchestration: Orchestration {
                state_transitions: 30,
                lambda_invocations: 9,
                lambda_gb_seconds: 1.5,
                usd: 0.001,
            },
            workers: vec![],
            snapshot: None,
            attempts: vec![
                attempt(1, Market::Spot, 100, 400, "terminated"),
                attempt(2, Market::OnDemand, 420, 1000, "running"),
            ],
            phases: Phases {
                quota_wait_seconds: 100,
                boot_seconds: 80,
                work_seconds: 500,
                teardown_seconds: 10,
                total_seconds: 1000,
            },
            terminated: vec!["i-0002".into()],
            generated_at: at(1000),
            notes: vec!["EBS gp3 at $0.08/GiB-month".into()],
            verification: Some(Verification {
                ok: true,
                checks: vec![Check {
                    name: "min_rows".into(),
                    ok: true,
                    detail: "20 rows written, at least 10 expected".into(),
                }],
                verified_at: at(999),
                outputs: None,
            }),
            stored: None,
            month_page: None,
        }
    }

    #[test]
    fn lanes_are_laid_out_from_the_phases_and_the_attempts() {
        // phase, attempt's place in the report, start and end in seconds from t=0, reclaimed,
        // relaunched.
        type Span = (&'static str, Option<usize>, i64, i64, bool, bool);
        let t = timeline(&report());
        let spans: Vec<Span> = t
            .lanes
            .iter()
            .map(|l| {
                (
                    l.phase,
                    l.attempt,
                    (l.start - at(0)).num_seconds(),
                    (l.end - at(0)).num_seconds(),
                    l.reclaimed,
                    l.relaunched,
                )
            })
            .collect();
        assert_eq!(
            spans,
            vec![
                ("quota-wait", None, 0, 100, false, false),
                ("boot", None, 420, 500, false, false),
                ("work", Some(0), 100, 400, true, true),
                ("work", Some(1), 420, 1000, false, false),
                ("teardown", None, 1000, 1010, false, false),
            ]
        );
        assert_eq!((t.start, t.end), (at(0), at(1010)));
        assert_eq!(t.lanes[2].label, "#1 c7g.4xlarge spot");
    }

    #[test]
    fn an_empty_run_still_has_an_axis() {
        let mut r = report();
        r.attempts.clear();
        r.phases = Phases::default();
        let t = timeline(&r);
        assert_eq!(t.lanes.len(), 3, "quota wait, boot, teardown");
        assert_eq!((t.start, t.end), (at(1000), at(1001)));
    }

    #[test]
    fn bars_map_time_onto_the_axis() {
        // 1000 s over 500 units from x=100: half a unit per second.
        let axis = Axis {
            start: at(0),
            end: at(1000),
            x: 100.0,
            width: 500.0,
        };
        assert_eq!(
            axis.bar(at(100), at(300)),
            Bar {
                x: 150.0,
                width: 100.0
            }
        );
        assert_eq!(
            axis.bar(at(0), at(1000)),
            Bar {
                x: 100.0,
                width: 500.0
            }
        );
        // 1.5 s: 0.75 units, widened to the minimum.
        let b = axis.bar(at(500), at(500) + Duration::milliseconds(1500));
        assert_eq!(
            b,
            Bar {
                x: 350.0,
                width: MIN_BAR_WIDTH
            }
        );
        // Nothing at the very end: the minimum bar ends at the axis's end, not past it.
        assert_eq!(
            axis.bar(at(1000), at(1000)),
            Bar {
                x: 598.0,
                width: 2.0
            }
        );
        // Outside the axis: clamped.
        assert_eq!(
            axis.bar(at(-50), at(2000)),
            Bar {
                x: 100.0,
                width: 500.0
            }
        );
        assert_eq!(axis.x_at(at(250)), 225.0);
    }

    #[test]
    fn each_attempt_shows_the_candidate_its_launch_tried_first() {
        let mut r = report();
        let line = "tried c7g.4xlarge in us-east-1b first: score 9, $0.2100/h, 0 reclaims in 14 runs (spot, 12 ranked)";
        r.attempts[0].placement = Some(format!("{line} <x>"));
        let page = render(&r);
        assert!(
            page.contains(&format!(
                r#"<small class="placement">{line} &lt;x&gt;</small>"#
            )),
            "{page}"
        );
        let (_, body) = crate::email::render_email(&r);
        assert!(body.contains(&format!("    {line} <x>\n")), "{body}");
        // An attempt without one (a report from before) shows nothing for it.
        r.attempts[0].placement = None;
        assert!(!render(&r).contains("class=\"placement\""));
    }

    #[test]
    fn ticks_take_a_round_step() {
        assert_eq!(ticks(1010), vec![0, 300, 600, 900]);
        assert_eq!(ticks(40), vec![0, 5, 10, 15, 20, 25, 30, 35, 40]);
        assert_eq!(ticks(0), vec![0, 1]);
        assert_eq!(ticks(3 * 3600 + 10).len(), 7, "every 30 min");
    }

    #[test]
    fn a_phase_under_a_minute_is_said_once() {
        let mut out = String::new();
        let mut r = report();
        r.phases.boot_seconds = 34;
        r.phases.work_seconds = 812;
        phases_table(&r, &mut out);
        assert!(
            out.contains(r#"id="phase-boot" class="num">34 s</td><td class="detail"></td>"#),
            "{out}"
        );
        assert!(
            out.contains(
                r#"id="phase-work" class="num">812 s</td><td class="detail">13 min 32 s</td>"#
            ),
            "{out}"
        );
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(600), "10 min");
        assert_eq!(duration(725), "12 min 5 s");
        assert_eq!(duration(7200), "2 h");
        assert_eq!(duration(7385), "2 h 3 min");
        assert_eq!(duration(93600), "1 d 2 h");
        assert_eq!(duration(-5), "0 s");
    }

    #[test]
    fn the_page_has_the_chart_and_every_figure() {
        let html = render(&report());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains(r#"<svg id="timeline""#));
        for phase in ["quota-wait", "boot", "teardown"] {
            assert_eq!(
                html.matches(&format!(r#"data-phase="{phase}" data-seconds"#))
                    .count(),
                1,
                "{phase}"
            );
        }
        assert_eq!(
            html.matches(r#"data-phase="work" data-worker="1" data-attempt="#)
                .count(),
            2
        );
        // Attempt 1: 300 s of 1010 over 680 units from 250, i.e. x = 250 + 100/1010*680.
        assert!(
            html.contains(r#"data-phase="work" data-worker="1" data-attempt="1" data-reclaimed="true" data-seconds="300" x="317.33" y="85.0" width="201.98""#),
            "{html}"
        );
        assert!(html.contains("300 s billed · $0.0123 · reclaimed by Spot → relaunched"));
        assert_eq!(html.matches(r#"class="relaunch""#).count(), 1);
        assert_eq!(html.matches(r#"class="reclaim-mark""#).count(), 1);
        assert!(html.contains(r#"<td id="cost-total" class="num">$0.0399</td>"#));
        for (id, v) in [
            ("cost-compute", "$0.0369"),
            ("cost-ebs", "$0.0020"),
            ("cost-orchestration", "$0.0010"),
            ("cost-estimate", "$2.3331"),
            ("cost-budget", "$5.00"),
            ("cost-on-demand", "$0.1010"),
            ("cost-savings", "$0.0621"),
            ("phase-work", "500 s"),
        ] {
            assert!(
                html.contains(&format!(r#"id="{id}" class="num">{v}<"#)),
                "{id}"
            );
        }
        assert!(html.contains(r#"<td class="num billed">300</td>"#));
        assert!(html.contains(r#"<td class="num billed">580</td>"#));
        assert!(html.contains(r#"<tr data-worker="1" data-attempt="1" class="reclaimed">"#));
        assert!(html.contains(r#"data-check="min_rows""#));
        assert!(html.contains("20 rows written, at least 10 expected"));
        assert!(!html.contains(r#"id="failure""#));
        assert!(!html.contains("<script"), "no script");
        for fetch in [" src=", "href=", "url(", "@import"] {
            assert!(!html.contains(fetch), "nothing to fetch: {fetch}");
        }
    }

    #[test]
    fn text_from_the_run_is_escaped() {
        let mut r = report();
        r.run_id = "r<1>".into();
        r.outcome = Outcome::Failed;
        r.error = Some(CaughtError {
            error: "Worker.Failed".into(),
            cause: Some(r#"<script>alert("x")</script> & 'more'"#.into()),
        });
        r.failure = r.error.clone();
        r.notes = vec!["<img src=x onerror=alert(1)>".into()];
        r.verification = None;
        let html = render(&r);
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;more&#39;")
        );
        assert!(html.contains(r#"<span id="run-id">r&lt;1&gt;</span>"#));
        assert!(html.contains(r#"<span id="outcome" class="outcome failed">FAILED</span>"#));
        assert!(html.contains(r#"<code id="failure-error">Worker.Failed</code>"#));
        assert!(html.contains(r#"id="verification-none""#));
    }

    #[test]
    fn a_run_stopped_at_its_cap_says_so_on_its_page() {
        let mut r = report();
        r.error = Some(CaughtError {
            error: "Worker.BudgetExhausted".into(),
            cause: Some("stopped at the money deadline".into()),
        });
        r.outcome = Outcome::of(r.error.as_ref());
        let html = render(&r);
        assert!(
            html.contains(
                r#"<span id="outcome" class="outcome budget_exhausted">BUDGET_EXHAUSTED</span>"#
            ),
            "{html}"
        );
    }

    #[test]
    fn several_workers_each_have_their_lanes_and_a_lost_one_says_why() {
        let mut r = report();
        // Worker 1: attempts 1 (reclaimed) and 2; worker 2: one attempt, lost.
        let mut other = attempt(1, Market::Spot, 100, 600, "terminated");
        other.worker = 2;
        other.instance_id = "i-0002x".into();
        r.attempts.push(other);
        r.workers = vec![
            crate::report::WorkerLine {
                slot: 1,
                attempts: 2,
                reported: true,
                error: None,
                work: Some("`python3 train.py` exited 0 after 812 s".into()),
            },
            crate::report::WorkerLine {
                slot: 2,
                attempts: 1,
                reported: false,
                error: Some(CaughtError {
                    error: "Worker.TimedOut".into(),
                    cause: Some("silent <3 min".into()),
                }),
                work: None,
            },
        ];
        let t = timeline(&r);
        let work: Vec<&Lane> = t.lanes.iter().filter(|l| l.phase == "work").collect();
        assert_eq!(work.len(), 3);
        assert_eq!(work[0].label, "w1 #1 c7g.4xlarge spot");
        assert_eq!(work[2].label, "w2 #1 c7g.4xlarge spot");
        // Worker 1's first attempt was followed by its second; worker 1's last and worker 2's
        // only one were followed by no attempt of theirs.
        let followed: Vec<bool> = work.iter().map(|l| l.relaunched).collect();
        assert_eq!(followed, [true, false, false]);
        let html = render(&r);
        assert!(html.contains(r#"<table id="workers">"#), "{html}");
        assert!(
            html.contains("lost: Worker.TimedOut (silent &lt;3 min)"),
            "escaped cause"
        );
        assert!(html.contains(r#"data-worker="2" data-attempt="1""#));
        // A job's worker says what it ran and how it ended.
        assert!(
            html.contains("reported: `python3 train.py` exited 0 after 812 s"),
            "{html}"
        );
        // One worker: no workers table, no worker prefixes; its work in a line.
        let mut one = report();
        assert!(!render(&one).contains(r#"id="workers""#));
        one.workers = vec![crate::report::WorkerLine {
            slot: 1,
            attempts: 1,
            reported: true,
            error: None,
            work: Some("`python3 <job>.py` exited 0 after 12 s".into()),
        }];
        assert!(render(&one)
            .contains(r#"<p id="work">Work: `python3 &lt;job&gt;.py` exited 0 after 12 s</p>"#));
        assert!(timeline(&one)
            .lanes
            .iter()
            .all(|l| !l.label.starts_with('w')));
    }
}

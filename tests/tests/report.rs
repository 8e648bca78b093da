//! The HTML run report: stored by terminate-with-cost-report beside the run's manifest (moto
//! behind the front door, the template's IAM enforced) and linked from the email; and drawn by
//! a real browser (headless Chromium), whose layout is measured.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ephemera_core::report::{CostReport, StoredReport};
use ephemera_core::report_html;
use ephemera_functions::{Function, Settings};
use ephemera_tests::deployed::{bare_settings, call_with, execution, launch_with};
use ephemera_tests::fixtures::{self, ctx, Ctx};
use ephemera_tests::iam::{ARTIFACT_BUCKET, EXPORT_BUCKET};
use serde_json::{json, Value};

/// The settings these tests invoke with: the artifact bucket the template sets, and no other
/// bucket, topic or stack.
fn settings() -> Settings {
    Settings {
        artifact_bucket: Some(ARTIFACT_BUCKET.into()),
        ..bare_settings()
    }
}

/// An object's content type and body.
async fn get(c: &Ctx, bucket: &str, key: &str) -> (String, Vec<u8>) {
    let o = c
        .aws
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("s3://{bucket}/{key}: {e:?}"));
    let content_type = o.content_type().unwrap_or_default().to_string();
    (
        content_type,
        o.body.collect().await.unwrap().into_bytes().to_vec(),
    )
}

#[tokio::test]
async fn the_report_is_stored_beside_the_manifest_and_linked_from_the_email() {
    let c = ctx().await;
    fixtures::bucket(&c.aws.s3, EXPORT_BUCKET, c.region).await;
    let inbox = fixtures::inbox(c.region, "ephemera-reports").await;
    let run = "html-beside";
    let mut spec = fixtures::runspec(run, &c.net, Some(&inbox.topic_arn));
    spec["expect"] = json!({"export_prefix": format!("s3://{EXPORT_BUCKET}/runs/{run}/")});
    let w = launch_with(&c, &spec, run, json!({}), settings())
        .await
        .unwrap();
    // As the state machine passes them: the worker's summary and verify-completion's checks.
    let result = json!({"run_id": run, "partitions_done": 2, "partitions_failed": 0,
        "rows_in": 20, "rows_out": 20,
        "manifest": format!("s3://{EXPORT_BUCKET}/runs/{run}/manifest.json")});
    let verification = json!({"ok": true, "verified_at": "2026-11-22T11:00:00Z", "checks": [
        {"name": "manifest_rows_match_report", "ok": true, "detail": "20 rows listed, 20 reported"}]});
    let report: CostReport = serde_json::from_value(
        call_with(
            &c,
            Function::TerminateWithCostReport,
            json!({"run": spec, "execution": execution(c.region, run),
                   "workers": [{"slot": 1, "worker": w, "result": result}],
                   "verification": verification}),
            settings(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let place = StoredReport {
        bucket: EXPORT_BUCKET.into(),
        prefix: format!("runs/{run}/"),
    };
    assert_eq!(report.stored.as_ref(), Some(&place), "{:?}", report.notes);
    assert!(
        !report
            .notes
            .iter()
            .any(|n| n.contains("could not be stored")),
        "{:?}",
        report.notes
    );
    assert_eq!(
        report.verification.as_ref().unwrap().checks[0].name,
        "manifest_rows_match_report"
    );

    let (content_type, html) = get(&c, EXPORT_BUCKET, &format!("runs/{run}/report.html")).await;
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = String::from_utf8(html).unwrap();
    assert!(html.contains(r#"<svg id="timeline""#));
    assert!(html.contains(&w.current().unwrap().instance_id));
    assert!(html.contains(&format!(
        r#"<td id="cost-total" class="num">${:.4}</td>"#,
        report.actual_usd
    )));
    assert!(html.contains(r#"data-check="manifest_rows_match_report""#));
    let (content_type, json) = get(&c, EXPORT_BUCKET, &format!("runs/{run}/report.json")).await;
    assert_eq!(content_type, "application/json");
    let stored: CostReport = serde_json::from_slice(&json).unwrap();
    assert_eq!(
        (
            stored.run_id.as_str(),
            stored.stored.as_ref(),
            stored.attempts.len()
        ),
        (run, Some(&place), 1)
    );
    assert_eq!(
        format!("{:.6}", stored.actual_usd),
        format!("{:.6}", report.actual_usd)
    );

    let mail = ephemera_tests::eventually("the SNS email", Duration::from_secs(10), || async {
        let m = inbox.read().await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    let body = &mail[0].body;
    assert!(
        body.contains(&format!(
            "(HTML): s3://{EXPORT_BUCKET}/runs/{run}/report.html\n  in the S3 console: https://s3.console.aws.amazon.com/s3/object/{EXPORT_BUCKET}?prefix=runs/{run}/report.html\n"
        )),
        "{body}"
    );
}

#[tokio::test]
async fn a_run_without_export_reports_to_the_artifact_bucket_and_a_refusal_is_a_note() {
    let c = ctx().await;
    fixtures::bucket(&c.aws.s3, ARTIFACT_BUCKET, c.region).await;
    let run = "html-artifact";
    let spec = fixtures::runspec(run, &c.net, None);
    let w = launch_with(&c, &spec, run, json!({}), settings())
        .await
        .unwrap();
    let payload = json!({"run": spec, "execution": execution(c.region, run),
        "workers": [{"slot": 1, "worker": w}],
        "error": {"Error": "Worker.Failed", "Cause": "<script>alert(1)</script>"}});
    let report: CostReport = serde_json::from_value(
        call_with(
            &c,
            Function::TerminateWithCostReport,
            payload.clone(),
            settings(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        report.stored.as_ref().map(|s| s.html_uri()),
        Some(format!("s3://{ARTIFACT_BUCKET}/runs/{run}/report.html"))
    );
    let (_, html) = get(&c, ARTIFACT_BUCKET, &format!("runs/{run}/report.html")).await;
    let html = String::from_utf8(html).unwrap();
    assert!(html.contains(r#"id="failure""#) && !html.contains("<script"));
    get(&c, ARTIFACT_BUCKET, &format!("runs/{run}/report.json")).await;

    // An export folder in a bucket the template does not let the function write: S3 refuses
    // (AccessDenied, from the template's IAM), and the report is still made and returned.
    let mut elsewhere = payload;
    elsewhere["run"]["expect"] =
        json!({"export_prefix": format!("s3://ephemera-elsewhere/runs/{run}/")});
    let report: CostReport = serde_json::from_value(
        call_with(&c, Function::TerminateWithCostReport, elsewhere, settings())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(report.stored, None);
    let note = report
        .notes
        .iter()
        .find(|n| n.starts_with("the report could not be stored"))
        .unwrap_or_else(|| panic!("{:?}", report.notes));
    assert!(
        note.contains(&format!("s3://ephemera-elsewhere/runs/{run}/report.html"))
            && note.contains("AccessDenied"),
        "{note}"
    );
}

/// A long run's worker ended an hour before the report (reclaimed, or done while the others
/// worked): EC2 no longer describes its instance, as on AWS (the door lets terminated instances
/// vanish; `terminated_vanish_after`). The report still bills it, from the run document, to the
/// latest it can have ended, says so, and does not lose the instances EC2 still describes.
#[tokio::test]
async fn an_instance_ec2_no_longer_describes_is_still_billed() {
    let c = ctx().await;
    ephemera_tests::harness()
        .door
        .terminated_vanish_after(c.region, Duration::ZERO);
    let run = "vanished";
    let spec = fixtures::runspec(run, &c.net, None);
    let first = launch_with(&c, &spec, run, json!({}), settings())
        .await
        .unwrap();
    let gone = first.current().unwrap().instance_id.clone();
    // Spot takes it back (terminated), and the worker is relaunched.
    c.aws
        .ec2
        .terminate_instances()
        .instance_ids(&gone)
        .send()
        .await
        .unwrap();
    let second = launch_with(
        &c,
        &spec,
        run,
        json!({"worker": first, "relaunch": true}),
        settings(),
    )
    .await
    .unwrap();
    // As the run document has them an hour apart (the relaunch an hour into the run).
    let mut second = second;
    let t0 = chrono::Utc::now() - chrono::Duration::hours(2);
    second.attempts[0].launched_at = t0;
    second.attempts[1].launched_at = t0 + chrono::Duration::hours(1);
    let kept = second.current().unwrap().clone();
    // Gone from EC2 by id as by tag, as AWS answers an hour later.
    let asked = c
        .aws
        .ec2
        .describe_instances()
        .instance_ids(&gone)
        .instance_ids(&kept.instance_id)
        .send()
        .await;
    let refused = asked.unwrap_err();
    assert_eq!(
        aws_sdk_ec2::error::ProvideErrorMetadata::code(&refused),
        Some("InvalidInstanceID.NotFound"),
        "{refused:?}"
    );
    let result = json!({"run_id": run, "partitions_done": 2, "partitions_failed": 0});
    let report: CostReport = serde_json::from_value(
        call_with(
            &c,
            Function::TerminateWithCostReport,
            json!({"run": spec, "execution": execution(c.region, run),
                   "workers": [{"slot": 1, "worker": second, "result": result}]}),
            settings(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let line = |id: &str| {
        report
            .attempts
            .iter()
            .find(|a| a.instance_id == id)
            .unwrap_or_else(|| panic!("{id} is not in the report: {:?}", report.attempts))
    };
    // Billed from its launch to its relaunch and the two minutes of Spot's notice at the latest.
    let reclaimed = line(&gone);
    let notice = ephemera_core::cost_report::SPOT_NOTICE_SECONDS;
    assert_eq!(
        (reclaimed.launched_at, reclaimed.ended_at),
        (t0, kept.launched_at + chrono::Duration::seconds(notice))
    );
    assert_eq!(reclaimed.billed_seconds, 3600 + notice, "{reclaimed:?}");
    assert!(reclaimed.compute_usd > 0.0, "{reclaimed:?}");
    assert!(
        report.notes.iter().any(
            |n| n.starts_with(&format!("{gone}: no longer described by EC2"))
                && n.contains("relaunch at")
        ),
        "{:?}",
        report.notes
    );
    // The attempt EC2 still describes is priced as ever, and the total holds both.
    let running = line(&kept.instance_id);
    assert!(running.compute_usd > 0.0, "{running:?}");
    let sum = reclaimed.compute_usd + reclaimed.ebs_usd + running.compute_usd + running.ebs_usd;
    // Each figure is rounded to the micro-dollar (`cost::usd`): four of them.
    assert!(
        report.actual_usd >= sum - 4e-6,
        "{} < {sum}",
        report.actual_usd
    );
}

// ---------------------------------------------------------------- the page in a browser

/// Debian's `chromium`. Absent, the test is skipped on a workstation; under CI it fails, so
/// the check cannot quietly disappear (`make setup` installs it).
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    });
    if found.is_none() && std::env::var_os("CI").is_some() {
        panic!("chromium is not installed and CI is set: `make setup` installs it (apt-get install chromium)");
    }
    found
}

async fn run_chromium(chromium: &Path, args: &[String]) -> std::process::Output {
    let profile = tmp_dir("profile");
    let mut cmd = tokio::process::Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium started");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tmp_dir(what: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "report-{what}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two attempts: Spot reclaimed after 25 min, then On-Demand to the end; 100 min in all.
fn two_attempts() -> CostReport {
    serde_json::from_value(json!({
        "run_id": "fx-features-2023-04",
        "execution": "arn:aws:states:us-east-1:123456789012:execution:ephemera-worker:fx-features-2023-04-1",
        "outcome": "SUCCEEDED", "error": null, "failure": null,
        "estimate_usd": 2.3331, "budget_usd": 5.0, "actual_usd": 0.7142,
        "compute_usd": 0.7031, "ebs_usd": 0.0090, "on_demand_equivalent_usd": 0.8993,
        "savings_usd": 0.1851,
        "orchestration": {"state_transitions": 41, "lambda_invocations": 14,
                          "lambda_gb_seconds": 2.1, "usd": 0.0021},
        "attempts": [
            {"attempt": 1, "instance_id": "i-0123456789abcdef0", "instance_type": "c7g.4xlarge",
             "market": "spot", "availability_zone": "us-east-1a",
             "launched_at": "2026-11-22T10:00:40Z", "ended_at": "2026-11-22T10:25:40Z",
             "billed_seconds": 1500, "compute_usd": 0.0412, "ebs_usd": 0.0023,
             "on_demand_equivalent_usd": 0.2286, "average_usd_per_hour": 0.0989,
             "price_source": "spot-price-history", "state_before": "terminated"},
            {"attempt": 2, "instance_id": "i-0fedcba9876543210", "instance_type": "c6g.4xlarge",
             "market": "on-demand", "availability_zone": "us-east-1b",
             "launched_at": "2026-11-22T10:27:00Z", "ended_at": "2026-11-22T11:40:00Z",
             "billed_seconds": 4380, "compute_usd": 0.6619, "ebs_usd": 0.0067,
             "on_demand_equivalent_usd": 0.6686, "average_usd_per_hour": 0.544,
             "price_source": "price-list-api", "state_before": "running"}
        ],
        "phases": {"quota_wait_seconds": 40, "boot_seconds": 95, "work_seconds": 4285,
                   "teardown_seconds": 2, "total_seconds": 6000},
        "terminated": ["i-0fedcba9876543210"],
        "generated_at": "2026-11-22T11:40:00Z",
        "notes": ["EBS gp3 at $0.08/GiB-month; fallback prices as of 2026-11-01"],
        "verification": {"ok": true, "verified_at": "2026-11-22T11:39:58Z", "checks": [
            {"name": "no_failed_partitions", "ok": true, "detail": "0 partitions failed"},
            {"name": "min_rows", "ok": true, "detail": "612000 rows written, at least 600000 expected"}]}
    }))
    .unwrap()
}

/// Appended to a copy of the page: what Chromium laid out, written into the DOM it dumps.
const MEASURE: &str = r#"<script>
const box = e => { const b = e.getBoundingClientRect(); return {x: b.x, width: b.width, height: b.height}; };
const bars = [...document.querySelectorAll('svg#timeline rect.bar')].map(r => Object.assign(box(r),
  {phase: r.dataset.phase, attempt: r.dataset.attempt || null, reclaimed: r.dataset.reclaimed === 'true',
   fill: getComputedStyle(r).fill}));
const out = document.createElement('pre');
out.id = 'measured';
out.textContent = JSON.stringify({bars, svg: box(document.getElementById('timeline')),
  total: document.getElementById('cost-total').innerText,
  billed: [...document.querySelectorAll('#attempts td.billed')].map(td => td.innerText),
  text: document.body.innerText});
document.body.appendChild(out);
</script>"#;

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// What `script` measured in `html` as headless Chromium laid it out in a window of `size`
/// (`W,H`): the page is written with the script before `</body>`, and the JSON the script
/// puts in `<pre id="measured">` is read back from the DOM Chromium dumps.
async fn measured(chromium: &Path, dir: &Path, html: &str, script: &str, size: &str) -> Value {
    let page = dir.join("measured.html");
    std::fs::write(&page, html.replace("</body>", &format!("{script}</body>"))).unwrap();
    let out = run_chromium(
        chromium,
        &[
            format!("--window-size={size}"),
            "--dump-dom".into(),
            format!("file://{}", page.display()),
        ],
    )
    .await;
    let dom = String::from_utf8(out.stdout).unwrap();
    let json = dom
        .split_once(r#"<pre id="measured">"#)
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(m, _)| unescape(m))
        .unwrap_or_else(|| panic!("no measurements in the DOM:\n{dom}"));
    serde_json::from_str(&json).unwrap()
}

#[tokio::test]
async fn chromium_draws_the_timeline_and_shows_the_figures() {
    let Some(chromium) = chromium() else {
        eprintln!("SKIPPED chromium_draws_the_timeline_and_shows_the_figures: no `chromium` on PATH (apt-get install chromium; with CI set this test fails instead)");
        return;
    };
    let report = two_attempts();
    let html = report_html::render(&report);
    let dir = tmp_dir("page");
    let page = dir.join("report.html");
    std::fs::write(&page, &html).unwrap();
    let m = measured(&chromium, &dir, &html, MEASURE, "1200,1600").await;

    let bars = m["bars"].as_array().unwrap();
    let kinds: Vec<(String, Option<String>, bool)> = bars
        .iter()
        .map(|b| {
            (
                b["phase"].as_str().unwrap().to_string(),
                b["attempt"].as_str().map(String::from),
                b["reclaimed"].as_bool().unwrap(),
            )
        })
        .collect();
    let lane = |p: &str, a: Option<&str>, r: bool| (p.to_string(), a.map(String::from), r);
    assert_eq!(
        kinds,
        vec![
            lane("quota-wait", None, false),
            lane("boot", None, false),
            lane("work", Some("1"), true),
            lane("work", Some("2"), false),
            lane("teardown", None, false),
        ]
    );
    let svg = &m["svg"];
    let (left, right) = (
        svg["x"].as_f64().unwrap(),
        svg["x"].as_f64().unwrap() + svg["width"].as_f64().unwrap(),
    );
    assert!(svg["width"].as_f64().unwrap() > 600.0, "{svg}");
    for b in bars {
        let (x, w, h) = (
            b["x"].as_f64().unwrap(),
            b["width"].as_f64().unwrap(),
            b["height"].as_f64().unwrap(),
        );
        assert!(w > 0.0 && h > 0.0, "a bar with no area: {b}");
        assert!(
            x >= left && x + w <= right + 0.5,
            "a bar outside the chart: {b}"
        );
        assert_ne!(
            b["fill"], "rgb(0, 0, 0)",
            "the stylesheet colours each bar: {b}"
        );
    }
    // Drawn to scale: 1500 s against 4380 s of instance time.
    let width = |i: usize| bars[i]["width"].as_f64().unwrap();
    let ratio = width(2) / width(3);
    assert!((ratio - 1500.0 / 4380.0).abs() < 0.01, "{ratio}");
    // In time order: the relaunched attempt starts after the reclaimed one ended.
    assert!(bars[3]["x"].as_f64().unwrap() > bars[2]["x"].as_f64().unwrap() + width(2));

    assert_eq!(m["total"], "$0.7142");
    assert_eq!(m["billed"], json!(["1500", "4380"]));
    let text = m["text"].as_str().unwrap();
    for figure in [
        "$0.7031",
        "$0.0090",
        "$0.0021",
        "$2.3331",
        "$5.00",
        "$0.8993",
        "$0.1851",
        "i-0123456789abcdef0",
        "reclaimed by Spot",
        "min_rows",
        "612000 rows written",
    ] {
        assert!(
            text.contains(figure),
            "{figure} is not on the page:\n{text}"
        );
    }

    // A picture for people: the page itself, unmeasured.
    let png = dir.join("report.png");
    run_chromium(
        &chromium,
        &[
            "--window-size=1200,1700".into(),
            format!("--screenshot={}", png.display()),
            format!("file://{}", page.display()),
        ],
    )
    .await;
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let png_width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    assert_eq!(png_width, 1200);
    eprintln!("screenshot: {}", png.display());
}

/// Appended to a copy of the month's page: what Chromium laid out.
const MEASURE_MONTH: &str = r#"<script>
const box = e => { const b = e.getBoundingClientRect(); return {x: b.x, y: b.y, width: b.width, height: b.height}; };
const out = document.createElement('pre');
out.id = 'measured';
out.textContent = JSON.stringify({
  svg: box(document.getElementById('spend')),
  dots: [...document.querySelectorAll('svg#spend circle.run-dot')].map(c => Object.assign(box(c), {fill: getComputedStyle(c).fill})),
  line: Object.assign(box(document.getElementById('spend-line')), {stroke: getComputedStyle(document.getElementById('spend-line')).stroke}),
  budget: box(document.getElementById('budget-line')),
  statuses: [...document.querySelectorAll('svg#outcome-bar rect.status')].map(r => Object.assign(box(r), {status: r.dataset.status, fill: getComputedStyle(r).fill})),
  text: document.body.innerText});
document.body.appendChild(out);
</script>"#;

/// The month's page (`ephemera runs --html`) in a browser: a dot per run climbing in the order
/// the runs started, all under the budget line, the outcome bar split by count, the figures.
#[tokio::test]
async fn chromium_draws_the_month() {
    use ephemera_core::month_html::{render, Month, MonthRun};
    let Some(chromium) = chromium() else {
        eprintln!("SKIPPED chromium_draws_the_month: no `chromium` on PATH (apt-get install chromium; with CI set this test fails instead)");
        return;
    };
    let at = |day: u32| {
        chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 11, day, 9, 0, 0).unwrap()
    };
    let run = |id: &str, day: u32, status: &str, cost: f64, od: f64| MonthRun {
        run_id: id.into(),
        execution: format!("{id}-20261101"),
        started: at(day),
        status: status.into(),
        cost_usd: cost,
        on_demand_usd: Some(od),
        measured: true,
    };
    let month = Month {
        month: "2026-11".into(),
        budget_usd: Some(833.0),
        runs: vec![
            run("fx-a", 3, "SUCCEEDED", 120.0, 400.0),
            run("fx-b", 9, "FAILED", 30.0, 90.0),
            run("fx-c", 16, "SUCCEEDED", 210.0, 700.0),
            run("fx-d", 24, "SUCCEEDED", 150.0, 480.0),
        ],
        generated_at: at(28),
    };
    let html = render(&month);
    let dir = tmp_dir("month");
    let m = measured(&chromium, &dir, &html, MEASURE_MONTH, "1200,1400").await;
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap();

    let svg = &m["svg"];
    assert!(f(svg, "width") > 600.0, "{svg}");
    let dots = m["dots"].as_array().unwrap();
    assert_eq!(dots.len(), 4);
    for w in dots.windows(2) {
        // Later to the right, and higher (the spend only grows).
        assert!(f(&w[1], "x") > f(&w[0], "x"), "{w:?}");
        assert!(f(&w[1], "y") < f(&w[0], "y"), "{w:?}");
    }
    // 510 of 833 spent: every dot below the budget line, the last at 510/833 of its height.
    let budget_y = f(&m["budget"], "y");
    let base = f(svg, "y") + f(svg, "height");
    for d in dots {
        assert!(
            f(d, "y") > budget_y,
            "{d} above the budget line at {budget_y}"
        );
        assert_ne!(d["fill"], "rgb(0, 0, 0)", "the stylesheet colours the dots");
    }
    let last = dots.last().unwrap();
    let last_centre = f(last, "y") + f(last, "height") / 2.0;
    let axis = f(&m["line"], "y") + f(&m["line"], "height");
    let ratio = (axis - last_centre) / (axis - (budget_y + f(&m["budget"], "height") / 2.0));
    assert!((ratio - 510.0 / 833.0).abs() < 0.02, "{ratio}");
    assert!(axis <= base, "the line stays in the chart");
    assert_ne!(m["line"]["stroke"], "none");
    // The outcome bar: three SUCCEEDED to one FAILED, by width.
    let statuses = m["statuses"].as_array().unwrap();
    let width_of = |s: &str| {
        statuses
            .iter()
            .find(|r| r["status"] == s)
            .map(|r| f(r, "width"))
            .unwrap()
    };
    assert!((width_of("SUCCEEDED") / width_of("FAILED") - 3.0).abs() < 0.05);
    let text = m["text"].as_str().unwrap();
    for figure in [
        "$510.0000",
        "$833.0000",
        "61 %",
        "$1160.0000",
        "fx-c",
        "FAILED",
        "Runs by outcome",
    ] {
        assert!(
            text.contains(figure),
            "{figure} is not on the page:\n{text}"
        );
    }
}

/// `worker.image: "auto"`: the run boots the ECS-optimized Amazon Linux 2023 AMI of its
/// candidates' architecture (Graviton here), which launch-worker names by its public parameter
/// and EC2 resolves to the AMI id the instance shows (played by the front door).
#[tokio::test]
async fn auto_boots_the_ecs_ami_of_the_candidates_architecture() {
    // (Here rather than in state_machine.rs, whose tests use every region the harness has.)
    let region = ephemera_tests::fresh_region();
    let report = ephemera_tests::e2e::report_for("e2e-auto-ami", 2);
    let r = ephemera_tests::e2e::scenario(
        region,
        "e2e-auto-ami",
        ephemera_tests::worker_standin::Behaviour::Succeed(report),
        |spec| spec["worker"]["image"] = json!("auto"),
    )
    .await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    let aws = ephemera_tests::clients(r.region);
    let arm64 = aws_sdk_ssm::Client::new(&ephemera_tests::sdk_config(r.region))
        .get_parameter()
        .name("/aws/service/ecs/optimized-ami/amazon-linux-2023/arm64/recommended/image_id")
        .send()
        .await
        .unwrap()
        .parameter
        .and_then(|p| p.value)
        .unwrap();
    let booted = aws
        .ec2
        .describe_instances()
        .instance_ids(&r.instances[0].0)
        .send()
        .await
        .unwrap()
        .reservations()[0]
        .instances()[0]
        .image_id()
        .unwrap()
        .to_string();
    assert_eq!(booted, arm64);
}

//! Verification: the worker's completion report and its exported objects against what the run
//! expected. Every check is listed, passed or not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::contract::{Manifest, Summary};
use crate::rundoc::{failure_for, CaughtError, WorkerEnd};
use crate::runspec::{parse_s3_url, RunSpec};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &str, ok: bool, detail: String) -> Check {
    Check {
        name: name.to_string(),
        ok,
        // The workers check names every lost worker: cut to what the run document plans for.
        detail: crate::payload::cap(&detail, crate::payload::CHECK_DETAIL_KEPT),
    }
}

/// Checks that need only the report.
pub fn check_report(spec: &RunSpec, r: &Summary) -> Vec<Check> {
    let mut out = vec![
        check(
            "run_id",
            r.run_id == spec.run_id,
            format!("report for '{}', run is '{}'", r.run_id, spec.run_id),
        ),
        check(
            "no_failed_partitions",
            r.partitions_failed == 0,
            format!("{} partitions failed", r.partitions_failed),
        ),
    ];
    if let Some(p) = spec.expect.partitions {
        out.push(check(
            "partitions_done",
            r.partitions_done >= p,
            format!("{} done, {} expected", r.partitions_done, p),
        ));
    }
    if let Some(m) = spec.expect.min_rows {
        out.push(check(
            "min_rows",
            r.rows_out >= m,
            format!("{} rows written, at least {} expected", r.rows_out, m),
        ));
    }
    if let Some(prefix) = &spec.expect.export_prefix {
        let under = r
            .manifest
            .as_deref()
            .is_some_and(|m| m.starts_with(prefix.as_str()));
        out.push(check(
            "manifest_location",
            under,
            match &r.manifest {
                Some(m) => format!("manifest {m}, expected under {prefix}"),
                None => format!("no manifest, expected one under {prefix}"),
            },
        ));
    }
    out
}

/// Checks of the manifest against the objects found (key → size, None when absent).
pub fn check_manifest(
    spec: &RunSpec,
    report: &Summary,
    manifest: &Manifest,
    found: &BTreeMap<String, Option<u64>>,
) -> Vec<Check> {
    let mut out = listing_checks(spec, report, manifest);
    out.extend(object_checks(spec, manifest, found));
    out
}

/// The manifest itself: its run, not empty, its rows as reported, and as much as expected.
fn listing_checks(spec: &RunSpec, report: &Summary, manifest: &Manifest) -> Vec<Check> {
    let listed = manifest.objects.len();
    let rows: u64 = manifest.objects.iter().map(|o| o.rows).sum();
    let bytes: u64 = manifest.objects.iter().map(|o| o.bytes).sum();
    let mut out = vec![
        check(
            "manifest_run_id",
            manifest.run_id == spec.run_id,
            format!("manifest for '{}'", manifest.run_id),
        ),
        check(
            "manifest_not_empty",
            listed > 0,
            format!("{listed} objects listed"),
        ),
        check(
            "manifest_rows_match_report",
            rows == report.rows_out,
            format!(
                "manifest lists {rows} rows, report says {}",
                report.rows_out
            ),
        ),
    ];
    if let Some(n) = spec.expect.min_objects {
        out.push(check(
            "min_objects",
            listed as u64 >= n,
            format!("{listed} objects listed, at least {n} expected"),
        ));
    }
    if let Some(n) = spec.expect.min_bytes {
        out.push(check(
            "min_bytes",
            bytes >= n,
            format!("{bytes} bytes listed, at least {n} expected"),
        ));
    }
    out
}

/// The objects the manifest lists, against what was found: present, their sizes, and under
/// the expected prefix.
fn object_checks(
    spec: &RunSpec,
    manifest: &Manifest,
    found: &BTreeMap<String, Option<u64>>,
) -> Vec<Check> {
    let prefix_key = spec
        .expect
        .export_prefix
        .as_deref()
        .and_then(parse_s3_url)
        .map(|(_, k)| k.to_string());
    let mut missing = vec![];
    let mut wrong_size = vec![];
    let mut outside = vec![];
    for o in &manifest.objects {
        match found.get(&o.key).copied().flatten() {
            None => missing.push(o.key.clone()),
            Some(size) if size != o.bytes => wrong_size.push(format!(
                "{} is {size} bytes, manifest says {}",
                o.key, o.bytes
            )),
            Some(_) => {}
        }
        if prefix_key
            .as_ref()
            .is_some_and(|p| !o.key.starts_with(p.as_str()))
        {
            outside.push(o.key.clone());
        }
    }
    let listed = |bad: &[String], sep: &str, fine: String, what: &str| match bad.is_empty() {
        true => fine,
        false => format!("{what}{}", bad.join(sep)),
    };
    let mut out = vec![
        check(
            "objects_present",
            missing.is_empty(),
            listed(
                &missing,
                ", ",
                format!("{} objects found", manifest.objects.len()),
                "missing: ",
            ),
        ),
        check(
            "object_sizes",
            wrong_size.is_empty(),
            listed(&wrong_size, "; ", "every size matches".into(), ""),
        ),
    ];
    if prefix_key.is_some() {
        out.push(check(
            "objects_under_prefix",
            outside.is_empty(),
            listed(
                &outside,
                ", ",
                "every object is under expect.export_prefix".into(),
                "outside the prefix: ",
            ),
        ));
    }
    out
}

/// What the run's workers left for verification.
#[derive(Debug, Clone, PartialEq)]
pub enum Gathered {
    /// At least one worker reported. Each report is the run's queue as that worker left it
    /// (a worker ends only when nothing is left to claim), so the fullest one is the run's.
    Reported {
        result: serde_json::Value,
        /// "workers" check: who reported and who was lost.
        check: Check,
    },
    /// No worker reported: the run fails with the first lost worker's error.
    Lost(CaughtError),
}

/// The report to verify, from the workers' ends (`$.workers`).
pub fn gather(workers: &[WorkerEnd]) -> Gathered {
    let mut ordered: Vec<&WorkerEnd> = workers.iter().collect();
    ordered.sort_by_key(|w| w.slot);
    let lost = lost_lines(&ordered);
    match fullest(&ordered) {
        Some(result) => Gathered::Reported {
            result: result.clone(),
            check: check("workers", true, reported_detail(&ordered, &lost)),
        },
        None => Gathered::Lost(none_reported(&ordered, &lost)),
    }
}

/// The first of the fullest reports, read through the contract's summary: an unreadable one (no
/// count) is verified, and fails, only when no readable one exists.
fn fullest<'a>(ordered: &[&'a WorkerEnd]) -> Option<&'a serde_json::Value> {
    let done = |v: &serde_json::Value| {
        serde_json::from_value::<Summary>(v.clone())
            .ok()
            .map(|s| s.partitions_done)
    };
    ordered
        .iter()
        .filter_map(|w| w.result.as_ref())
        .fold(None, |best, r| match best {
            Some(b) if done(b) >= done(r) => Some(b),
            _ => Some(r),
        })
}

/// "worker 2 lost (Worker.Failed: …)" for each worker that did not report.
fn lost_lines(ordered: &[&WorkerEnd]) -> Vec<String> {
    ordered
        .iter()
        .filter(|w| w.result.is_none())
        .map(|w| {
            let e = w.error.as_ref().map(failure_for);
            format!(
                "worker {} lost ({})",
                w.slot,
                e.map_or("no error recorded".into(), |e| format!(
                    "{}: {}",
                    e.error,
                    e.cause.unwrap_or_default()
                ))
            )
        })
        .collect()
}

/// Who reported, and who was lost while the others took over.
fn reported_detail(ordered: &[&WorkerEnd], lost: &[String]) -> String {
    let reported: Vec<String> = ordered
        .iter()
        .filter(|w| w.result.is_some())
        .map(|w| w.slot.to_string())
        .collect();
    let mut detail = format!(
        "{} of {} worker(s) reported ({})",
        reported.len(),
        ordered.len(),
        reported.join(", ")
    );
    if !lost.is_empty() {
        detail.push_str(&format!(
            "; {}: the others took over their partitions",
            lost.join("; ")
        ));
    }
    detail
}

/// No worker reported: the first lost worker's error, which names the others when there were
/// several.
fn none_reported(ordered: &[&WorkerEnd], lost: &[String]) -> CaughtError {
    let first = ordered
        .iter()
        .find_map(|w| w.error.as_ref())
        .map(failure_for);
    match first {
        Some(e) if ordered.len() <= 1 => e,
        Some(e) => CaughtError {
            error: e.error,
            cause: Some(crate::payload::cap(
                &format!("no worker reported: {}", lost.join("; ")),
                crate::payload::MESSAGE_KEPT,
            )),
        },
        None => CaughtError {
            error: crate::names::WORKER_FAILED.into(),
            cause: Some(format!(
                "no worker reported and none recorded an error ({} worker(s))",
                ordered.len()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::ManifestObject;
    use serde_json::json;

    fn spec() -> RunSpec {
        RunSpec::parse(&json!({
            "run_id": "r1",
            "worker": {"instance_types": ["c7g.large"], "subnets": ["subnet-0a1b2c3d"],
                       "image": "ami-0a1b2c3d", "artifact": "s3://bkt/w"},
            "limits": {"max_runtime_seconds": 3600, "budget_usd": 1},
            "expect": {"partitions": 2, "min_rows": 10, "export_prefix": "s3://out/runs/r1/"}
        }))
        .unwrap()
    }

    fn report() -> Summary {
        serde_json::from_value(json!({
            "run_id": "r1", "partitions_done": 2, "partitions_failed": 0,
            "rows_in": 20, "rows_out": 20, "manifest": "s3://out/runs/r1/manifest.json",
            "durations": {"total_s": 3.5}
        }))
        .unwrap()
    }

    #[test]
    fn report_checks() {
        let s = spec();
        assert!(check_report(&s, &report()).iter().all(|c| c.ok));
        let mut r = report();
        r.partitions_failed = 1;
        r.partitions_done = 1;
        r.rows_out = 3;
        let failed: Vec<String> = check_report(&s, &r)
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            failed,
            vec!["no_failed_partitions", "partitions_done", "min_rows"]
        );
    }

    #[test]
    fn manifest_checks() {
        let s = spec();
        let m = Manifest {
            run_id: "r1".into(),
            objects: vec![
                ManifestObject {
                    key: "runs/r1/a.parquet".into(),
                    rows: 12,
                    bytes: 100,
                    sha256: None,
                },
                ManifestObject {
                    key: "runs/r1/b.parquet".into(),
                    rows: 8,
                    bytes: 50,
                    sha256: None,
                },
            ],
        };
        let mut found = BTreeMap::new();
        found.insert("runs/r1/a.parquet".to_string(), Some(100));
        found.insert("runs/r1/b.parquet".to_string(), Some(50));
        assert!(check_manifest(&s, &report(), &m, &found)
            .iter()
            .all(|c| c.ok));
        found.insert("runs/r1/b.parquet".to_string(), None);
        found.insert("runs/r1/a.parquet".to_string(), Some(99));
        let bad: Vec<Check> = check_manifest(&s, &report(), &m, &found)
            .into_iter()
            .filter(|c| !c.ok)
            .collect();
        assert_eq!(bad.len(), 2);
        assert!(bad[0].detail.contains("missing: runs/r1/b.parquet"));
        assert!(bad[1].detail.contains("99 bytes"));
    }

    #[test]
    fn a_jobs_outputs_are_held_to_their_expected_count_and_size() {
        let mut s = spec();
        s.expect.min_objects = Some(2);
        s.expect.min_bytes = Some(151);
        let m = Manifest {
            run_id: "r1".into(),
            objects: vec![ManifestObject {
                key: "runs/r1/model.bin".into(),
                rows: 0,
                bytes: 150,
                sha256: None,
            }],
        };
        let found = BTreeMap::from([("runs/r1/model.bin".to_string(), Some(150))]);
        let mut r = report();
        r.rows_out = 0;
        let bad: Vec<(String, String)> = check_manifest(&s, &r, &m, &found)
            .into_iter()
            .filter(|c| !c.ok)
            .map(|c| (c.name, c.detail))
            .collect();
        assert_eq!(
            bad,
            [
                (
                    "min_objects".to_string(),
                    "1 objects listed, at least 2 expected".to_string()
                ),
                (
                    "min_bytes".to_string(),
                    "150 bytes listed, at least 151 expected".to_string()
                )
            ]
        );
    }

    #[test]
    fn a_report_without_a_manifest_says_so_in_words() {
        let mut r = report();
        r.manifest = None;
        let c = check_report(&spec(), &r)
            .into_iter()
            .find(|c| c.name == "manifest_location")
            .unwrap();
        assert!(!c.ok);
        assert_eq!(
            c.detail,
            "no manifest, expected one under s3://out/runs/r1/"
        );
    }

    fn end(slot: u32, result: Option<serde_json::Value>, error: Option<(&str, &str)>) -> WorkerEnd {
        WorkerEnd {
            slot,
            worker: None,
            health: None,
            result,
            error: error.map(|(e, c)| CaughtError {
                error: e.into(),
                cause: Some(c.into()),
            }),
            released: None,
        }
    }

    #[test]
    fn the_fullest_report_is_the_runs_and_lost_workers_are_said() {
        let r = |done: u64| serde_json::json!({"run_id": "r", "partitions_done": done});
        let workers = [
            end(3, Some(r(10)), None),
            end(1, None, Some(("States.HeartbeatTimeout", ""))),
            end(2, Some(r(12)), None),
        ];
        let Gathered::Reported { result, check } = gather(&workers) else {
            panic!("reported")
        };
        assert_eq!(result, r(12));
        assert!(check.ok);
        assert!(
            check.detail.starts_with("2 of 3 worker(s) reported (2, 3)"),
            "{}",
            check.detail
        );
        assert!(
            check.detail.contains("worker 1 lost (Worker.TimedOut"),
            "{}",
            check.detail
        );
        // Equal reports: the first worker's.
        let tie = [
            end(2, Some(r(5)), None),
            end(1, Some(r(5)), Some(("x", "y"))),
        ];
        assert!(matches!(gather(&tie), Gathered::Reported { .. }));
    }

    #[test]
    fn with_no_report_the_run_fails_with_the_first_lost_workers_error() {
        // One worker: its error as it was (made raisable), as before there were several.
        let one = [end(1, None, Some(("Ephemera.BootFailed", "i-1: impaired")))];
        assert_eq!(
            gather(&one),
            Gathered::Lost(CaughtError {
                error: "Ephemera.BootFailed".into(),
                cause: Some("i-1: impaired".into())
            })
        );
        let two = [
            end(2, None, Some(("Ephemera.OverBudget", "too dear"))),
            end(
                1,
                None,
                Some(("Worker.SpotInterrupted", "no relaunch left")),
            ),
        ];
        let Gathered::Lost(e) = gather(&two) else {
            panic!("lost")
        };
        assert_eq!(e.error, "Worker.SpotInterrupted");
        let cause = e.cause.unwrap();
        assert!(
            cause.contains("worker 1 lost (Worker.SpotInterrupted: no relaunch left)"),
            "{cause}"
        );
        assert!(
            cause.contains("worker 2 lost (Ephemera.OverBudget: too dear)"),
            "{cause}"
        );
        assert!(
            matches!(gather(&[end(1, None, None)]), Gathered::Lost(e) if e.error == "Worker.Failed")
        );
    }
}

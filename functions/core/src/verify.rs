//! Verification: the worker's completion report and its exported objects against what the run
//! expected. Every check is listed, passed or not.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use serde::{Deserialize, Serialize};

use crate::contract::manifest::{worker_folder, MANIFEST_FILE};
use crate::contract::{Manifest, ManifestObject, Summary};
use crate::rundoc::{failure_for, CaughtError, WorkerEnd};
use crate::runspec::{Counts, RunSpec};

/// `$.verification`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// Every check passed (a failed check fails the run instead, with the failed checks).
    pub ok: bool,
    /// Every check made, in order: the workers, the reports, the manifests, the checksums.
    pub checks: Vec<Check>,
    /// When verify-completion checked.
    pub verified_at: DateTime<Utc>,
    /// What the manifest lists, when the worker reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Outputs>,
}

/// A run's outputs as its manifests list them: the feature worker's one export, or every
/// worker's share of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    /// The manifest; the first worker's when there are several (each worker's report names its
    /// own, `$.workers[i].result.manifest`: listing them here again would cost 40 URLs of up to
    /// a kilobyte each of the state payload).
    pub manifest: String,
    /// Objects and bytes of every manifest together.
    pub objects: u64,
    /// Bytes of every manifest's objects together.
    pub bytes: u64,
    /// How many manifests: one per worker for a job.
    #[serde(default = "one_manifest", skip_serializing_if = "is_one")]
    pub manifests: u32,
}

fn one_manifest() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl Outputs {
    /// Where the outputs are listed, as the report says it: the manifest, or how many there are
    /// and the first.
    pub fn listed_in(&self) -> String {
        match self.manifests {
            0 | 1 => self.manifest.clone(),
            n => format!("{n} manifests, one per worker ({} …)", self.manifest),
        }
    }
}

/// One check: what it is, whether it passed, and what was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// The check's name (`workers`, `min_rows`, `report_format`, …).
    pub name: String,
    /// It passed.
    pub ok: bool,
    /// What was found against what was expected, in words.
    pub detail: String,
}

fn check(name: &str, ok: bool, detail: String) -> Check {
    Check {
        name: name.to_string(),
        ok,
        // The workers check names every lost worker: cut to what the run document plans for.
        detail: crate::caps::cap(&detail, crate::caps::CHECK_DETAIL_KEPT),
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
        .as_ref()
        .map(|u| u.key().to_string());
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

/// Every listed object's SHA-256 against what S3 keeps for it now (`kept`: key →
/// `ChecksumSHA256`, None when S3 keeps none): the worker sends each object with its digest and
/// S3 refuses bytes that do not match it, so an object that differs was replaced after it was
/// sent, and fails naming it. An object the listing never found is `objects_present`'s to say;
/// one it found (`found`) that S3 no longer has when its SHA-256 is read was deleted since, and
/// fails here (`objects_present` saw it).
pub fn checksum_check<'a>(
    objects: impl IntoIterator<Item = &'a ManifestObject>,
    kept: &BTreeMap<String, Option<String>>,
    found: &std::collections::BTreeSet<String>,
) -> Check {
    let (mut n, mut bad) = (0, vec![]);
    for o in objects {
        n += 1;
        let Some(now) = kept.get(&o.key) else {
            if found.contains(&o.key) {
                bad.push(format!(
                    "{}: deleted since it was listed (S3 no longer has it)",
                    o.key
                ));
            }
            continue;
        };
        match (o.checksum_sha256.as_deref(), now.as_deref()) {
            (None, _) => bad.push(format!("{}: its manifest records no SHA-256", o.key)),
            (Some(_), None) => bad.push(format!(
                "{}: S3 keeps no SHA-256 for it (written since the worker sent it)",
                o.key
            )),
            (Some(want), Some(got)) if !same_checksum(want, got) => bad.push(format!(
                "{}: S3 keeps SHA-256 {got}, its manifest recorded {want} (written since the worker sent it)",
                o.key
            )),
            _ => {}
        }
    }
    check(
        "object_checksums",
        bad.is_empty(),
        match bad.is_empty() {
            true => format!("{n} objects match the SHA-256 S3 keeps"),
            false => bad.join("; "),
        },
    )
}

/// One SHA-256 in S3's form against another: the same digest, and the same number of parts
/// where both say (`…-N`; a composite read without its count is still the parts' digest).
fn same_checksum(want: &str, got: &str) -> bool {
    // Base64 has no '-': the last one, before digits only, is the part count's.
    let split = |c: &str| match c.rsplit_once('-') {
        Some((d, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (d.to_string(), Some(n.to_string()))
        }
        _ => (c.to_string(), None),
    };
    let ((wd, wn), (gd, gn)) = (split(want), split(got));
    wd == gd && (gn.is_none() || wn.is_none() || wn == gn)
}

/// How a run's workers divide its work, which decides when the run is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// The feature worker (`run`): every worker claims from the run's one queue and ends only
    /// when nothing is left to claim, so one report covers the whole run, and a worker lost
    /// while others reported is fine: its leases expired and they took its partitions over.
    Queue,
    /// A job (`exec`): each worker is given its share (`EPHEMERA_WORKER`) and nobody redoes
    /// another's, so the run is done only when every worker reported success, and each
    /// worker's outputs (its manifest in `<to>/worker-<n>/`) are verified.
    Shares,
}

impl Sharing {
    /// How `spec`'s workers share: a job (`exec`) by [`Sharing::Shares`], the feature worker by
    /// its [`Sharing::Queue`].
    pub fn of(spec: &RunSpec) -> Sharing {
        match spec.worker.is_job() {
            true => Sharing::Shares,
            false => Sharing::Queue,
        }
    }
}

/// Checks of the reports to verify ([`Gathered::Reported`], read as summaries, by slot): the
/// feature worker's one report ([`check_report`]), or every worker's of a job.
pub fn check_reports(spec: &RunSpec, sharing: Sharing, reports: &[(u32, Summary)]) -> Vec<Check> {
    match sharing {
        Sharing::Queue => reports
            .iter()
            .flat_map(|(_, r)| check_report(spec, r))
            .collect(),
        Sharing::Shares => job_report_checks(spec, reports),
    }
}

/// A job's reports: each for this run, each manifest in its own worker's folder (and under
/// `expect.export_prefix`), and the feature counts only when the RunSpec asks for them
/// (`partitions_failed` and `rows_out` mean nothing for a command).
fn job_report_checks(spec: &RunSpec, reports: &[(u32, Summary)]) -> Vec<Check> {
    let n = reports.len();
    let other_run: Vec<String> = reports
        .iter()
        .filter(|(_, r)| r.run_id != spec.run_id)
        .map(|(slot, r)| format!("worker {slot}'s report is for '{}'", r.run_id))
        .collect();
    let mut out = vec![check(
        "run_id",
        other_run.is_empty(),
        match other_run.is_empty() {
            true => format!("{n} report(s) for '{}'", spec.run_id),
            false => format!("{}; the run is '{}'", other_run.join("; "), spec.run_id),
        },
    )];
    if let Some(p) = spec.expect.partitions {
        let done: u64 = reports.iter().map(|(_, r)| r.partitions_done).sum();
        out.push(check(
            "partitions_done",
            done >= p,
            format!("{done} done, {p} expected"),
        ));
    }
    if let Some(m) = spec.expect.min_rows {
        let rows: u64 = reports.iter().map(|(_, r)| r.rows_out).sum();
        out.push(check(
            "min_rows",
            rows >= m,
            format!("{rows} rows written, at least {m} expected"),
        ));
    }
    let prefix = spec.expect.export_prefix.as_ref().map(|u| u.as_str());
    if prefix.is_none() && reports.iter().all(|(_, r)| r.manifest.is_none()) {
        // No outputs asked for (`exec` without `--outputs`): nothing to locate.
        return out;
    }
    let mut bad = vec![];
    for (slot, r) in reports {
        let own = format!("{}/{MANIFEST_FILE}", worker_folder(*slot));
        match &r.manifest {
            None => bad.push(format!("worker {slot}'s report names no manifest")),
            Some(m) => {
                // Two workers writing one manifest would keep only the last one's files.
                if !(m == &own || m.ends_with(&format!("/{own}"))) {
                    bad.push(format!(
                        "worker {slot}'s manifest {m} is not its own ({own})"
                    ));
                }
                if let Some(p) = prefix.filter(|p| !m.starts_with(p)) {
                    bad.push(format!("worker {slot}'s manifest {m} is not under {p}"));
                }
            }
        }
    }
    out.push(check(
        "manifest_location",
        bad.is_empty(),
        match (bad.is_empty(), prefix) {
            (false, _) => bad.join("; "),
            (true, Some(p)) => format!("{n} manifest(s), each in its worker's folder under {p}"),
            (true, None) => format!("{n} manifest(s), each in its worker's folder"),
        },
    ));
    out
}

/// What a count of `expect` measures in one manifest (its objects, its bytes).
type Measure = fn(&Listed) -> u64;

/// One manifest as verify-completion read it: whose, where, what it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Which of the run's workers wrote it (`1..=worker.count`).
    pub slot: u32,
    /// The manifest's `s3://` URL.
    pub url: String,
    /// The manifest as read: what it lists.
    pub manifest: Manifest,
}

/// A job's manifests, one per worker that reported one, against the objects found (key →
/// size, None when absent; the workers' keys are apart, each under its own folder): each for
/// this run and not empty, `expect.min_objects`/`min_bytes` in total or per worker
/// (`expect.counts`), and every object of every manifest present, of its size, under the
/// prefix.
pub fn check_job_manifests(
    spec: &RunSpec,
    listed: &[Listed],
    found: &BTreeMap<String, Option<u64>>,
) -> Vec<Check> {
    let mut out = manifest_content_checks(spec, listed);
    let counted: [(&str, &str, Option<u64>, Measure); 2] = [
        (
            "min_objects",
            "objects",
            spec.expect.min_objects,
            |l: &Listed| l.manifest.objects.len() as u64,
        ),
        ("min_bytes", "bytes", spec.expect.min_bytes, |l: &Listed| {
            l.manifest.objects.iter().map(|o| o.bytes).sum()
        }),
    ];
    for (name, unit, at_least, of) in counted {
        let Some(least) = at_least else { continue };
        out.push(count_check(
            spec.expect.counts,
            listed,
            name,
            unit,
            least,
            of,
        ));
    }
    // Every object of every manifest, as one listing: the keys are apart by worker.
    let all = Manifest {
        run_id: spec.run_id.clone(),
        objects: listed
            .iter()
            .flat_map(|l| l.manifest.objects.iter().cloned())
            .collect(),
    };
    out.extend(object_checks(spec, &all, found));
    out
}

/// Each manifest is for this run and lists something.
fn manifest_content_checks(spec: &RunSpec, listed: &[Listed]) -> Vec<Check> {
    let n = listed.len();
    let total_objects: u64 = listed.iter().map(|l| l.manifest.objects.len() as u64).sum();
    let other_run: Vec<String> = listed
        .iter()
        .filter(|l| l.manifest.run_id != spec.run_id)
        .map(|l| {
            format!(
                "worker {}'s manifest is for '{}'",
                l.slot, l.manifest.run_id
            )
        })
        .collect();
    let empty: Vec<String> = listed
        .iter()
        .filter(|l| l.manifest.objects.is_empty())
        .map(|l| format!("worker {}'s manifest lists no objects", l.slot))
        .collect();
    vec![
        check(
            "manifest_run_id",
            other_run.is_empty(),
            match other_run.is_empty() {
                true => format!("{n} manifest(s) for '{}'", spec.run_id),
                false => other_run.join("; "),
            },
        ),
        check(
            "manifest_not_empty",
            empty.is_empty(),
            match (empty.is_empty(), n) {
                (false, _) => empty.join("; "),
                (true, 1) => format!("{total_objects} objects listed"),
                (true, _) => format!(
                    "{total_objects} objects listed in {n} manifests ({} by worker)",
                    by_worker(listed, |l| l.manifest.objects.len() as u64)
                ),
            },
        ),
    ]
}

/// `expect.min_objects` or `min_bytes` (`name`, counted in `unit` by `of`): at least `least`
/// in total or of each worker, as `expect.counts` says.
fn count_check(
    counts: Counts,
    listed: &[Listed],
    name: &str,
    unit: &str,
    least: u64,
    of: Measure,
) -> Check {
    let n = listed.len();
    match counts {
        Counts::Total => {
            let sum: u64 = listed.iter().map(of).sum();
            let whose = match n {
                1 => String::new(),
                _ => format!(" in {n} manifests"),
            };
            check(
                name,
                sum >= least,
                format!("{sum} {unit} listed{whose}, at least {least} expected in total"),
            )
        }
        Counts::PerWorker => {
            let short: Vec<String> = listed
                .iter()
                .filter(|l| of(l) < least)
                .map(|l| format!("worker {} lists {} {unit}", l.slot, of(l)))
                .collect();
            check(
                name,
                short.is_empty(),
                match short.is_empty() {
                    true => format!(
                        "each of {n} manifest(s) lists at least {least} {unit} ({} by worker)",
                        by_worker(listed, of)
                    ),
                    false => format!(
                        "{}, at least {least} expected of each worker (expect.counts per_worker)",
                        short.join("; ")
                    ),
                },
            )
        }
    }
}

/// `what` of each manifest in turn, for a detail: "3, 4, 2".
fn by_worker(listed: &[Listed], what: Measure) -> String {
    listed
        .iter()
        .map(|l| format!("{}", what(l)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the manifests list, for the run document and the report: the first one's URL, the
/// objects and bytes of all of them, how many there are.
pub fn outputs_of(listed: &[Listed]) -> Option<Outputs> {
    let first = listed.iter().min_by_key(|l| l.slot)?;
    let objects = listed.iter().flat_map(|l| l.manifest.objects.iter());
    Some(Outputs {
        manifest: first.url.clone(),
        objects: objects.clone().count() as u64,
        bytes: objects.map(|o| o.bytes).sum(),
        manifests: u32::try_from(listed.len()).unwrap_or(u32::MAX),
    })
}

/// One worker's report to verify: its slot and its SendTaskSuccess output.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Which of the run's workers it is (`1..=worker.count`).
    pub slot: u32,
    /// Its SendTaskSuccess output: the worker's summary, as JSON.
    pub result: serde_json::Value,
}

/// What the run's workers left for verification.
#[derive(Debug, Clone, PartialEq)]
pub enum Gathered {
    /// The reports to verify: for the feature worker's queue, the fullest one (each report is
    /// the run's queue as that worker left it, a worker ending only when nothing is left to
    /// claim); for a job, every worker's, by slot (each did its own share).
    Reported {
        /// The reports, by slot.
        reports: Vec<Report>,
        /// "workers" check: who reported and who was lost.
        check: Check,
    },
    /// The run cannot pass: no worker reported (the first lost worker's error), or a job's
    /// worker did not (its error, naming the worker).
    Lost(CaughtError),
}

/// The reports to verify, from the workers' ends (`$.workers`), as `sharing` says the run is
/// done.
pub fn gather(sharing: Sharing, workers: &[WorkerEnd]) -> Gathered {
    let mut ordered: Vec<&WorkerEnd> = workers.iter().collect();
    ordered.sort_by_key(|w| w.slot);
    let lost = lost_lines(&ordered);
    match sharing {
        Sharing::Queue => match fullest(&ordered) {
            Some(w) => Gathered::Reported {
                reports: vec![Report {
                    slot: w.slot,
                    result: w.result.clone().unwrap_or_default(),
                }],
                check: check("workers", true, reported_detail(&ordered, &lost)),
            },
            None => Gathered::Lost(none_reported(&ordered, &lost)),
        },
        Sharing::Shares if lost.is_empty() && !ordered.is_empty() => every_share_reported(&ordered),
        // One worker's job fails with its error as it always did.
        Sharing::Shares if ordered.len() <= 1 => Gathered::Lost(none_reported(&ordered, &lost)),
        Sharing::Shares => Gathered::Lost(shares_failed(&ordered)),
    }
}

/// Every worker of a job reported: each report is verified.
fn every_share_reported(ordered: &[&WorkerEnd]) -> Gathered {
    let slots: Vec<String> = ordered.iter().map(|w| w.slot.to_string()).collect();
    Gathered::Reported {
        reports: ordered
            .iter()
            .filter_map(|w| {
                w.result.clone().map(|result| Report {
                    slot: w.slot,
                    result,
                })
            })
            .collect(),
        check: check(
            "workers",
            true,
            format!(
                "{n} of {n} worker(s) reported ({}): every share of the job is done",
                slots.join(", "),
                n = ordered.len()
            ),
        ),
    }
}

/// Some of a job's workers did not report: their shares are not done and nobody else does
/// them, so the run fails with the first one's error, naming each ("worker 2 of 2 failed:
/// Worker.Failed: …").
fn shares_failed(ordered: &[&WorkerEnd]) -> CaughtError {
    let n = ordered.len();
    let failed: Vec<(u32, Option<CaughtError>)> = ordered
        .iter()
        .filter(|w| w.result.is_none())
        .map(|w| (w.slot, w.error.as_ref().map(failure_for)))
        .collect();
    let lines: Vec<String> = failed
        .iter()
        .map(|(slot, e)| match e {
            Some(e) => format!(
                "worker {slot} of {n} failed: {}: {}",
                e.error,
                e.cause.as_deref().unwrap_or_default()
            ),
            None => format!("worker {slot} of {n} ended without a report or an error"),
        })
        .collect();
    let mut cause = lines.join("; ");
    let reported = n - failed.len();
    if reported > 0 {
        cause.push_str(&format!(
            "; {reported} of {n} reported, but a job's workers each do their own share, which nobody else redoes"
        ));
    }
    CaughtError {
        error: failed
            .iter()
            .find_map(|(_, e)| e.as_ref().map(|e| e.error.clone()))
            .unwrap_or_else(|| crate::names::WORKER_FAILED.into()),
        cause: Some(crate::caps::cap(&cause, crate::caps::MESSAGE_KEPT)),
    }
}

/// The first of the fullest reports, read through the contract's summary: an unreadable one (no
/// count) is verified, and fails, only when no readable one exists.
fn fullest<'a>(ordered: &[&'a WorkerEnd]) -> Option<&'a WorkerEnd> {
    let done = |v: &serde_json::Value| {
        serde_json::from_value::<Summary>(v.clone())
            .ok()
            .map(|s| s.partitions_done)
    };
    ordered
        .iter()
        .copied()
        .filter_map(|w| w.result.as_ref().map(|r| (w, r)))
        .fold(None, |best, (w, r)| match best {
            Some((b, br)) if done(br) >= done(r) => Some((b, br)),
            _ => Some((w, r)),
        })
        .map(|(w, _)| w)
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
            cause: Some(crate::caps::cap(
                &format!("no worker reported: {}", lost.join("; ")),
                crate::caps::MESSAGE_KEPT,
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
    fn every_object_is_held_to_the_sha256_s3_keeps() {
        let o = |key: &str, sum: Option<&str>| ManifestObject {
            key: key.into(),
            rows: 0,
            bytes: 1,
            sha256: None,
            checksum_sha256: sum.map(String::from),
        };
        let listed = [
            o("w/a", Some("YWJj")),
            o("w/big", Some("ZGVm-2")),
            o("w/gone", Some("Z2hp")),
        ];
        let kept = |pairs: &[(&str, Option<&str>)]| -> BTreeMap<String, Option<String>> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(String::from)))
                .collect()
        };
        // As sent (a missing object is objects_present's to say); a composite read without its
        // part count is still the parts' digest.
        let found: std::collections::BTreeSet<String> =
            ["w/a", "w/big"].iter().map(|k| k.to_string()).collect();
        let fine = checksum_check(
            &listed,
            &kept(&[("w/a", Some("YWJj")), ("w/big", Some("ZGVm"))]),
            &found,
        );
        assert!(fine.ok, "{fine:?}");
        assert_eq!(fine.detail, "3 objects match the SHA-256 S3 keeps");
        // Listed, then deleted before its SHA-256 was read: the listing alone would pass it.
        let raced = checksum_check(&listed, &kept(&[("w/a", Some("YWJj"))]), &found);
        assert_eq!(
            (raced.ok, raced.detail.as_str()),
            (
                false,
                "w/big: deleted since it was listed (S3 no longer has it)"
            )
        );
        // Written since: another digest, none at all, another part count; a manifest without one.
        let bad = checksum_check(
            &[
                o("w/a", Some("YWJj")),
                o("w/big", Some("ZGVm-2")),
                o("w/c", Some("Yw==")),
                o("w/d", None),
            ],
            &kept(&[
                ("w/a", Some("eHl6")),
                ("w/big", Some("ZGVm-3")),
                ("w/c", None),
                ("w/d", Some("Yw==")),
            ]),
            &found,
        );
        assert!(!bad.ok);
        assert_eq!(
            bad.detail,
            "w/a: S3 keeps SHA-256 eHl6, its manifest recorded YWJj (written since the worker sent it); \
             w/big: S3 keeps SHA-256 ZGVm-3, its manifest recorded ZGVm-2 (written since the worker sent it); \
             w/c: S3 keeps no SHA-256 for it (written since the worker sent it); \
             w/d: its manifest records no SHA-256"
        );
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
                    checksum_sha256: None,
                },
                ManifestObject {
                    key: "runs/r1/b.parquet".into(),
                    rows: 8,
                    bytes: 50,
                    sha256: None,
                    checksum_sha256: None,
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
                checksum_sha256: None,
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
        let Gathered::Reported { reports, check } = gather(Sharing::Queue, &workers) else {
            panic!("reported")
        };
        assert_eq!(
            reports,
            [Report {
                slot: 2,
                result: r(12)
            }]
        );
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
        assert!(
            matches!(gather(Sharing::Queue, &tie), Gathered::Reported { reports, .. } if reports[0].slot == 1)
        );
    }

    #[test]
    fn with_no_report_the_run_fails_with_the_first_lost_workers_error() {
        // One worker: its error as it was (made raisable), as before there were several.
        let one = [end(1, None, Some(("Ephemera.BootFailed", "i-1: impaired")))];
        assert_eq!(
            gather(Sharing::Queue, &one),
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
        let Gathered::Lost(e) = gather(Sharing::Queue, &two) else {
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
            matches!(gather(Sharing::Queue, &[end(1, None, None)]), Gathered::Lost(e) if e.error == "Worker.Failed")
        );
    }

    /// A job of two workers, its outputs under s3://out/runs/j1/.
    fn job_spec(expect: serde_json::Value) -> RunSpec {
        RunSpec::parse(&json!({
            "run_id": "j1",
            "worker": {"instance_types": ["c7g.large"], "subnets": ["subnet-0a1b2c3d"],
                       "image": "ami-0a1b2c3d", "artifact": "s3://bkt/w", "count": 2,
                       "args": ["exec", "--outputs", "out", "--to", "s3://out/runs/j1/",
                                "--", "sh", "-c", "run"]},
            "limits": {"max_runtime_seconds": 3600, "budget_usd": 1},
            "expect": expect
        }))
        .unwrap()
    }

    fn job_summary(slot: u32) -> serde_json::Value {
        json!({
            "run_id": "j1", "partitions_done": 0, "partitions_failed": 0,
            "rows_in": 0, "rows_out": 0,
            "manifest": format!("s3://out/runs/j1/worker-{slot}/manifest.json"),
            "job": {"command": "sh -c run", "exit_code": 0, "seconds": 1.0}
        })
    }

    #[test]
    fn which_rule_a_run_is_done_by_follows_its_workload() {
        assert_eq!(Sharing::of(&spec()), Sharing::Queue);
        assert_eq!(Sharing::of(&job_spec(json!({}))), Sharing::Shares);
    }

    #[test]
    fn a_job_is_done_when_every_worker_reported_and_each_report_is_verified() {
        let ends = [
            end(2, Some(job_summary(2)), None),
            end(1, Some(job_summary(1)), None),
        ];
        let Gathered::Reported { reports, check } = gather(Sharing::Shares, &ends) else {
            panic!("reported")
        };
        assert_eq!(
            reports.iter().map(|r| r.slot).collect::<Vec<_>>(),
            [1, 2],
            "every worker's report, by slot"
        );
        assert_eq!(reports[1].result, job_summary(2));
        assert!(check.ok);
        assert_eq!(
            check.detail,
            "2 of 2 worker(s) reported (1, 2): every share of the job is done"
        );
    }

    #[test]
    fn a_job_with_a_failed_or_lost_worker_fails_naming_it_where_a_queue_would_pass() {
        let failed = [
            end(1, Some(job_summary(1)), None),
            end(
                2,
                None,
                Some(("Worker.Failed", "`sh -c exit 1` exited with status 1")),
            ),
        ];
        let Gathered::Lost(e) = gather(Sharing::Shares, &failed) else {
            panic!("a failed share fails the job")
        };
        assert_eq!(e.error, "Worker.Failed");
        assert_eq!(
            e.cause.as_deref(),
            Some("worker 2 of 2 failed: Worker.Failed: `sh -c exit 1` exited with status 1; 1 of 2 reported, but a job's workers each do their own share, which nobody else redoes")
        );
        // Lost to silence (no relaunch left): the same, with the timeout said as a worker's.
        let lost = [
            end(3, Some(job_summary(3)), None),
            end(1, None, Some(("States.HeartbeatTimeout", "silent"))),
            end(2, Some(job_summary(2)), None),
        ];
        let Gathered::Lost(e) = gather(Sharing::Shares, &lost) else {
            panic!("a lost share fails the job")
        };
        assert_eq!(e.error, "Worker.TimedOut");
        let cause = e.cause.unwrap();
        assert!(
            cause.starts_with("worker 1 of 3 failed: Worker.TimedOut: States.HeartbeatTimeout"),
            "{cause}"
        );
        assert!(cause.contains("2 of 3 reported"), "{cause}");
        // Every worker lost: each named, the first one's error.
        let none = [
            end(2, None, Some(("Worker.Failed", "exit 2"))),
            end(1, None, None),
        ];
        let Gathered::Lost(e) = gather(Sharing::Shares, &none) else {
            panic!("lost")
        };
        assert_eq!(
            (e.error.as_str(), e.cause.as_deref()),
            (
                "Worker.Failed",
                Some("worker 1 of 2 ended without a report or an error; worker 2 of 2 failed: Worker.Failed: exit 2")
            )
        );
        // One worker's job fails with its own error, as a one-worker run always did.
        let one = [end(1, None, Some(("Worker.Failed", "exit 3")))];
        assert_eq!(
            gather(Sharing::Shares, &one),
            Gathered::Lost(CaughtError {
                error: "Worker.Failed".into(),
                cause: Some("exit 3".into())
            })
        );
        // The feature worker's queue: the others took the lost one's partitions over.
        for ends in [&failed[..], &lost[..]] {
            let Gathered::Reported { check, .. } = gather(Sharing::Queue, ends) else {
                panic!("a queue passes with the others' report")
            };
            assert!(
                check.detail.contains("the others took over"),
                "{}",
                check.detail
            );
        }
    }

    fn listed(slot: u32, files: &[(&str, u64)]) -> Listed {
        Listed {
            slot,
            url: format!("s3://out/runs/j1/worker-{slot}/manifest.json"),
            manifest: Manifest {
                run_id: "j1".into(),
                objects: files
                    .iter()
                    .map(|(name, bytes)| ManifestObject {
                        key: format!("runs/j1/worker-{slot}/{name}"),
                        rows: 0,
                        bytes: *bytes,
                        sha256: None,
                        checksum_sha256: None,
                    })
                    .collect(),
            },
        }
    }

    fn found_for(listed: &[Listed]) -> BTreeMap<String, Option<u64>> {
        listed
            .iter()
            .flat_map(|l| l.manifest.objects.iter())
            .map(|o| (o.key.clone(), Some(o.bytes)))
            .collect()
    }

    fn failed_checks(checks: &[Check]) -> Vec<(String, String)> {
        checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| (c.name.clone(), c.detail.clone()))
            .collect()
    }

    #[test]
    fn every_manifest_of_a_job_is_checked_and_its_counts_are_in_total_or_per_worker() {
        let shares = [
            listed(1, &[("a.csv", 10), ("b.csv", 20)]),
            listed(2, &[("c.csv", 5)]),
        ];
        let found = found_for(&shares);
        // Three objects in all: at least three in total passes, two each does not.
        let total = job_spec(
            json!({"export_prefix": "s3://out/runs/j1/", "min_objects": 3, "min_bytes": 35}),
        );
        let checks = check_job_manifests(&total, &shares, &found);
        assert_eq!(failed_checks(&checks), []);
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "manifest_run_id",
                "manifest_not_empty",
                "min_objects",
                "min_bytes",
                "objects_present",
                "object_sizes",
                "objects_under_prefix"
            ],
            "a job's checks: no rows against a report"
        );
        assert_eq!(
            checks[2].detail,
            "3 objects listed in 2 manifests, at least 3 expected in total"
        );
        let per_worker =
            job_spec(json!({"min_objects": 2, "min_bytes": 5, "counts": "per_worker"}));
        assert_eq!(
            failed_checks(&check_job_manifests(&per_worker, &shares, &found)),
            [(
                "min_objects".to_string(),
                "worker 2 lists 1 objects, at least 2 expected of each worker (expect.counts per_worker)".to_string()
            )]
        );
        let per_worker = job_spec(json!({"min_objects": 1, "counts": "per_worker"}));
        let checks = check_job_manifests(&per_worker, &shares, &found);
        assert_eq!(failed_checks(&checks), []);
        assert_eq!(
            checks[2].detail,
            "each of 2 manifest(s) lists at least 1 objects (2, 1 by worker)"
        );
        let four = job_spec(json!({"min_objects": 4}));
        assert_eq!(
            failed_checks(&check_job_manifests(&four, &shares, &found))[0].0,
            "min_objects"
        );

        // Worker 2's file missing, worker 1's of another size: both named.
        let mut found = found;
        found.insert("runs/j1/worker-2/c.csv".into(), None);
        found.insert("runs/j1/worker-1/a.csv".into(), Some(11));
        let bad = failed_checks(&check_job_manifests(&total, &shares, &found));
        assert_eq!(
            bad,
            [
                (
                    "objects_present".to_string(),
                    "missing: runs/j1/worker-2/c.csv".to_string()
                ),
                (
                    "object_sizes".to_string(),
                    "runs/j1/worker-1/a.csv is 11 bytes, manifest says 10".to_string()
                )
            ]
        );

        // A manifest of another run, an empty one.
        let mut odd = shares.clone();
        odd[0].manifest.run_id = "other".into();
        odd[1].manifest.objects.clear();
        let bad = failed_checks(&check_job_manifests(
            &job_spec(json!({})),
            &odd,
            &found_for(&odd),
        ));
        assert_eq!(
            bad,
            [
                (
                    "manifest_run_id".to_string(),
                    "worker 1's manifest is for 'other'".to_string()
                ),
                (
                    "manifest_not_empty".to_string(),
                    "worker 2's manifest lists no objects".to_string()
                )
            ]
        );

        assert_eq!(
            outputs_of(&shares),
            Some(Outputs {
                manifest: "s3://out/runs/j1/worker-1/manifest.json".into(),
                objects: 3,
                bytes: 35,
                manifests: 2
            })
        );
        assert_eq!(outputs_of(&[]), None);
    }

    #[test]
    fn a_jobs_reports_each_name_a_manifest_of_their_own() {
        let spec = job_spec(json!({"export_prefix": "s3://out/runs/j1/"}));
        let read = |v: serde_json::Value| serde_json::from_value::<Summary>(v).unwrap();
        let reports = [(1, read(job_summary(1))), (2, read(job_summary(2)))];
        let checks = check_reports(&spec, Sharing::Shares, &reports);
        assert_eq!(failed_checks(&checks), []);
        assert_eq!(
            checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["run_id", "manifest_location"],
            "no partitions for a job"
        );
        // Both writing `<to>/manifest.json` (the last writer would win): refused.
        let mut same = reports.clone();
        for (_, r) in &mut same {
            r.manifest = Some("s3://out/runs/j1/manifest.json".into());
        }
        same[1].1.run_id = "other".into();
        let bad = failed_checks(&check_reports(&spec, Sharing::Shares, &same));
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert_eq!(
            bad[0].1,
            "worker 2's report is for 'other'; the run is 'j1'"
        );
        assert!(
            bad[1].1.starts_with("worker 1's manifest s3://out/runs/j1/manifest.json is not its own (worker-1/manifest.json)"),
            "{}",
            bad[1].1
        );
        // A job without outputs: nothing to locate.
        let mut bare = reports.clone();
        for (_, r) in &mut bare {
            r.manifest = None;
        }
        let checks = check_reports(&job_spec(json!({})), Sharing::Shares, &bare);
        assert_eq!(
            checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["run_id"]
        );
        // The feature worker's report keeps its own checks.
        let names: Vec<String> = check_reports(&self::spec(), Sharing::Queue, &[(1, report())])
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert!(
            names.contains(&"no_failed_partitions".to_string()),
            "{names:?}"
        );
    }
}

//! verify-completion: the workers' reports and their exported objects against what the run
//! expected: the feature worker's fullest report and its export, or every share of a job with
//! each worker's manifest.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ephemera_core::contract::{Manifest, Summary};
use ephemera_core::rundoc::WorkerEnd;
use ephemera_core::runspec::parse_s3_url;
use ephemera_core::verify::Verification;
use ephemera_core::verify::{self, Check, Gathered, Listed, Sharing};
use ephemera_core::RunSpec;
use serde::Deserialize;

use crate::aws::Objects;
use crate::error::Error;

#[derive(Debug, Deserialize)]
pub struct Input {
    pub run: RunSpec,
    /// How each worker ended (the Map state's output): their SendTaskSuccess outputs, or why
    /// they were lost.
    pub workers: Vec<WorkerEnd>,
}

fn failed(name: &str, detail: String) -> Check {
    Check {
        name: name.into(),
        ok: false,
        detail,
    }
}

pub async fn handle<O: Objects>(
    objects: &O,
    input: Input,
    now: DateTime<Utc>,
) -> Result<Verification, Error> {
    let spec = &input.run;
    // A job is done when every worker's share is; the feature worker's queue when any worker
    // reported (the others took over the lost ones' partitions).
    let sharing = Sharing::of(spec);
    let (results, workers) = match verify::gather(sharing, &input.workers) {
        Gathered::Reported { reports, check } => (reports, check),
        // Nobody is left to verify, or a job's share was never done: the run fails with what
        // lost its workers.
        Gathered::Lost(e) => return Err(Error::WorkersLost(e)),
    };
    let whose = |slot: u32| match sharing {
        Sharing::Shares => format!("worker {slot}: "),
        Sharing::Queue => String::new(),
    };
    let mut reports = Vec::with_capacity(results.len());
    for r in results {
        match serde_json::from_value::<Summary>(r.result) {
            Ok(s) => reports.push((r.slot, s)),
            Err(e) => {
                return Err(Error::VerificationFailed {
                    failed: vec![failed(
                        "report_format",
                        format!("{}the worker's report is not readable: {e}", whose(r.slot)),
                    )],
                })
            }
        }
    }
    let mut checks = vec![workers];
    checks.extend(verify::check_reports(spec, sharing, &reports));
    let (listed, unread) = read_manifests(objects, spec, sharing, &reports).await?;
    checks.extend(unread);
    checks.extend(manifest_checks(spec, sharing, &reports, &listed));
    if !listed.is_empty() {
        let kept = kept_checksums(objects, &listed).await?;
        let every = listed.iter().flat_map(|(l, _)| &l.manifest.objects);
        let found: std::collections::BTreeSet<String> = listed
            .iter()
            .flat_map(|(_, sizes)| sizes.iter())
            .filter(|(_, size)| size.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        checks.push(verify::checksum_check(every, &kept, &found));
    }
    let manifests: Vec<Listed> = listed.into_iter().map(|(l, _)| l).collect();
    let outputs = verify::outputs_of(&manifests);
    let bad: Vec<Check> = checks.iter().filter(|c| !c.ok).cloned().collect();
    tracing::info!(checks = checks.len(), failed = bad.len(), "verified");
    if !bad.is_empty() {
        return Err(Error::VerificationFailed { failed: bad });
    }
    Ok(Verification {
        ok: true,
        checks,
        verified_at: now,
        outputs,
    })
}

/// Every manifest the reports name, with the sizes of the objects it lists, and the failed
/// checks of those that could not be read, by check (one check however many workers, to keep
/// the document bounded).
async fn read_manifests<O: Objects>(
    objects: &O,
    spec: &RunSpec,
    sharing: Sharing,
    reports: &[(u32, Summary)],
) -> Result<(Vec<(Listed, BTreeMap<String, Option<u64>>)>, Vec<Check>), Error> {
    let whose = |slot: u32| match sharing {
        Sharing::Shares => format!("worker {slot}: "),
        Sharing::Queue => String::new(),
    };
    let mut listed: Vec<(Listed, BTreeMap<String, Option<u64>>)> = vec![];
    let mut unread: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (slot, report) in reports {
        // The manifest is read where the RunSpec puts it, never where a worker says: a report
        // naming another place fails (a job that could write elsewhere under the run's prefix
        // must not pick the manifest it is judged by).
        let placed = spec.worker.manifest_url(*slot);
        if let (Some(at), Some(said)) = (&placed, &report.manifest) {
            if at != said {
                unread.entry("manifest_location").or_default().push(format!(
                    "{}the report names {said}; the RunSpec places it at {at}",
                    whose(*slot)
                ));
            }
        }
        let url = report
            .manifest
            .as_ref()
            .and(placed.as_ref().or(report.manifest.as_ref()));
        match url.map(String::as_str) {
            Some(url) => match read_manifest(objects, url).await? {
                Ok((manifest, found)) => listed.push((
                    Listed {
                        slot: *slot,
                        url: url.to_string(),
                        manifest,
                    },
                    found,
                )),
                Err((name, detail)) => unread
                    .entry(name)
                    .or_default()
                    .push(format!("{}{detail}", whose(*slot))),
            },
            None if spec.expect.export_prefix.is_some() => unread
                .entry("manifest_present")
                .or_default()
                .push(format!("{}the report names no manifest", whose(*slot))),
            None => {}
        }
    }
    let failures = unread
        .into_iter()
        .map(|(name, details)| {
            failed(
                name,
                ephemera_core::caps::cap(
                    &details.join("; "),
                    ephemera_core::caps::CHECK_DETAIL_KEPT,
                ),
            )
        })
        .collect();
    Ok((listed, failures))
}

/// Each manifest against the objects found: the feature run's one by one against the fullest
/// report, a job's together (each worker's share in its own folder).
fn manifest_checks(
    spec: &RunSpec,
    sharing: Sharing,
    reports: &[(u32, Summary)],
    listed: &[(Listed, BTreeMap<String, Option<u64>>)],
) -> Vec<Check> {
    match sharing {
        Sharing::Queue => listed
            .iter()
            .flat_map(|(l, found)| verify::check_manifest(spec, &reports[0].1, &l.manifest, found))
            .collect(),
        Sharing::Shares if !listed.is_empty() => {
            // The workers' keys are apart (each under its own folder): one map holds them all.
            let found: BTreeMap<String, Option<u64>> =
                listed.iter().flat_map(|(_, f)| f.clone()).collect();
            let manifests: Vec<Listed> = listed.iter().map(|(l, _)| l.clone()).collect();
            verify::check_job_manifests(spec, &manifests, &found)
        }
        Sharing::Shares => vec![],
    }
}

/// The SHA-256 S3 keeps for every object the manifests list that was found, each in its
/// manifest's bucket.
async fn kept_checksums<O: Objects>(
    objects: &O,
    listed: &[(Listed, BTreeMap<String, Option<u64>>)],
) -> Result<BTreeMap<String, Option<String>>, Error> {
    let mut kept = BTreeMap::new();
    for (l, found) in listed {
        let Some((bucket, _)) = parse_s3_url(&l.url) else {
            continue;
        };
        let keys: Vec<String> = l
            .manifest
            .objects
            .iter()
            .filter(|o| found.get(&o.key).copied().flatten().is_some())
            .map(|o| o.key.clone())
            .collect();
        kept.extend(objects.checksums(bucket, &keys).await?);
    }
    Ok(kept)
}

/// A manifest read with the sizes of the objects it lists (None when absent); or the check it
/// fails (`manifest_present`, `manifest_format`) and why.
type Read = Result<(Manifest, BTreeMap<String, Option<u64>>), (&'static str, String)>;

/// The manifest at `url`, as [`Read`] says; Err only when S3 could not be asked.
async fn read_manifest<O: Objects>(objects: &O, url: &str) -> Result<Read, Error> {
    let Some((bucket, key)) = parse_s3_url(url) else {
        return Ok(Err((
            "manifest_present",
            format!("'{url}' is not an s3:// URL"),
        )));
    };
    let Some(bytes) = objects.get(bucket, key).await? else {
        return Ok(Err(("manifest_present", format!("{url} does not exist"))));
    };
    let m = match serde_json::from_slice::<Manifest>(&bytes) {
        Ok(m) => m,
        Err(e) => return Ok(Err(("manifest_format", format!("{url}: {e}")))),
    };
    // The objects sit beside the manifest: list them there in pages, and ask only for the odd
    // one elsewhere (large runs export thousands, which a call each would not read within the
    // timeout).
    let dir = key.rfind('/').map_or("", |i| &key[..=i]);
    let listed = objects.sizes_under(bucket, dir).await?;
    let mut found = BTreeMap::new();
    for o in &m.objects {
        let size = match listed.get(&o.key) {
            Some(s) => Some(*s),
            None if o.key.starts_with(dir) => None,
            None => objects.size(bucket, &o.key).await?,
        };
        found.insert(o.key.clone(), size);
    }
    Ok(Ok((m, found)))
}

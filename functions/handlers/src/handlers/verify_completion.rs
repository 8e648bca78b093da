//! verify-completion: the workers' report and its exported objects against what the run
//! expected.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ephemera_core::contract::{Manifest, Summary};
use ephemera_core::rundoc::{Outputs, Verification, WorkerEnd};
use ephemera_core::runspec::parse_s3_url;
use ephemera_core::verify::{self, Check, Gathered};
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
    let (result, workers) = match verify::gather(&input.workers) {
        Gathered::Reported { result, check } => (result, check),
        // Nobody is left to verify: the run fails with what lost its workers.
        Gathered::Lost(e) => return Err(Error::WorkersLost(e)),
    };
    let report: Summary = match serde_json::from_value(result) {
        Ok(r) => r,
        Err(e) => {
            return Err(Error::VerificationFailed {
                failed: vec![failed(
                    "report_format",
                    format!("the worker's report is not readable: {e}"),
                )],
            })
        }
    };
    let mut checks = vec![workers];
    checks.extend(verify::check_report(spec, &report));
    let mut outputs = None;
    match report.manifest.as_deref() {
        Some(url) => match parse_s3_url(url) {
            Some((bucket, key)) => match objects.get(bucket, key).await? {
                None => checks.push(failed("manifest_present", format!("{url} does not exist"))),
                Some(bytes) => match serde_json::from_slice::<Manifest>(&bytes) {
                    Err(e) => checks.push(failed("manifest_format", format!("{url}: {e}"))),
                    Ok(m) => {
                        // The objects sit beside the manifest: list them there in pages,
                        // and ask only for the odd one elsewhere (large runs export
                        // thousands, which a call each would not read within the timeout).
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
                        checks.extend(verify::check_manifest(spec, &report, &m, &found));
                        outputs = Some(Outputs {
                            manifest: url.to_string(),
                            objects: m.objects.len() as u64,
                            bytes: m.objects.iter().map(|o| o.bytes).sum(),
                        });
                    }
                },
            },
            None => checks.push(failed(
                "manifest_present",
                format!("'{url}' is not an s3:// URL"),
            )),
        },
        None if spec.expect.export_prefix.is_some() => checks.push(failed(
            "manifest_present",
            "the report names no manifest".into(),
        )),
        None => {}
    }
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

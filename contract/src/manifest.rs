//! The export manifest the worker writes beside its Parquet files (`<export target>/manifest.json`)
//! and verify-completion checks against the objects it finds.

use serde::{Deserialize, Serialize};

/// The manifest's name in the export target.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The folder under `exec --to` where a job's worker `n` (`--worker`, `EPHEMERA_WORKER`) puts
/// its outputs and their manifest: each worker does its own share, so each lists its own files
/// apart from the others' (one `manifest.json` for all would keep only the last writer's), and
/// verify-completion checks every worker's manifest in its own folder.
pub fn worker_folder(n: u32) -> String {
    format!("worker-{n}")
}

/// What a worker exported: its run and every object it stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The run that wrote it (verify-completion refuses another run's).
    pub run_id: String,
    /// Every object stored, in the order written.
    pub objects: Vec<ManifestObject>,
}

/// One exported file, as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestObject {
    /// S3 object key (in the target's bucket) or path relative to the target directory.
    pub key: String,
    /// Rows it holds (a Parquet file's; 0 for a job's file).
    pub rows: u64,
    /// Its size.
    pub bytes: u64,
    /// Hex SHA-256 of the object's bytes, as the worker read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The object's SHA-256 as S3 keeps and reports it (`ChecksumSHA256` of HeadObject with
    /// `ChecksumMode: ENABLED`): the base64 digest of the bytes for an object sent in one PUT;
    /// for one sent in N parts, the base64 digest of the parts' digests followed by `-N` (S3's
    /// composite checksum). S3 checks it on upload and keeps it with the object, so
    /// verify-completion compares it with what S3 reports now, without reading the object: an
    /// object replaced after the upload no longer matches. The worker always writes it;
    /// verify-completion fails an object listed without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_sha256: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_the_worker_writes_is_what_verify_completion_reads() {
        let m = Manifest {
            run_id: "r1".into(),
            objects: vec![
                ManifestObject {
                    key: "runs/r1/indicators/pair=EURUSD/month=2023-04/part.parquet".into(),
                    rows: 12,
                    bytes: 100,
                    sha256: Some("ab".repeat(32)),
                    checksum_sha256: Some("q83vEjRWeJA=-2".into()),
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
        let written = serde_json::to_vec_pretty(&m).unwrap();
        assert_eq!(serde_json::from_slice::<Manifest>(&written).unwrap(), m);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&written).unwrap()["objects"][0],
            json!({"key": "runs/r1/indicators/pair=EURUSD/month=2023-04/part.parquet",
                   "rows": 12, "bytes": 100, "sha256": "ab".repeat(32),
                   "checksum_sha256": "q83vEjRWeJA=-2"})
        );
    }
}

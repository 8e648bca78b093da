//! A job's outputs (`exec --outputs DIR --to TARGET`): every file under DIR stored under the
//! target with its size and SHA-256 (large files in parts; S3 keeps the SHA-256 it was sent),
//! then the manifest (`ephemera_contract::Manifest`, the one the feature export writes) that
//! verify-completion checks the objects against.

use std::path::Path;

use anyhow::Result;
use ephemera_contract::manifest::MANIFEST_FILE;
use ephemera_contract::{Manifest, ManifestObject};

use crate::store::{files, Store, Target};

/// Files stored at once: S3 takes parallel PUTs well (a large file's parts go a few at once too).
const AT_ONCE: usize = 4;

/// Stores the files under `dir` and their manifest in `target`; the manifest's URL.
pub async fn publish(dir: &Path, target: &Target, run_id: &str) -> Result<String> {
    publish_with(dir, &Store::new(target.clone()).await, run_id).await
}

/// [`publish`] through `store` (its target, its S3 client).
pub async fn publish_with(dir: &Path, store: &Store, run_id: &str) -> Result<String> {
    let target = &store.target;
    let found = files(dir)?;
    anyhow::ensure!(
        found.iter().all(|(rel, _)| rel != MANIFEST_FILE),
        "{} holds a {MANIFEST_FILE} of its own; the job's manifest would replace it",
        dir.display()
    );
    let mut objects = Vec::with_capacity(found.len());
    for chunk in found.chunks(AT_ONCE) {
        let stored = futures_util::future::try_join_all(chunk.iter().map(|(rel, path)| {
            let store = store.clone();
            let key = target.key(rel);
            async move {
                let stored = store.put_file(&key, path).await?;
                anyhow::Ok(ManifestObject {
                    key,
                    rows: 0,
                    bytes: stored.bytes,
                    sha256: Some(stored.sha256),
                    checksum_sha256: Some(stored.checksum_sha256),
                })
            }
        }))
        .await?;
        objects.extend(stored);
    }
    let manifest = Manifest {
        run_id: run_id.to_string(),
        objects,
    };
    let key = target.key(MANIFEST_FILE);
    store
        .put(
            &key,
            serde_json::to_vec_pretty(&manifest)?,
            "application/json",
        )
        .await?;
    tracing::info!(files = manifest.objects.len(), manifest = %target.url(&key), "outputs stored");
    Ok(target.url(&key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sha256_hex;

    #[tokio::test]
    async fn every_file_is_stored_with_its_size_and_digest_and_listed() {
        let base = std::env::temp_dir().join(format!("ephemera-publish-{}", std::process::id()));
        let (out, to) = (base.join("out"), base.join("to"));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(out.join("step=2")).unwrap();
        std::fs::write(out.join("a.parquet"), b"abc").unwrap();
        std::fs::write(out.join("step=2/b.csv"), b"x,y\n1,2\n").unwrap();
        let target = Target::Dir(to.clone());
        let url = publish(&out, &target, "r1").await.unwrap();
        assert_eq!(url, to.join(MANIFEST_FILE).display().to_string());
        let m: Manifest = serde_json::from_slice(&std::fs::read(&url).unwrap()).unwrap();
        let listed: Vec<(&str, u64)> = m
            .objects
            .iter()
            .map(|o| (o.key.as_str(), o.bytes))
            .collect();
        assert_eq!(listed, [("a.parquet", 3), ("step=2/b.csv", 8)]);
        assert_eq!(
            m.objects[0].sha256.as_deref(),
            Some(sha256_hex(b"abc").as_str())
        );
        assert_eq!(
            std::fs::read(to.join("step=2/b.csv")).unwrap(),
            b"x,y\n1,2\n"
        );
        // A directory with a manifest of its own is refused rather than overwritten.
        std::fs::write(out.join(MANIFEST_FILE), b"{}").unwrap();
        assert!(publish(&out, &target, "r1").await.is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// Outputs stored as the worker role (through the front door, held to the template's
    /// policy), one in a single PUT and one in parts: S3 keeps the SHA-256 each manifest entry
    /// records (for the parts, the composite S3 computes itself), verify-completion passes them,
    /// then fails each object written since the worker sent it, naming it.
    #[tokio::test]
    async fn verify_completion_holds_each_output_to_the_sha256_s3_kept() {
        use aws_sdk_s3::types::ChecksumMode;
        use ephemera_functions::{invoke, Function, Settings};
        use serde_json::json;

        let region = ephemera_tests::fresh_region();
        let admin = ephemera_tests::clients(region).s3;
        let bucket = ephemera_tests::iam::EXPORT_BUCKET;
        crate::store::test_bucket(&admin, region, bucket).await;
        let base = std::env::temp_dir().join(format!("ephemera-sums-{}", std::process::id()));
        let out = base.join("out");
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("small.csv"), b"x,y\n1,2\n").unwrap();
        let big: Vec<u8> = (0..crate::store::PART + (1 << 20))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(out.join("big.bin"), &big).unwrap();

        // As the agent stores them: with its run's session (the instance role stores nothing).
        let conf = ephemera_tests::sdk_config_as(
            region,
            &ephemera_tests::fixtures::run_session(region, "sums").await,
        );
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .force_path_style(true)
                .build(),
        );
        let share = Target::S3 {
            bucket: bucket.into(),
            prefix: "runs/sums/worker-1/".into(),
        };
        let url = publish_with(&out, &Store::with_s3(share, s3), "sums")
            .await
            .unwrap();
        let got = admin
            .get_object()
            .bucket(bucket)
            .key("runs/sums/worker-1/manifest.json")
            .send()
            .await
            .unwrap();
        let m: Manifest =
            serde_json::from_slice(&got.body.collect().await.unwrap().into_bytes()).unwrap();
        for o in &m.objects {
            let head = admin
                .head_object()
                .bucket(bucket)
                .key(&o.key)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await
                .unwrap();
            // The digest (S3 may report a composite with or without its `-N`).
            let digest = |c: Option<&str>| c.map(|c| c.split('-').next().unwrap().to_string());
            assert_eq!(
                digest(head.checksum_sha256()),
                digest(o.checksum_sha256.as_deref()),
                "{}",
                o.key
            );
        }
        let sum_of = |name: &str| {
            m.objects
                .iter()
                .find(|o| o.key.ends_with(name))
                .and_then(|o| o.checksum_sha256.clone())
                .unwrap()
        };
        assert!(sum_of("big.bin").ends_with("-2"), "{}", sum_of("big.bin"));

        let spec = json!({
            "run_id": "sums",
            "worker": {"instance_types": ["c7g.large"], "subnets": ["subnet-0a1b2c3d"],
                       "image": "ami-0a1b2c3d", "artifact": "s3://bkt/w",
                       "args": ["exec", "--outputs", "out", "--to", format!("s3://{bucket}/runs/sums/"),
                                "--", "sh", "-c", "run"]},
            "limits": {"max_runtime_seconds": 3600, "budget_usd": 1}
        });
        let summary = json!({
            "run_id": "sums", "partitions_done": 0, "partitions_failed": 0,
            "rows_in": 0, "rows_out": 0, "manifest": url,
            "job": {"command": "sh -c run", "exit_code": 0, "seconds": 1.0}
        });
        let verify = || async {
            invoke(
                &ephemera_tests::function_clients(region, Function::VerifyCompletion.name()),
                &Settings::default(),
                Function::VerifyCompletion,
                json!({"run": spec, "workers": [{"slot": 1, "result": summary}]}),
            )
            .await
        };
        let passed = verify().await.unwrap();
        let sums = passed["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "object_checksums")
            .cloned();
        assert_eq!(
            sums,
            Some(json!({"name": "object_checksums", "ok": true,
                        "detail": "2 objects match the SHA-256 S3 keeps"}))
        );

        // The same size, other bytes: once sent without a SHA-256, once with their own.
        let mut altered = big.clone();
        altered[5] ^= 1;
        admin
            .put_object()
            .bucket(bucket)
            .key("runs/sums/worker-1/big.bin")
            .body(altered.into())
            .send()
            .await
            .unwrap();
        let failed = verify().await.unwrap_err();
        assert_eq!(failed.error_type(), "Ephemera.VerificationFailed");
        let msg = failed.to_string();
        assert!(
            msg.contains("runs/sums/worker-1/big.bin: S3 keeps no SHA-256 for it"),
            "{msg}"
        );
        assert!(!msg.contains("object_sizes"), "{msg}");
        use base64::Engine as _;
        use sha2::Digest as _;
        let other = b"x,y\n1,3\n".to_vec();
        let own = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&other));
        admin
            .put_object()
            .bucket(bucket)
            .key("runs/sums/worker-1/small.csv")
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .checksum_sha256(&own)
            .body(other.into())
            .send()
            .await
            .unwrap();
        // Bytes that do not match the SHA-256 sent with them are refused, as S3 does.
        let refused = admin
            .put_object()
            .bucket(bucket)
            .key("runs/sums/worker-1/small.csv")
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .checksum_sha256(sum_of("small.csv"))
            .body(b"x,y\n9,9\n".to_vec().into())
            .send()
            .await
            .unwrap_err();
        assert_eq!(
            refused.as_service_error().and_then(|e| e.meta().code()),
            Some("BadDigest")
        );
        let msg = verify().await.unwrap_err().to_string();
        assert!(
            msg.contains(&format!(
                "runs/sums/worker-1/small.csv: S3 keeps SHA-256 {own}, its manifest recorded {}",
                sum_of("small.csv")
            )),
            "{msg}"
        );

        // A report that names a manifest of its choosing (planted by the job under the run's
        // prefix, listing only what it likes): the manifest the RunSpec places is read anyway,
        // and the report's place fails verification.
        admin
            .put_object()
            .bucket(bucket)
            .key("runs/sums/planted/manifest.json")
            .body(
                serde_json::to_vec(&Manifest {
                    objects: vec![],
                    ..m.clone()
                })
                .unwrap()
                .into(),
            )
            .send()
            .await
            .unwrap();
        let mut planted = summary.clone();
        planted["manifest"] = json!(format!("s3://{bucket}/runs/sums/planted/manifest.json"));
        let msg = invoke(
            &ephemera_tests::function_clients(region, Function::VerifyCompletion.name()),
            &Settings::default(),
            Function::VerifyCompletion,
            json!({"run": spec, "workers": [{"slot": 1, "result": planted}]}),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains(&format!(
                "the report names s3://{bucket}/runs/sums/planted/manifest.json; the RunSpec places it at s3://{bucket}/runs/sums/worker-1/manifest.json"
            )),
            "{msg}"
        );
        assert!(
            msg.contains("runs/sums/worker-1/small.csv: S3 keeps SHA-256"),
            "the RunSpec's manifest was read: {msg}"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}

//! A job's outputs (`exec --outputs DIR --to TARGET`): every file under DIR stored under the
//! target with its size and SHA-256 (large files in parts), then the manifest (`ephemera_contract::Manifest`, the one
//! the feature export writes) that verify-completion checks the objects against.

use std::path::Path;

use anyhow::Result;
use ephemera_contract::manifest::MANIFEST_FILE;
use ephemera_contract::{Manifest, ManifestObject};

use crate::store::{files, Store, Target};

/// Files stored at once: S3 takes parallel PUTs well (a large file's parts go a few at once too).
const AT_ONCE: usize = 4;

/// Stores the files under `dir` and their manifest in `target`; the manifest's URL.
pub async fn publish(dir: &Path, target: &Target, run_id: &str) -> Result<String> {
    let found = files(dir)?;
    anyhow::ensure!(
        found.iter().all(|(rel, _)| rel != MANIFEST_FILE),
        "{} holds a {MANIFEST_FILE} of its own; the job's manifest would replace it",
        dir.display()
    );
    let store = Store::new(target.clone()).await;
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
}

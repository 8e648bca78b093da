//! A job's outputs (`exec --outputs DIR --to TARGET`): every file under DIR stored under the
//! target with its size and SHA-256, then the manifest (`ephemera_contract::Manifest`, the one
//! the feature export writes) that verify-completion checks the objects against.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ephemera_contract::manifest::MANIFEST_FILE;
use ephemera_contract::{Manifest, ManifestObject};

use crate::export::{sha256_hex, Store, Target};

/// Files stored at once: S3 takes parallel PUTs well, and each file is held in memory whole.
const AT_ONCE: usize = 4;

/// Every regular file under `dir`, by its path relative to `dir` ('/'-separated), in order.
pub fn files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = vec![];
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

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
                let bytes = tokio::fs::read(path)
                    .await
                    .with_context(|| format!("reading {}", path.display()))?;
                let object = ManifestObject {
                    key: key.clone(),
                    rows: 0,
                    bytes: bytes.len() as u64,
                    sha256: Some(sha256_hex(&bytes)),
                };
                store.put(&key, bytes, "application/octet-stream").await?;
                anyhow::Ok(object)
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

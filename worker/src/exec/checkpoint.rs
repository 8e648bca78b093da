//! `exec --checkpoint DIR --checkpoint-to s3://…`: a job's checkpoint directory kept in S3 while
//! it runs (every few minutes and once more when the instance is going away) and put back
//! before the command starts on the next attempt, so a job that writes checkpoints resumes
//! after a Spot reclaim instead of starting over.
//!
//! Each save sends only the files that changed since the last one, under a key of their own
//! (`g<generation>/<path>`), then writes the list (`checkpoint.json`) last and removes what the
//! previous list named and this one does not. A save cut short (the instance gone mid-upload)
//! leaves the previous list and its files whole: a restore always sees one consistent save.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::store::{files, path_under, Store, Target};

/// The list of one save, written after its files.
pub const LIST: &str = "checkpoint.json";
/// Files sent at once in one save.
const AT_ONCE: usize = 4;

/// What one save holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub generation: u64,
    pub files: Vec<SavedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFile {
    /// Relative to the checkpoint directory, '/'-separated.
    pub path: String,
    /// Relative to the checkpoint's place in the store.
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
}

/// How one save went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    pub files: usize,
    pub sent: usize,
    pub bytes_sent: u64,
}

/// A checkpoint directory and its place in the store (one per run and worker).
pub struct Checkpoint {
    dir: PathBuf,
    store: Store,
    saved: Saved,
    /// Size and modification time of each file as last sent or restored: unchanged files are
    /// not sent again.
    seen: HashMap<String, (u64, SystemTime)>,
}

/// Where a worker's checkpoints go under `--checkpoint-to`: its run and its number, so that
/// workers do not overwrite each other and a new run does not resume an old one.
pub fn place(to: &Target, run_id: &str, worker: u32) -> Target {
    to.under(&format!("{run_id}/worker-{worker}"))
}

impl Checkpoint {
    pub async fn open(dir: &Path, place: Target) -> Result<Checkpoint> {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating the checkpoint directory {}", dir.display()))?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            store: Store::new(place).await,
            saved: Saved::default(),
            seen: HashMap::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Puts the last save back into the directory; how many files (0: nothing was saved).
    pub async fn restore(&mut self) -> Result<usize> {
        let list = self.dir.join(format!(".{LIST}.ephemera"));
        let Some(_) = self
            .store
            .get_file(&self.store.target.key(LIST), &list)
            .await?
        else {
            return Ok(0);
        };
        let saved: Saved = serde_json::from_slice(&tokio::fs::read(&list).await?)
            .with_context(|| format!("reading {}", self.store.target.url(LIST)))?;
        tokio::fs::remove_file(&list).await?;
        for f in &saved.files {
            let path = path_under(&self.dir, &f.path)?;
            let key = self.store.target.key(&f.key);
            let got = self.store.get_file(&key, &path).await?.with_context(|| {
                format!(
                    "the checkpoint lists {} but it is gone",
                    self.store.target.url(&key)
                )
            })?;
            anyhow::ensure!(
                got.sha256 == f.sha256,
                "{} does not match its checkpoint's digest",
                self.store.target.url(&key)
            );
            self.seen.insert(f.path.clone(), signature(&path)?);
        }
        tracing::info!(
            files = saved.files.len(),
            generation = saved.generation,
            "checkpoint restored"
        );
        let n = saved.files.len();
        self.saved = saved;
        Ok(n)
    }

    /// Sends what changed since the last save, then the list, then removes what is no longer
    /// listed.
    pub async fn save(&mut self) -> Result<Synced> {
        let generation = self.saved.generation + 1;
        let before: HashMap<String, SavedFile> = self
            .saved
            .files
            .iter()
            .map(|f| (f.path.clone(), f.clone()))
            .collect();
        let mut kept = vec![];
        let mut changed = vec![];
        for (rel, path) in files(&self.dir)? {
            let sig = signature(&path)?;
            match before.get(&rel) {
                Some(f) if self.seen.get(&rel) == Some(&sig) => kept.push(f.clone()),
                _ => changed.push((rel, path, sig)),
            }
        }
        let mut synced = Synced {
            files: kept.len() + changed.len(),
            sent: changed.len(),
            bytes_sent: 0,
        };
        let mut next = kept;
        for chunk in changed.chunks(AT_ONCE) {
            let sent = futures_util::future::try_join_all(chunk.iter().map(|(rel, path, _)| {
                let key = format!("g{generation}/{rel}");
                let store = &self.store;
                async move {
                    let s = store.put_file(&store.target.key(&key), path).await?;
                    anyhow::Ok(SavedFile {
                        path: rel.clone(),
                        key,
                        bytes: s.bytes,
                        sha256: s.sha256,
                    })
                }
            }))
            .await?;
            synced.bytes_sent += sent.iter().map(|f| f.bytes).sum::<u64>();
            next.extend(sent);
        }
        for (rel, _, sig) in changed {
            self.seen.insert(rel, sig);
        }
        next.sort_by(|a, b| a.path.cmp(&b.path));
        let saved = Saved {
            generation,
            files: next,
        };
        self.store
            .put(
                &self.store.target.key(LIST),
                serde_json::to_vec_pretty(&saved)?,
                "application/json",
            )
            .await?;
        let listed: std::collections::HashSet<&str> =
            saved.files.iter().map(|f| f.key.as_str()).collect();
        for old in self
            .saved
            .files
            .iter()
            .filter(|f| !listed.contains(f.key.as_str()))
        {
            if let Err(e) = self.store.delete(&self.store.target.key(&old.key)).await {
                tracing::warn!(error = %format!("{e:#}"), key = %old.key, "an old checkpoint file stays");
            }
        }
        self.seen
            .retain(|rel, _| saved.files.iter().any(|f| &f.path == rel));
        self.saved = saved;
        tracing::info!(
            generation,
            files = synced.files,
            sent = synced.sent,
            bytes_sent = synced.bytes_sent,
            "checkpoint saved"
        );
        Ok(synced)
    }
}

fn signature(path: &Path) -> Result<(u64, SystemTime)> {
    let m = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((m.len(), m.modified()?))
}

/// Saves every `every` until `done` is cancelled; a failed save is logged and tried again at
/// the next (the job goes on either way). A save under way when `done` comes is finished.
pub fn keep(
    checkpoint: Arc<Mutex<Checkpoint>>,
    every: Duration,
    done: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = checkpoint.lock().await.save().await {
                tracing::warn!(error = %format!("{e:#}"), "the checkpoint could not be saved; trying again at the next");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(name: &str) -> PathBuf {
        let b = std::env::temp_dir().join(format!("ephemera-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        b
    }

    #[tokio::test]
    async fn only_what_changed_is_sent_and_a_relaunch_gets_the_last_save_back() {
        let b = base("cycle");
        let to = place(&Target::Dir(b.join("store")), "r1", 2);
        let mut c = Checkpoint::open(&b.join("a"), to.clone()).await.unwrap();
        assert_eq!(c.restore().await.unwrap(), 0, "nothing saved yet");
        std::fs::write(b.join("a/model.bin"), b"weights-1").unwrap();
        std::fs::create_dir_all(b.join("a/state")).unwrap();
        std::fs::write(b.join("a/state/step"), b"100").unwrap();
        let s = c.save().await.unwrap();
        assert_eq!((s.files, s.sent, s.bytes_sent), (2, 2, 12));

        // Unchanged: nothing sent. One file changed, one removed: only that one sent, the
        // removed one's object deleted with the superseded one.
        assert_eq!(c.save().await.unwrap().sent, 0);
        std::fs::write(b.join("a/state/step"), b"2000").unwrap();
        std::fs::remove_file(b.join("a/model.bin")).unwrap();
        let s = c.save().await.unwrap();
        assert_eq!((s.files, s.sent, s.bytes_sent), (1, 1, 4));
        let store = Store::new(to.clone()).await;
        assert_eq!(
            store.list().await.unwrap(),
            ["checkpoint.json", "g3/state/step"]
        );

        // The next attempt, on another instance: an empty directory gets the last save.
        let mut again = Checkpoint::open(&b.join("b"), to.clone()).await.unwrap();
        assert_eq!(again.restore().await.unwrap(), 1);
        assert_eq!(std::fs::read(b.join("b/state/step")).unwrap(), b"2000");
        assert!(!b.join("b/model.bin").exists());
        // What it restored is not sent again; the generations go on.
        assert_eq!(again.save().await.unwrap().sent, 0);
        assert_eq!(again.saved.generation, 4);
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[tokio::test]
    async fn a_save_cut_short_leaves_the_previous_one_whole() {
        let b = base("torn");
        let to = place(&Target::Dir(b.join("store")), "r1", 1);
        let mut c = Checkpoint::open(&b.join("a"), to.clone()).await.unwrap();
        std::fs::write(b.join("a/x"), b"one").unwrap();
        c.save().await.unwrap();
        // A later save's file sent, the instance gone before its list: the list still names
        // the first generation's file, which is still there.
        std::fs::create_dir_all(b.join("store/r1/worker-1/g2")).unwrap();
        std::fs::write(b.join("store/r1/worker-1/g2/x"), b"two, half sent").unwrap();
        let mut again = Checkpoint::open(&b.join("b"), to).await.unwrap();
        assert_eq!(again.restore().await.unwrap(), 1);
        assert_eq!(std::fs::read(b.join("b/x")).unwrap(), b"one");
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[tokio::test]
    async fn a_file_that_does_not_match_its_digest_is_not_restored_silently() {
        let b = base("digest");
        let to = place(&Target::Dir(b.join("store")), "r1", 1);
        let mut c = Checkpoint::open(&b.join("a"), to.clone()).await.unwrap();
        std::fs::write(b.join("a/x"), b"one").unwrap();
        c.save().await.unwrap();
        std::fs::write(b.join("store/r1/worker-1/g1/x"), b"tampered").unwrap();
        let mut again = Checkpoint::open(&b.join("b"), to).await.unwrap();
        let e = again.restore().await.unwrap_err().to_string();
        assert!(e.contains("does not match its checkpoint's digest"), "{e}");
        std::fs::remove_dir_all(&b).unwrap();
    }
}

//! `exec --checkpoint DIR --checkpoint-to s3://…`: a job's checkpoint directory kept in S3 while
//! it runs (every few minutes and once more when the instance is going away) and put back
//! before the command starts on the next attempt, so a job that writes checkpoints resumes
//! after a Spot reclaim instead of starting over.
//!
//! Each save sends only the files that changed since the last one, under a key of their own
//! (`a<attempt>/g<generation>/<path>`), then writes the list (`checkpoint.json`) last and
//! removes what the previous list named and this one does not. A save cut short (the instance
//! gone mid-upload) leaves the previous list and its files whole: a restore always sees one
//! consistent save.
//!
//! # Two attempts at once
//!
//! A Spot warning fails the task at once, so the relaunch can start while the old instance
//! still has up to two minutes and makes its last save. Two writers of one place are fenced by
//! the attempt and by conditional writes of the list:
//!
//! - Every file's key names its attempt, so two attempts never write the same key.
//! - The list names the attempt that wrote it, and is only ever written under a condition:
//!   `If-Match` the ETag this writer last read or wrote, or `If-None-Match: *` when it saw
//!   none ([`Store::put_if`]). Each writer holds the list's ETag as its own.
//! - A restore takes ownership *before* it fetches a file: it reads the list (a whole object,
//!   never a partial one) and, unless a later attempt wrote it, writes the same files back under
//!   its own attempt with `If-Match` the ETag it read (`If-None-Match: *` when there is none,
//!   an empty list). From then on no earlier attempt's write of the list can succeed: their
//!   ETag is not the list's any more.
//! - A save writes its files, then the list under its condition. Only once the list is written
//!   does it remove files: those the list it replaced named (a list it wrote itself, or the one
//!   it took ownership of) and the new one does not. When the write is refused (412, or 409 for
//!   a concurrent one), a later attempt owns the place: the save removes only the files it just
//!   sent (their keys are its attempt's and this generation's, named by no other list), saves
//!   no more, and the files any other list names stay.
//! - A writer that reads a list of a later attempt than its own never writes.
//!
//! The interleavings, old attempt O (last save under way) and new attempt N (restoring):
//!
//! - O's list lands before N reads: N takes over O's last save and restores it.
//! - N reads O's list L1, O's list L2 lands, then N's takeover: N's `If-Match: L1` is refused;
//!   N reads again (L2) and takes it over. O may have removed L1's superseded files meanwhile,
//!   but N fetches only after its takeover, so only files of a list N owns.
//! - N takes over first, then O writes: O's `If-Match` is refused; O removes its new files only;
//!   N's list and files stay, and a third attempt restores N's save.
//! - O's removal of superseded files runs while N takes over: those files are named by O's
//!   previous list, which N's takeover cannot succeed on (O's later list replaced it).
//!
//! A restore that finds a listed file gone or changed reads the list again: if it moved on
//! (a later attempt took over), this attempt is fenced and stops; if not, the file really is
//! lost and the restore fails as before. The takeover is tried a few times ([`TAKEOVER_TRIES`])
//! when the list keeps moving.
//!
//! # The last save and the notice
//!
//! The last save starts after the job's grace and must end before the reclaim, two minutes
//! after the notice. Each save records its bytes and seconds in the list; the next attempt
//! reads them and, when the grace would leave too little of the notice for a save of the
//! largest size recorded at the rate measured, lowers the grace ([`last_save_room`]). A save
//! cut by the reclaim leaves an unfinished multipart upload: a restore aborts every one under
//! the place (and the bucket's `AbortIncompleteMultipartUpload` rule is the backstop).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::store::{files, path_under, Expect, Store, Swap, Target};

/// The list of one save, written after its files.
pub const LIST: &str = "checkpoint.json";
/// Files sent at once in one save.
const AT_ONCE: usize = 4;
/// Times a restore reads the list and tries to take it over when it keeps moving.
pub const TAKEOVER_TRIES: usize = 5;
/// Sends recorded in the list (the latest ones): the rate and size of a last save.
const SENDS_KEPT: usize = 8;

/// What one save holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The attempt that wrote this list: an earlier one never writes over it.
    #[serde(default)]
    pub attempt: u32,
    pub generation: u64,
    pub files: Vec<SavedFile>,
    /// The latest saves' sends, oldest first: what the grace is checked against.
    #[serde(default)]
    pub sends: Vec<Send>,
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

/// One save's files on the wire: how many bytes, in how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Send {
    pub bytes: u64,
    pub millis: u64,
}

/// How one save went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    pub files: usize,
    pub sent: usize,
    pub bytes_sent: u64,
}

/// A later attempt owns the checkpoint: this one must not write it any more.
#[derive(Debug, thiserror::Error)]
#[error("attempt {mine}'s checkpoint is fenced: a later attempt owns {place}")]
pub struct Fenced {
    pub mine: u32,
    pub place: String,
}

/// A checkpoint directory and its place in the store (one per run and worker).
pub struct Checkpoint {
    dir: PathBuf,
    store: Store,
    attempt: u32,
    saved: Saved,
    /// The ETag of the list as this attempt last read or wrote it: the condition of its next
    /// write. `None`: it saw no list.
    tag: Option<String>,
    /// Set once a write of the list was refused: a later attempt owns the place.
    fenced: bool,
    /// Size and modification time of each file as last sent or restored: unchanged files are
    /// not sent again.
    seen: HashMap<String, (u64, SystemTime)>,
    /// Tests: a save waits here after its files are sent, before its list is written.
    #[cfg(test)]
    hold: Option<Hold>,
    /// Tests: a restore waits here after it read the list, before it takes it over.
    #[cfg(test)]
    hold_takeover: Option<Hold>,
}

/// A save held between its files and its list: it says so on `reached`, then waits for `go`.
#[cfg(test)]
struct Hold {
    reached: tokio::sync::oneshot::Sender<()>,
    go: tokio::sync::oneshot::Receiver<()>,
}

/// Where a worker's checkpoints go under `--checkpoint-to`: its run and its number, so that
/// workers do not overwrite each other and a new run does not resume an old one.
pub fn place(to: &Target, run_id: &str, worker: u32) -> Target {
    to.under(&format!("{run_id}/worker-{worker}"))
}

/// What a restore found wrong with a listed file.
enum Missing {
    Gone(String),
    Changed(String),
}

impl Checkpoint {
    pub async fn open(dir: &Path, place: Target, attempt: u32) -> Result<Checkpoint> {
        Checkpoint::open_in(dir, Store::new(place).await, attempt).await
    }

    /// The same, with a store made by the caller (its client, its credentials).
    pub async fn open_in(dir: &Path, store: Store, attempt: u32) -> Result<Checkpoint> {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating the checkpoint directory {}", dir.display()))?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            store,
            attempt,
            saved: Saved::default(),
            tag: None,
            fenced: false,
            seen: HashMap::new(),
            #[cfg(test)]
            hold: None,
            #[cfg(test)]
            hold_takeover: None,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the list this attempt owns holds.
    pub fn saved(&self) -> &Saved {
        &self.saved
    }

    fn fenced_error(&self) -> anyhow::Error {
        Fenced {
            mine: self.attempt,
            place: self.store.target.url(&self.store.target.key("")),
        }
        .into()
    }

    /// The list as it is now, with its ETag.
    async fn read_list(&self) -> Result<Option<(Saved, String)>> {
        let key = self.store.target.key(LIST);
        let Some((bytes, tag)) = self.store.get_tagged(&key).await? else {
            return Ok(None);
        };
        let saved = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {}", self.store.target.url(&key)))?;
        Ok(Some((saved, tag)))
    }

    /// Puts the last save back into the directory, after taking the place over from any
    /// earlier attempt; how many files (0: nothing was saved).
    pub async fn restore(&mut self) -> Result<usize> {
        for _ in 0..TAKEOVER_TRIES {
            let (found, tag) = match self.read_list().await? {
                Some((s, t)) => (s, Some(t)),
                None => (Saved::default(), None),
            };
            if found.attempt > self.attempt {
                self.fenced = true;
                return Err(self.fenced_error());
            }
            #[cfg(test)]
            if let Some(hold) = self.hold_takeover.take() {
                let _ = hold.reached.send(());
                let _ = hold.go.await;
            }
            let mine = Saved {
                attempt: self.attempt,
                ..found
            };
            let expect = tag.as_deref().map_or(Expect::Absent, Expect::Tagged);
            let written = self
                .store
                .put_if(
                    &self.store.target.key(LIST),
                    serde_json::to_vec_pretty(&mine)?,
                    "application/json",
                    expect,
                )
                .await?;
            let Swap::Written(tag) = written else {
                // The list moved on between the read and the takeover: read it again.
                continue;
            };
            self.tag = Some(tag);
            match self.fetch(&mine).await? {
                None => {}
                Some(missing) => {
                    // Only a later attempt's takeover can have moved the list on now.
                    let now = self.read_list().await?.map(|(_, t)| t);
                    if now != self.tag {
                        self.fenced = true;
                        return Err(self.fenced_error());
                    }
                    anyhow::bail!(match missing {
                        Missing::Gone(url) => format!("the checkpoint lists {url} but it is gone"),
                        Missing::Changed(url) =>
                            format!("{url} does not match its checkpoint's digest"),
                    });
                }
            }
            // A save of an earlier attempt cut by the reclaim: its parts are billed until
            // aborted. Past the takeover, no earlier attempt's upload can be listed any more.
            match self.store.abort_uploads().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(uploads = n, "a cut save's unfinished uploads aborted"),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "a cut save's unfinished uploads stay (the bucket's lifecycle rule aborts them)")
                }
            }
            tracing::info!(
                files = mine.files.len(),
                generation = mine.generation,
                attempt = self.attempt,
                "checkpoint restored"
            );
            let n = mine.files.len();
            self.saved = mine;
            return Ok(n);
        }
        anyhow::bail!(
            "the checkpoint's list at {} changed {TAKEOVER_TRIES} times while this attempt took it over",
            self.store.target.url(&self.store.target.key(LIST))
        )
    }

    /// The files `saved` names, into the directory; the first that is gone or not as listed.
    async fn fetch(&mut self, saved: &Saved) -> Result<Option<Missing>> {
        for f in &saved.files {
            let path = path_under(&self.dir, &f.path)?;
            let key = self.store.target.key(&f.key);
            let url = self.store.target.url(&key);
            let Some(got) = self.store.get_file(&key, &path).await? else {
                return Ok(Some(Missing::Gone(url)));
            };
            if got.sha256 != f.sha256 {
                return Ok(Some(Missing::Changed(url)));
            }
            self.seen.insert(f.path.clone(), signature(&path)?);
        }
        Ok(None)
    }

    /// Sends what changed since the last save, then the list (unless a later attempt owns the
    /// place: then [`Fenced`]), then removes what is no longer listed.
    pub async fn save(&mut self) -> Result<Synced> {
        if self.fenced {
            return Err(self.fenced_error());
        }
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
        let started = Instant::now();
        let mut sent_now = vec![];
        for chunk in changed.chunks(AT_ONCE) {
            let attempt = self.attempt;
            let sent = futures_util::future::join_all(chunk.iter().map(|(rel, path, _)| {
                let key = format!("a{attempt}/g{generation}/{rel}");
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
            .await;
            for s in sent {
                match s {
                    Ok(f) => sent_now.push(f),
                    Err(e) => {
                        // Named by no list: removed now rather than left to the end of the run.
                        self.remove(&sent_now).await;
                        return Err(e);
                    }
                }
            }
        }
        let took = started.elapsed();
        synced.bytes_sent = sent_now.iter().map(|f| f.bytes).sum();
        #[cfg(test)]
        if let Some(hold) = self.hold.take() {
            let _ = hold.reached.send(());
            let _ = hold.go.await;
        }
        let mut sends = self.saved.sends.clone();
        if synced.bytes_sent > 0 {
            sends.push(Send {
                bytes: synced.bytes_sent,
                millis: took.as_millis() as u64,
            });
            let drop = sends.len().saturating_sub(SENDS_KEPT);
            sends.drain(..drop);
        }
        let mut next = kept;
        next.extend(sent_now.iter().cloned());
        next.sort_by(|a, b| a.path.cmp(&b.path));
        let saved = Saved {
            attempt: self.attempt,
            generation,
            files: next,
            sends,
        };
        let body = serde_json::to_vec_pretty(&saved)?;
        let mut written = None;
        for _ in 0..TAKEOVER_TRIES {
            let expect = self.tag.as_deref().map_or(Expect::Absent, Expect::Tagged);
            let key = self.store.target.key(LIST);
            if let Swap::Written(tag) = self
                .store
                .put_if(&key, body.clone(), "application/json", expect)
                .await?
            {
                written = Some(tag);
                break;
            }
            // Refused. A 409 (another write to the key under way) is no verdict: while the
            // list is still the one this attempt last wrote, write again.
            if self.read_list().await?.map(|(_, t)| t) != self.tag {
                break;
            }
        }
        let Some(tag) = written else {
            // A later attempt took the place over: its list may name any file but those just
            // sent (their keys are this attempt's and this generation's).
            self.fenced = true;
            self.remove(&sent_now).await;
            tracing::warn!(
                attempt = self.attempt,
                "a later attempt owns the checkpoint: this save is dropped and no more are made"
            );
            return Err(self.fenced_error());
        };
        self.tag = Some(tag);
        for (rel, _, sig) in changed {
            self.seen.insert(rel, sig);
        }
        let listed: HashSet<&str> = saved.files.iter().map(|f| f.key.as_str()).collect();
        let superseded: Vec<SavedFile> = self
            .saved
            .files
            .iter()
            .filter(|f| !listed.contains(f.key.as_str()))
            .cloned()
            .collect();
        self.remove(&superseded).await;
        self.seen
            .retain(|rel, _| saved.files.iter().any(|f| &f.path == rel));
        self.saved = saved;
        tracing::info!(
            generation,
            files = synced.files,
            sent = synced.sent,
            bytes_sent = synced.bytes_sent,
            seconds = took.as_secs_f64(),
            "checkpoint saved"
        );
        Ok(synced)
    }

    /// Removes the objects of `files`; one that stays is only logged (the end of the run
    /// removes the place).
    async fn remove(&self, files: &[SavedFile]) {
        for f in files {
            if let Err(e) = self.store.delete(&self.store.target.key(&f.key)).await {
                tracing::warn!(error = %format!("{e:#}"), key = %f.key, "an old checkpoint file stays");
            }
        }
    }

    /// The grace the job gets so that its last save fits the notice, from the sends the list
    /// records (see [`last_save_room`]).
    pub fn room(&self, grace: Duration) -> Room {
        let (rate, bytes) = measured(&self.saved.sends);
        last_save_room(grace, rate, bytes)
    }
}

/// After the job succeeded: every object of a checkpoint's place, the list first (so no
/// restore can see a list without its files); how many.
pub async fn delete_all(store: &Store) -> Result<usize> {
    let mut keys = store.list().await?;
    // The list first, whatever its place in the listing.
    keys.sort_by_key(|k| k != LIST);
    for k in &keys {
        store.delete(&store.target.key(k)).await?;
    }
    Ok(keys.len())
}

fn signature(path: &Path) -> Result<(u64, SystemTime)> {
    let m = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((m.len(), m.modified()?))
}

/// The Spot notice: two minutes before the reclaim.
pub const NOTICE: Duration = Duration::from_secs(120);
/// Of the notice, what passes before the grace starts: the notice is polled every 2 s.
pub const NOTICE_LAG: Duration = Duration::from_secs(2);
/// The last save's time as measured is stretched by this much (a send's rate varies), plus
/// [`LIST_TIME`] for the list and the removals.
const SAVE_MARGIN: f64 = 1.25;
const LIST_TIME: Duration = Duration::from_secs(1);
/// The grace is never lowered below this: a job needs some time to write its checkpoint.
pub const MIN_GRACE: Duration = Duration::from_secs(10);
/// Sends smaller than this measure the latency more than the rate: not counted.
const MEASURABLE: u64 = 1 << 20;

/// The grace for the last save to fit the notice, and whether it does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    /// The grace to give the job: the one asked for, or lower.
    pub grace: Duration,
    /// What the last save is expected to take (zero: nothing measured).
    pub save: Duration,
    /// Whether grace + save fit the notice; false only when the grace could not be lowered
    /// enough (it stays at [`MIN_GRACE`]).
    pub fits: bool,
}

/// The send rate (bytes a second) of the recorded sends large enough to measure it, and the
/// largest send recorded (what a last save may have to send).
pub fn measured(sends: &[Send]) -> (Option<f64>, u64) {
    let big: Vec<&Send> = sends.iter().filter(|s| s.bytes >= MEASURABLE).collect();
    let bytes: u64 = big.iter().map(|s| s.bytes).sum();
    let millis: u64 = big.iter().map(|s| s.millis).sum();
    let rate = (bytes > 0).then(|| bytes as f64 * 1000.0 / millis.max(1) as f64);
    (rate, sends.iter().map(|s| s.bytes).max().unwrap_or(0))
}

/// Whether `grace` leaves the notice room for a last save of `bytes` at `rate` (bytes a
/// second): grace + save within [`NOTICE`] less [`NOTICE_LAG`]. When it does not, the grace
/// is lowered to leave that room, never below [`MIN_GRACE`] (then it does not fit: the save
/// may be cut, and the next attempt resumes from the one before). Nothing measured: the grace
/// stays.
pub fn last_save_room(grace: Duration, rate: Option<f64>, bytes: u64) -> Room {
    let Some(rate) = rate.filter(|r| *r > 0.0) else {
        return Room {
            grace,
            save: Duration::ZERO,
            fits: true,
        };
    };
    let save = Duration::from_secs_f64(bytes as f64 / rate * SAVE_MARGIN) + LIST_TIME;
    let room = NOTICE.saturating_sub(NOTICE_LAG);
    if grace + save <= room {
        return Room {
            grace,
            save,
            fits: true,
        };
    }
    let lowered = room.saturating_sub(save);
    // Whole seconds, down: the grace is given in seconds.
    let lowered = Duration::from_secs(lowered.as_secs());
    Room {
        grace: lowered.max(MIN_GRACE).min(grace),
        save,
        fits: lowered >= MIN_GRACE.min(grace),
    }
}

/// Saves every `every` until `done` is cancelled; a failed save is logged and tried again at
/// the next (the job goes on either way), until a later attempt owns the checkpoint. A save
/// under way when `done` comes is finished. After each save, a grace that would not leave the
/// last save its room is told in the log.
pub fn keep(
    checkpoint: Arc<Mutex<Checkpoint>>,
    every: Duration,
    grace: Duration,
    done: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let mut c = checkpoint.lock().await;
            match c.save().await {
                Ok(_) => {
                    let room = c.room(grace);
                    if room.grace < grace {
                        tracing::warn!(
                            grace_seconds = grace.as_secs(),
                            save_seconds = room.save.as_secs_f64(),
                            "at the send rate measured, a last save after the whole grace would not fit the Spot notice; the next attempt lowers its grace to {} s",
                            room.grace.as_secs()
                        );
                    }
                }
                Err(e) if e.is::<Fenced>() => {
                    tracing::warn!(error = %e, "no more checkpoints from this attempt");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "the checkpoint could not be saved; trying again at the next")
                }
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
        let mut c = Checkpoint::open(&b.join("a"), to.clone(), 1).await.unwrap();
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
            ["a1/g3/state/step", "checkpoint.json"]
        );

        // The next attempt, on another instance: an empty directory gets the last save.
        let mut again = Checkpoint::open(&b.join("b"), to.clone(), 2).await.unwrap();
        assert_eq!(again.restore().await.unwrap(), 1);
        assert_eq!(std::fs::read(b.join("b/state/step")).unwrap(), b"2000");
        assert!(!b.join("b/model.bin").exists());
        // What it restored is not sent again; the generations go on, under its attempt.
        assert_eq!(again.save().await.unwrap().sent, 0);
        assert_eq!((again.saved.attempt, again.saved.generation), (2, 4));
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[tokio::test]
    async fn a_save_cut_short_leaves_the_previous_one_whole() {
        let b = base("torn");
        let to = place(&Target::Dir(b.join("store")), "r1", 1);
        let mut c = Checkpoint::open(&b.join("a"), to.clone(), 1).await.unwrap();
        c.restore().await.unwrap();
        std::fs::write(b.join("a/x"), b"one").unwrap();
        c.save().await.unwrap();
        // A later save's file sent, the instance gone before its list: the list still names
        // the first generation's file, which is still there.
        std::fs::create_dir_all(b.join("store/r1/worker-1/a1/g2")).unwrap();
        std::fs::write(b.join("store/r1/worker-1/a1/g2/x"), b"two, half sent").unwrap();
        let mut again = Checkpoint::open(&b.join("b"), to, 2).await.unwrap();
        assert_eq!(again.restore().await.unwrap(), 1);
        assert_eq!(std::fs::read(b.join("b/x")).unwrap(), b"one");
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[tokio::test]
    async fn a_file_that_does_not_match_its_digest_is_not_restored_silently() {
        let b = base("digest");
        let to = place(&Target::Dir(b.join("store")), "r1", 1);
        let mut c = Checkpoint::open(&b.join("a"), to.clone(), 1).await.unwrap();
        c.restore().await.unwrap();
        std::fs::write(b.join("a/x"), b"one").unwrap();
        c.save().await.unwrap();
        std::fs::write(b.join("store/r1/worker-1/a1/g1/x"), b"tampered").unwrap();
        let mut again = Checkpoint::open(&b.join("b"), to, 2).await.unwrap();
        let e = again.restore().await.unwrap_err().to_string();
        assert!(e.contains("does not match its checkpoint's digest"), "{e}");
        std::fs::remove_dir_all(&b).unwrap();
    }

    /// Stores of one place, each as one attempt's instance sees it.
    type Stores = Box<dyn Fn(u32) -> std::pin::Pin<Box<dyn std::future::Future<Output = Store>>>>;

    fn dir_stores(b: &Path) -> Stores {
        let to = place(&Target::Dir(b.join("store")), "r1", 1);
        Box::new(move |_| {
            let to = to.clone();
            Box::pin(async move { Store::new(to).await })
        })
    }

    /// The export bucket in moto, through the harness's front door, each attempt signing with
    /// a session of the run's role as launch-worker vends it (held to the template's policy:
    /// the run's own prefix only).
    async fn s3_stores(run: &str) -> Stores {
        let region = ephemera_tests::fresh_region();
        let admin = ephemera_tests::clients(region).s3;
        let bucket = ephemera_tests::iam::EXPORT_BUCKET;
        crate::store::test_bucket(&admin, region, bucket).await;
        let to = place(
            &Target::S3 {
                bucket: bucket.into(),
                prefix: format!("runs/{run}/checkpoints/"),
            },
            run,
            1,
        );
        let run = run.to_string();
        Box::new(move |_attempt| {
            let (to, run) = (to.clone(), run.clone());
            Box::pin(async move {
                let key = ephemera_tests::fixtures::run_session(region, &run).await;
                let conf = ephemera_tests::sdk_config_as(region, &key);
                let s3 = aws_sdk_s3::Client::from_conf(
                    aws_sdk_s3::config::Builder::from(&conf)
                        .force_path_style(true)
                        .build(),
                );
                Store::with_s3(to, s3)
            })
        })
    }

    async fn attempt(stores: &Stores, b: &Path, n: u32) -> Checkpoint {
        Checkpoint::open_in(&b.join(format!("w{n}")), stores(n).await, n)
            .await
            .unwrap()
    }

    /// The old attempt's last save held between its files and its list until the new attempt
    /// has restored and saved; then let go: it is refused, removes only its own new files, and
    /// the new attempt's list and files stay for a third attempt.
    async fn an_old_attempts_last_save_after_the_takeover_is_fenced(stores: Stores, b: &Path) {
        let mut old = attempt(&stores, b, 1).await;
        assert_eq!(old.restore().await.unwrap(), 0);
        std::fs::write(b.join("w1/step"), b"10").unwrap();
        std::fs::write(b.join("w1/model"), b"m1").unwrap();
        old.save().await.unwrap();

        // The notice: the job writes its last state, the last save starts and is held.
        std::fs::write(b.join("w1/step"), b"11, the old attempt's last").unwrap();
        std::fs::write(b.join("w1/extra"), b"only the old attempt has this").unwrap();
        let (reached_tx, reached) = tokio::sync::oneshot::channel();
        let (go, go_rx) = tokio::sync::oneshot::channel();
        old.hold = Some(Hold {
            reached: reached_tx,
            go: go_rx,
        });
        let last = tokio::spawn(async move { (old.save().await, old) });
        reached.await.unwrap();

        // Meanwhile the relaunch restores the first save and saves on from it.
        let mut new = attempt(&stores, b, 2).await;
        assert_eq!(new.restore().await.unwrap(), 2);
        assert_eq!(std::fs::read(b.join("w2/step")).unwrap(), b"10");
        std::fs::write(b.join("w2/step"), b"12, the new attempt's").unwrap();
        new.save().await.unwrap();

        go.send(()).unwrap();
        let (saved, old) = last.await.unwrap();
        let e = saved.unwrap_err();
        assert!(e.is::<Fenced>(), "{e:#}");
        assert!(old.fenced);
        // Once fenced, never again.
        let mut old = old;
        assert!(old.save().await.unwrap_err().is::<Fenced>());

        // The new attempt's list and its files, and nothing of the old attempt's last save.
        let store = stores(9).await;
        let mut keys = store.list().await.unwrap();
        keys.retain(|k| k != LIST);
        assert_eq!(keys, ["a1/g1/model", "a2/g2/step"], "{keys:?}");
        let mut third = attempt(&stores, b, 3).await;
        assert_eq!(third.restore().await.unwrap(), 2);
        assert_eq!(
            std::fs::read(b.join("w3/step")).unwrap(),
            b"12, the new attempt's"
        );
        assert_eq!(std::fs::read(b.join("w3/model")).unwrap(), b"m1");
        assert!(!b.join("w3/extra").exists());
        // The second attempt is fenced by the third in turn.
        assert!(new.save().await.unwrap_err().is::<Fenced>());
    }

    /// The converse: the old attempt's last save lands before the relaunch restores; the
    /// relaunch gets it, and an attempt earlier than the list's does not write it.
    async fn an_old_attempts_last_save_before_the_restore_is_restored(stores: Stores, b: &Path) {
        let mut old = attempt(&stores, b, 1).await;
        old.restore().await.unwrap();
        std::fs::write(b.join("w1/step"), b"10").unwrap();
        old.save().await.unwrap();
        std::fs::write(b.join("w1/step"), b"11, the old attempt's last").unwrap();
        old.save().await.unwrap();

        let mut new = attempt(&stores, b, 2).await;
        assert_eq!(new.restore().await.unwrap(), 1);
        assert_eq!(
            std::fs::read(b.join("w2/step")).unwrap(),
            b"11, the old attempt's last"
        );
        // A restore of an earlier attempt than the list's does not take it back.
        let mut late = attempt(&stores, b, 1).await;
        assert!(late.restore().await.unwrap_err().is::<Fenced>());
        let mut third = attempt(&stores, b, 3).await;
        assert_eq!(third.restore().await.unwrap(), 1);
        assert_eq!(
            std::fs::read(b.join("w3/step")).unwrap(),
            b"11, the old attempt's last"
        );
    }

    /// The relaunch reads the list, then the old attempt's last save lands (and removes the
    /// files it superseded) before the relaunch takes the list over: the takeover is refused,
    /// the relaunch reads again and restores the last save, not a list whose files are gone.
    async fn a_list_that_moves_before_the_takeover_is_read_again(stores: Stores, b: &Path) {
        let mut old = attempt(&stores, b, 1).await;
        old.restore().await.unwrap();
        std::fs::write(b.join("w1/step"), b"10").unwrap();
        old.save().await.unwrap();

        let mut new = attempt(&stores, b, 2).await;
        let (reached_tx, reached) = tokio::sync::oneshot::channel();
        let (go, go_rx) = tokio::sync::oneshot::channel();
        new.hold_takeover = Some(Hold {
            reached: reached_tx,
            go: go_rx,
        });
        let restoring = tokio::spawn(async move { (new.restore().await, new) });
        reached.await.unwrap();
        std::fs::write(b.join("w1/step"), b"11, the old attempt's last").unwrap();
        old.save().await.unwrap();
        assert_eq!(
            stores(9).await.list().await.unwrap(),
            ["a1/g2/step", LIST],
            "the first save's file is gone"
        );
        go.send(()).unwrap();
        let (restored, new) = restoring.await.unwrap();
        assert_eq!(restored.unwrap(), 1);
        assert_eq!(
            std::fs::read(b.join("w2/step")).unwrap(),
            b"11, the old attempt's last"
        );
        assert_eq!(new.saved().attempt, 2);
        // And the old attempt is fenced from then on.
        assert!(old.save().await.unwrap_err().is::<Fenced>());
    }

    #[tokio::test]
    async fn two_attempts_in_a_directory_are_fenced() {
        let b = base("fence-dir");
        an_old_attempts_last_save_after_the_takeover_is_fenced(dir_stores(&b), &b).await;
        std::fs::remove_dir_all(&b).unwrap();
        an_old_attempts_last_save_before_the_restore_is_restored(dir_stores(&b), &b).await;
        std::fs::remove_dir_all(&b).unwrap();
        a_list_that_moves_before_the_takeover_is_read_again(dir_stores(&b), &b).await;
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[tokio::test]
    async fn two_attempts_in_s3_are_fenced() {
        let b = base("fence-s3");
        an_old_attempts_last_save_after_the_takeover_is_fenced(s3_stores("fence-after").await, &b)
            .await;
        std::fs::remove_dir_all(&b).unwrap();
        an_old_attempts_last_save_before_the_restore_is_restored(
            s3_stores("fence-before").await,
            &b,
        )
        .await;
        std::fs::remove_dir_all(&b).unwrap();
        a_list_that_moves_before_the_takeover_is_read_again(s3_stores("fence-moved").await, &b)
            .await;
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[tokio::test]
    async fn conditional_writes_at_once_in_s3_let_one_through() {
        let stores = s3_stores("at-once").await;
        let store = stores(1).await;
        let key = store.target.key(LIST);
        let Swap::Written(tag) = store
            .put_if(&key, b"{}".to_vec(), "application/json", Expect::Absent)
            .await
            .unwrap()
        else {
            panic!("the first write of a new key")
        };
        let writes = (0..8u8).map(|i| {
            let (store, key, tag) = (store.clone(), key.clone(), tag.clone());
            tokio::spawn(async move {
                store
                    .put_if(&key, vec![i], "application/json", Expect::Tagged(&tag))
                    .await
                    .unwrap()
            })
        });
        let won: Vec<Swap> = futures_util::future::join_all(writes)
            .await
            .into_iter()
            .map(Result::unwrap)
            .filter(|w| matches!(w, Swap::Written(_)))
            .collect();
        assert_eq!(won.len(), 1, "{won:?}");
        let (_, now) = store.get_tagged(&key).await.unwrap().unwrap();
        assert_eq!(Swap::Written(now), won[0]);
    }

    #[tokio::test]
    async fn a_conditional_write_while_another_is_under_way_is_refused_409() {
        let stores = s3_stores("under-way").await;
        let store = stores(1).await;
        let key = store.target.key(LIST);
        let Target::S3 { bucket, .. } = &store.target else {
            unreachable!()
        };
        let region = store.s3().unwrap().0.config().region().unwrap().to_string();
        let under_way = ephemera_tests::harness()
            .door
            .s3_conditional_write_under_way(&region, &format!("/{bucket}/{key}"));
        let put = || store.put_if(&key, b"{}".to_vec(), "application/json", Expect::Absent);
        // 409 ConditionalRequestConflict: no write, and told as a lost swap.
        assert_eq!(put().await.unwrap(), Swap::Lost);
        assert_eq!(store.get_tagged(&key).await.unwrap(), None);
        drop(under_way);
        assert!(matches!(put().await.unwrap(), Swap::Written(_)));
    }

    #[tokio::test]
    async fn a_restore_aborts_the_upload_a_cut_save_left() {
        let b = base("cut-upload");
        let stores = s3_stores("cut-upload").await;
        let mut old = attempt(&stores, &b, 1).await;
        old.restore().await.unwrap();
        std::fs::write(b.join("w1/step"), b"10").unwrap();
        old.save().await.unwrap();
        // The last save's large file half sent when the instance went: one part of an upload
        // never completed (nor aborted).
        let store = stores(1).await;
        let (s3, bucket) = store.s3().unwrap();
        let key = store.target.key("a1/g2/model");
        let upload = s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        let id = upload.upload_id().unwrap();
        s3.upload_part()
            .bucket(bucket)
            .key(&key)
            .upload_id(id)
            .part_number(1)
            .body(vec![7u8; 5 << 20].into())
            .send()
            .await
            .unwrap();
        let open = |s3: aws_sdk_s3::Client, prefix: String| async move {
            s3.list_multipart_uploads()
                .bucket(bucket)
                .prefix(prefix)
                .send()
                .await
                .unwrap()
                .uploads()
                .len()
        };
        let prefix = store.target.key("");
        // Listed as the bucket's owner: the run's session may not (ListBucketMultipartUploads
        // takes no `s3:prefix`, so RunRole does not have it).
        let region = s3.config().region().unwrap().to_string();
        let admin = ephemera_tests::clients(&region).s3;
        assert_eq!(open(admin.clone(), prefix.clone()).await, 1);

        // Under the run's session the restore cannot list the uploads: it restores anyway and
        // leaves the cut one to the bucket's lifecycle rule.
        let mut new = attempt(&stores, &b, 2).await;
        assert_eq!(new.restore().await.unwrap(), 1);
        assert_eq!(open(admin.clone(), prefix.clone()).await, 1);
        // Where the restore may list them (the bucket's owner), it aborts the cut one.
        let mut by_owner = Checkpoint::open_in(
            &b.join("w3"),
            Store::with_s3(store.target.clone(), admin.clone()),
            3,
        )
        .await
        .unwrap();
        assert_eq!(by_owner.restore().await.unwrap(), 1);
        assert_eq!(open(admin, prefix).await, 0, "the cut upload is aborted");
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[tokio::test]
    async fn deleting_the_checkpoints_leaves_nothing_of_the_place() {
        let b = base("delete");
        let stores = dir_stores(&b);
        let mut c = attempt(&stores, &b, 1).await;
        c.restore().await.unwrap();
        std::fs::write(b.join("w1/step"), b"10").unwrap();
        c.save().await.unwrap();
        assert_eq!(delete_all(&stores(1).await).await.unwrap(), 2);
        assert!(stores(1).await.list().await.unwrap().is_empty());
        std::fs::remove_dir_all(&b).unwrap();
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_grace_stays_when_the_last_save_fits_the_notice() {
        // 90 s of grace and 2 s of lag leave 28 s: 100 MiB at 10 MiB/s (12.5 s with the
        // margin, 13.5 s with the list) fits.
        let r = last_save_room(Duration::from_secs(90), Some(10.0 * MIB as f64), 100 * MIB);
        assert_eq!(r.grace, Duration::from_secs(90));
        assert!(r.fits);
        assert_eq!(r.save, Duration::from_millis(13_500));
        // Nothing measured: nothing to lower it for.
        let r = last_save_room(Duration::from_secs(110), None, 100 * MIB);
        assert_eq!((r.grace, r.fits), (Duration::from_secs(110), true));
    }

    #[test]
    fn a_slow_send_lowers_the_grace_to_leave_the_last_save_its_room() {
        // 400 MiB at 10 MiB/s: 50 s with the margin, 51 s with the list; 118 - 51 = 67 s.
        let r = last_save_room(Duration::from_secs(90), Some(10.0 * MIB as f64), 400 * MIB);
        assert_eq!(r.grace, Duration::from_secs(67));
        assert!(r.fits);
        assert!(r.grace + r.save <= NOTICE - NOTICE_LAG);
        // Too slow for any useful grace: the floor, and it is said not to fit.
        let r = last_save_room(Duration::from_secs(90), Some(MIB as f64), 100 * MIB);
        assert_eq!((r.grace, r.fits), (MIN_GRACE, false));
        // A grace already under the floor is never raised.
        let r = last_save_room(Duration::from_secs(5), Some(MIB as f64), 100 * MIB);
        assert_eq!((r.grace, r.fits), (Duration::from_secs(5), false));
    }

    #[test]
    fn the_rate_is_measured_on_sends_large_enough_to_tell() {
        let sends = [
            Send {
                bytes: 40 * MIB,
                millis: 4_000,
            },
            // Small: its time is mostly the round trip.
            Send {
                bytes: 1_000,
                millis: 900,
            },
            Send {
                bytes: 60 * MIB,
                millis: 16_000,
            },
        ];
        let (rate, largest) = measured(&sends);
        assert_eq!(rate, Some(5.0 * MIB as f64));
        assert_eq!(largest, 60 * MIB);
        assert_eq!(measured(&sends[1..2]), (None, 1_000));
        assert_eq!(measured(&[]), (None, 0));
    }

    #[tokio::test]
    async fn each_save_records_its_send_for_the_next_attempt() {
        let b = base("sends");
        let stores = dir_stores(&b);
        let mut c = attempt(&stores, &b, 1).await;
        c.restore().await.unwrap();
        for i in 0..SENDS_KEPT + 2 {
            std::fs::write(b.join("w1/step"), format!("{i:04}")).unwrap();
            c.save().await.unwrap();
        }
        // An unchanged save sends nothing and records nothing.
        c.save().await.unwrap();
        let mut next = attempt(&stores, &b, 2).await;
        next.restore().await.unwrap();
        let sends = &next.saved().sends;
        assert_eq!(sends.len(), SENDS_KEPT);
        assert!(sends.iter().all(|s| s.bytes == 4), "{sends:?}");
        std::fs::remove_dir_all(&b).unwrap();
    }
}

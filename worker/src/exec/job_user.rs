//! The job is not the agent (issue 34 part 2): with `--run-as`, the command runs as an
//! unprivileged user of its own, holding only the run's session.
//!
//! - The user: looked up by name (the instance's `ephemera-job`, made by the user data) or given
//!   as `UID:GID`. On the instance, the user data's firewall rule closes IMDS to that user, so the
//!   instance role (which reads the task token) is out of its reach; the agent removes the
//!   variables that would point an SDK at other credentials (`supervise::CREDENTIAL_VARIABLES`).
//! - Its directories: the working directory (with the fetched inputs and the restored
//!   checkpoint), the checkpoint and outputs directories are handed to it before it starts.
//! - Its credentials: the run's session, in a config file whose `credential_process` prints a
//!   JSON document the agent rewrites as the session is renewed (so an SDK in a job that runs
//!   for hours asks again before the hour a chained session lasts). The directory is the
//!   agent's (root's, mode 0711): the job reads its two files and can replace neither; each
//!   write is a new file renamed over the old one, so no link the job makes is written through.
//! - Its files, read back by the agent (checkpoint saves, outputs): only regular files the job's
//!   user owns are read ([`crate::store::reading_files_of`]), so a link or a swapped directory
//!   cannot make the agent (root) copy another user's file into the run's objects.
//! - Its leftovers: once the command ends, every process of its user is killed before the agent
//!   reads its outputs (a background process could otherwise change them under the upload).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ephemera_contract::session::RunSession;

use super::supervise::RunAs;
use crate::agent::credentials::RunCredentials;

/// The user the instance's user data makes for jobs (`userdata::render` in the core).
pub const JOB_USER: &str = "ephemera-job";

/// How often the job's copy of the session is compared with the agent's: well within the
/// shortest renewal window (a third of a session's life, 10 s of the harness's 30 s sessions).
const REFRESH_EVERY: Duration = Duration::from_secs(3);

/// `--run-as`'s value: a user's name, or `UID:GID`; never root nor the worker's own user (its
/// leftovers are killed by that user's id: the worker would kill itself).
pub fn resolve(who: &str) -> Result<RunAs> {
    let r = resolve_any(who)?;
    if r.uid == nix::unistd::geteuid().as_raw() {
        bail!("--run-as {who}: the job may not run as the worker's own user");
    }
    Ok(r)
}

fn resolve_any(who: &str) -> Result<RunAs> {
    if let Some((uid, gid)) = who.split_once(':') {
        let (uid, gid) = (
            uid.parse::<u32>()
                .with_context(|| format!("--run-as {who}: UID is not a number"))?,
            gid.parse::<u32>()
                .with_context(|| format!("--run-as {who}: GID is not a number"))?,
        );
        if uid == 0 || gid == 0 {
            bail!("--run-as {who}: the job may not run as root (UID or GID 0)");
        }
        return Ok(RunAs { uid, gid });
    }
    let user = nix::unistd::User::from_name(who)
        .with_context(|| format!("--run-as {who}: looking the user up"))?
        .with_context(|| {
            format!(
                "--run-as {who}: no such user on this machine (the instance's user data makes {JOB_USER})"
            )
        })?;
    if user.uid.is_root() || user.gid.as_raw() == 0 {
        bail!("--run-as {who}: the job may not run as root (UID or GID 0)");
    }
    Ok(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// `dir` and everything under it owned by `who` (links themselves, never what they point to).
/// A directory that does not exist yet is made first, so the job can write into it.
pub fn hand_over(dir: &Path, who: RunAs) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(p) = pending.pop() {
        std::os::unix::fs::lchown(&p, Some(who.uid), Some(who.gid))
            .with_context(|| format!("handing {} to the job's user", p.display()))?;
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// The job's copy of the run's session: where it is, and the task that keeps it current.
pub struct JobCredentials {
    pub dir: PathBuf,
    refresher: tokio::task::JoinHandle<()>,
}

impl Drop for JobCredentials {
    fn drop(&mut self) {
        self.refresher.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl JobCredentials {
    /// The variables that point the job's SDK (or CLI) at its files and nowhere else.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AWS_CONFIG_FILE".into(),
                self.dir.join("config").display().to_string(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE".into(),
                self.dir.join("credentials").display().to_string(),
            ),
        ]
    }

    /// Derives the job's session from the agent's ([`RunCredentials::for_job`]) and writes it
    /// for `who` in a new directory of the agent's under `parent`; keeps it current (derived
    /// again before its renewal time) while the returned value lives. None when launch-worker
    /// sent no job policy: the job then has no credentials.
    pub async fn start(
        run: &RunCredentials,
        who: RunAs,
        parent: &Path,
    ) -> Result<Option<JobCredentials>> {
        let Some(first) = run
            .for_job()
            .await
            .context("the job's session (AssumeRole from the agent's)")?
        else {
            tracing::warn!("launch-worker sent no job policy: the job runs without credentials");
            return Ok(None);
        };
        let mut name = [0u8; 8];
        getrandom::fill(&mut name).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
        let dir = parent.join(format!("ephemera-job-credentials-{}", hex::encode(name)));
        // mkdir fails on anything already there: no one's link or directory is reused.
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&dir)
            .with_context(|| format!("making {}", dir.display()))?;
        let obtained = chrono::Utc::now();
        write_new(&dir, "session.json", &process_json(&first)?, who)?;
        let config = job_config(&dir.join("session.json"), run.region().as_deref());
        write_new(&dir, "config", &config, who)?;
        let refresher = tokio::spawn(keep_current(run.clone(), dir.clone(), who, first, obtained));
        Ok(Some(JobCredentials { dir, refresher }))
    }
}

/// The job's AWS config file: its session, printed by `credential_process`, and the region, so
/// that an SDK or the AWS CLI in the job needs nothing else (not IMDS, closed to it; not the
/// agent's environment, which a container does not see).
fn job_config(session: &Path, region: Option<&str>) -> String {
    let mut config = format!(
        "[default]\ncredential_process = /bin/cat {}\n",
        session.display()
    );
    if let Some(region) = region {
        config.push_str(&format!("region = {region}\n"));
    }
    config
}

/// Keeps the job's session in `dir` current: looks every [`REFRESH_EVERY`], and once `held` is
/// due for renewal (`credentials::due`) derives the next from the agent's and writes it in
/// place of the last. A failure is logged and tried again at the next look: the held session
/// stays valid for a third of its life after its renewal time.
async fn keep_current(
    run: RunCredentials,
    dir: PathBuf,
    who: RunAs,
    mut held: RunSession,
    mut obtained: chrono::DateTime<chrono::Utc>,
) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let now = chrono::Utc::now();
        if !crate::agent::credentials::due(now, obtained, held.expiration) {
            continue;
        }
        let derived = match run.for_job().await {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the job's session could not be derived again; tried again shortly");
                continue;
            }
        };
        match process_json(&derived).and_then(|j| write_new(&dir, "session.json", &j, who)) {
            Ok(()) => {
                (held, obtained) = (derived, now);
                tracing::info!(expires = %held.expiration, "the job's session renewed");
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "the job's session could not be written")
            }
        }
    }
}

/// The `credential_process` document (Version 1) of a session: its real expiry. The agent
/// writes the next one at its renewal time (a third of its life before the end,
/// `contract::session::renew_at`), before an SDK's own refresh window (seconds to minutes before
/// the expiry) asks again.
pub fn process_json(s: &RunSession) -> Result<String> {
    Ok(serde_json::to_string(&serde_json::json!({
        "Version": 1,
        "AccessKeyId": s.access_key_id,
        "SecretAccessKey": s.secret_access_key,
        "SessionToken": s.session_token,
        "Expiration": s.expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))?)
}

/// `text` as `dir/name`, readable by `who` alone: written to a new file (never through an
/// existing one), then renamed over the old.
fn write_new(dir: &Path, name: &str, text: &str, who: RunAs) -> Result<()> {
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("randomness: {e}"))?;
    let tmp = dir.join(format!(".{name}.{}", hex::encode(suffix)));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::os::unix::fs::lchown(&tmp, Some(who.uid), Some(who.gid))
        .with_context(|| format!("handing {} to the job's user", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o400))?;
    std::fs::rename(&tmp, dir.join(name))
        .with_context(|| format!("renaming to {}", dir.join(name).display()))?;
    Ok(())
}

/// Every process of `who` killed (the job's command is over; what it left running is not the
/// job's anymore, and must not change its outputs under the upload). `kill -KILL -1` as that
/// user signals every process it owns but itself.
pub async fn kill_leftovers(who: RunAs) {
    let killed = tokio::process::Command::new("kill")
        .args(["-KILL", "-1"])
        .uid(who.uid)
        .gid(who.gid)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    // kill(1) exits non-zero when there was nothing to signal: that is the usual case.
    if let Err(e) = killed {
        tracing::warn!(error = %e, uid = who.uid, "the job user's leftover processes could not be killed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        nix::unistd::Uid::effective().is_root()
    }

    #[test]
    fn the_job_user_is_a_name_or_ids_and_never_root() {
        assert_eq!(
            resolve("60123:60124").unwrap(),
            RunAs {
                uid: 60123,
                gid: 60124
            }
        );
        for bad in ["0:5", "5:0", "root", "x:1", "1:y"] {
            assert!(resolve(bad).is_err(), "{bad}");
        }
        let e = resolve("no-such-user-ephemera").unwrap_err().to_string();
        assert!(e.contains("no such user"), "{e}");
        // Debian's and Amazon Linux's unprivileged user.
        let nobody = resolve("nobody").unwrap();
        assert_ne!(nobody.uid, 0);
    }

    #[test]
    fn a_handed_over_tree_is_the_users_and_a_link_in_it_points_where_it_did() {
        let base = std::env::temp_dir().join(format!("ephemera-hand-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("w/in")).unwrap();
        std::fs::write(base.join("w/in/a"), b"a").unwrap();
        std::fs::write(base.join("outside"), b"root's").unwrap();
        std::os::unix::fs::symlink(base.join("outside"), base.join("w/link")).unwrap();
        let who = RunAs {
            uid: 60123,
            gid: 60124,
        };
        let handed = hand_over(&base.join("w"), who);
        let owner = |p: &str| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::symlink_metadata(base.join(p)).unwrap();
            (m.uid(), m.gid())
        };
        if root() {
            handed.unwrap();
            hand_over(&base.join("w/out"), who).unwrap();
            for p in ["w", "w/in", "w/in/a", "w/link", "w/out"] {
                assert_eq!(owner(p), (60123, 60124), "{p}");
            }
            assert_eq!(owner("outside"), (0, 0), "the link's target stays root's");
        } else {
            assert!(handed.is_err(), "a non-root worker gave files away");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_jobs_config_names_its_session_and_region() {
        let session = Path::new("/run/ephemera-job-credentials-ab/session.json");
        assert_eq!(
            job_config(session, Some("eu-west-1")),
            "[default]\ncredential_process = /bin/cat /run/ephemera-job-credentials-ab/session.json\nregion = eu-west-1\n"
        );
        assert!(!job_config(session, None).contains("region"));
    }

    #[test]
    fn the_process_document_is_version_1_with_the_sessions_expiry() {
        let t0 = chrono::DateTime::parse_from_rfc3339("2027-01-15T08:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let s = RunSession {
            role_arn: "arn:aws:iam::1:role/run".into(),
            access_key_id: "ASIA1".into(),
            secret_access_key: "s3cr3t".into(),
            session_token: "tok".into(),
            expiration: t0 + chrono::Duration::hours(1),
            policy: "{}".into(),
            job_policy: None,
        };
        let v: serde_json::Value = serde_json::from_str(&process_json(&s).unwrap()).unwrap();
        assert_eq!(v["Version"], 1);
        assert_eq!(v["AccessKeyId"], "ASIA1");
        assert_eq!(v["SecretAccessKey"], "s3cr3t");
        assert_eq!(v["SessionToken"], "tok");
        assert_eq!(v["Expiration"], "2027-01-15T09:00:00Z");
    }

    #[test]
    fn a_file_written_for_the_job_replaces_a_link_instead_of_writing_through_it() {
        if !root() {
            return;
        }
        let base = std::env::temp_dir().join(format!("ephemera-jobcred-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("target"), b"keep").unwrap();
        std::os::unix::fs::symlink(base.join("target"), base.join("session.json")).unwrap();
        let who = RunAs {
            uid: 60123,
            gid: 60124,
        };
        write_new(&base, "session.json", "{}", who).unwrap();
        assert_eq!(std::fs::read(base.join("target")).unwrap(), b"keep");
        let m = std::fs::symlink_metadata(base.join("session.json")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(m.is_file());
        assert_eq!((m.uid(), m.mode() & 0o777), (60123, 0o400));
        std::fs::remove_dir_all(&base).unwrap();
    }
}

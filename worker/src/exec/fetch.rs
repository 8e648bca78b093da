//! `exec --fetch SOURCE`: a job's inputs put into its working directory before the command
//! starts. SOURCE is an archive (`s3://bucket/job.tar.gz`, `.tgz` or `.tar`), unpacked, or a
//! prefix (`s3://bucket/inputs/`), every object under it copied; a local path works the same way
//! off AWS. Nothing is written outside the directory, whatever the archive or the keys say.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::store::{path_under, Store, Target};

/// How a source's files arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One archive: the store holding it and its key there.
    Archive {
        at: Target,
        name: String,
        gzip: bool,
    },
    /// Every object under a prefix (or every file under a directory).
    Tree(Target),
}

impl Source {
    pub fn parse(s: &str) -> Result<Source> {
        let gzip = s.ends_with(".tar.gz") || s.ends_with(".tgz");
        if gzip || s.ends_with(".tar") {
            let (at, name) = match (s.strip_prefix("s3://"), s.rsplit_once('/')) {
                (Some(rest), _) => match rest.rsplit_once('/') {
                    Some((dir, name)) if !dir.is_empty() => (format!("s3://{dir}"), name),
                    _ => bail!("--fetch '{s}': no bucket before the archive's name"),
                },
                (None, Some((dir, name))) => (dir.to_string(), name),
                (None, None) => (".".to_string(), s),
            };
            return Ok(Source::Archive {
                at: Target::parse(&at).with_context(|| format!("--fetch '{s}'"))?,
                name: name.to_string(),
                gzip,
            });
        }
        Ok(Source::Tree(
            Target::parse(s).with_context(|| format!("--fetch '{s}'"))?,
        ))
    }
}

/// What a fetch put in place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fetched {
    pub files: usize,
    pub bytes: u64,
}

/// Puts `source`'s files under `into`.
pub async fn fetch(source: &Source, into: &Path) -> Result<Fetched> {
    tokio::fs::create_dir_all(into)
        .await
        .with_context(|| format!("creating {}", into.display()))?;
    let fetched = match source {
        Source::Archive { at, name, gzip } => {
            let store = Store::new(at.clone()).await;
            let local = into.join(format!(".{name}.ephemera-fetch"));
            store
                .get_file(&at.key(name), &local)
                .await?
                .with_context(|| format!("--fetch: {} is not there", at.url(&at.key(name))))?;
            let (archive, dir, gzip) = (local.clone(), into.to_path_buf(), *gzip);
            let unpacked = tokio::task::spawn_blocking(move || unpack(&archive, &dir, gzip))
                .await?
                .with_context(|| format!("unpacking {}", at.url(&at.key(name))));
            let _ = tokio::fs::remove_file(&local).await;
            unpacked?
        }
        Source::Tree(at) => {
            let store = Store::new(at.clone()).await;
            let mut fetched = Fetched::default();
            for rel in store.list().await? {
                let path = path_under(into, &rel)?;
                if let Some(got) = store.get_file(&at.key(&rel), &path).await? {
                    fetched.files += 1;
                    fetched.bytes += got.bytes;
                }
            }
            anyhow::ensure!(
                fetched.files > 0,
                "--fetch: nothing under {}",
                at.url(&at.key(""))
            );
            fetched
        }
    };
    tracing::info!(
        files = fetched.files,
        bytes = fetched.bytes,
        into = %into.display(),
        "inputs fetched"
    );
    Ok(fetched)
}

/// Unpacks a tar (gzip'd or not) into `dir`, refusing any entry that would land outside it.
fn unpack(archive: &Path, dir: &PathBuf, gzip: bool) -> Result<Fetched> {
    let file = std::fs::File::open(archive)?;
    let reader: Box<dyn std::io::Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    let mut fetched = Fetched::default();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.display().to_string();
        let kind = entry.header().entry_type();
        // A link would be followed later by root (a restore, another fetch, a save) into any
        // place the archive names: an input is files and directories only.
        if kind.is_symlink() || kind.is_hard_link() {
            bail!("the archive's entry '{name}' is a link; an input archive may hold files and directories only");
        }
        let is_file = kind.is_file();
        let size = entry.size();
        // unpack_in skips (returns false) an entry whose path leaves `dir`.
        if !entry.unpack_in(dir)? {
            bail!("the archive's entry '{name}' would be written outside the directory");
        }
        if is_file {
            fetched.files += 1;
            fetched.bytes += size;
        }
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_with_a_link_is_refused_before_root_could_follow_it() {
        let b = std::env::temp_dir().join(format!("ephemera-fetch-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(b.join("work")).unwrap();
        for kind in [tar::EntryType::Symlink, tar::EntryType::Link] {
            let mut t = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_mode(0o777);
            t.append_link(&mut h, "ckpt", "/etc/cron.d").unwrap();
            let archive = b.join("in.tar");
            std::fs::write(&archive, t.into_inner().unwrap()).unwrap();
            let e = unpack(&archive, &b.join("work"), false)
                .unwrap_err()
                .to_string();
            assert!(e.contains("'ckpt' is a link"), "{e}");
            assert!(
                std::fs::symlink_metadata(b.join("work/ckpt")).is_err(),
                "{kind:?}"
            );
        }
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn sources_are_archives_or_prefixes() {
        assert_eq!(
            Source::parse("s3://b/jobs/job.tar.gz").unwrap(),
            Source::Archive {
                at: Target::S3 {
                    bucket: "b".into(),
                    prefix: "jobs/".into()
                },
                name: "job.tar.gz".into(),
                gzip: true
            }
        );
        assert_eq!(
            Source::parse("s3://b/job.tar").unwrap(),
            Source::Archive {
                at: Target::S3 {
                    bucket: "b".into(),
                    prefix: "".into()
                },
                name: "job.tar".into(),
                gzip: false
            }
        );
        assert_eq!(
            Source::parse("s3://b/inputs").unwrap(),
            Source::Tree(Target::S3 {
                bucket: "b".into(),
                prefix: "inputs/".into()
            })
        );
        assert!(Source::parse("s3://job.tgz").is_err());
        assert!(Source::parse("gs://b/x").is_err());
    }

    fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[tokio::test]
    async fn an_archive_is_unpacked_into_the_directory_and_removed() {
        let b = std::env::temp_dir().join(format!("ephemera-fetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(b.join("src")).unwrap();
        let archive = b.join("src/job.tar.gz");
        std::fs::write(
            &archive,
            tar_gz(&[("job.py", b"print(1)\n"), ("lib/x.txt", b"x")]),
        )
        .unwrap();
        let got = fetch(
            &Source::parse(&archive.display().to_string()).unwrap(),
            &b.join("work"),
        )
        .await
        .unwrap();
        assert_eq!(
            got,
            Fetched {
                files: 2,
                bytes: 10
            }
        );
        assert_eq!(std::fs::read(b.join("work/job.py")).unwrap(), b"print(1)\n");
        assert_eq!(std::fs::read(b.join("work/lib/x.txt")).unwrap(), b"x");
        let left: Vec<_> = std::fs::read_dir(b.join("work")).unwrap().collect();
        assert_eq!(left.len(), 2, "the downloaded archive is removed");

        // A directory (a prefix) is copied file by file.
        let got = fetch(
            &Source::parse(&b.join("work").display().to_string()).unwrap(),
            &b.join("copy"),
        )
        .await
        .unwrap();
        assert_eq!(got.files, 2);
        assert_eq!(std::fs::read(b.join("copy/lib/x.txt")).unwrap(), b"x");
        // An empty or missing source is an error, not an empty job.
        let e = fetch(
            &Source::parse(&b.join("none/").display().to_string()).unwrap(),
            &b.join("w2"),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("nothing under"), "{e}");
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[tokio::test]
    async fn an_entry_that_would_leave_the_directory_is_refused() {
        let b = std::env::temp_dir().join(format!("ephemera-fetch-evil-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(&b).unwrap();
        // tar::Builder refuses to write `..`, so the header's name is set by hand.
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut t = tar::Builder::new(gz);
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..12].copy_from_slice(b"../escape.sh");
        h.set_size(1);
        h.set_cksum();
        t.append(&h, &b"x"[..]).unwrap();
        std::fs::write(
            b.join("evil.tgz"),
            t.into_inner().unwrap().finish().unwrap(),
        )
        .unwrap();
        let e = fetch(
            &Source::parse(&b.join("evil.tgz").display().to_string()).unwrap(),
            &b.join("work"),
        )
        .await
        .unwrap_err();
        assert!(format!("{e:#}").contains("outside the directory"), "{e:#}");
        assert!(!b.join("escape.sh").exists());
        std::fs::remove_dir_all(&b).unwrap();
    }
}

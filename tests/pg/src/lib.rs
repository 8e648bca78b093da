//! A real PostgreSQL server for the tests: a private cluster in a temporary directory on a free
//! port, started once per test process and stopped with it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

pub struct Postgres {
    pub port: u16,
    pub dir: PathBuf,
}

static PG: OnceLock<Postgres> = OnceLock::new();

fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("EPHEMERA_PG_BIN") {
        return PathBuf::from(d);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|p| p.join("postgres").exists())
        .expect("PostgreSQL server binaries not found under /usr/lib/postgresql: run `make setup`")
}

/// (uid, gid) to run the server as: `postgres` when we are root (the server refuses root).
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return None;
    }
    let out = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    let uid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let out = Command::new("id").args(["-g", "postgres"]).output().ok()?;
    let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some((uid, gid))
}

// SAFETY: pre_exec runs between fork and exec; setgid, setuid and prctl are async-signal-safe.
#[allow(unsafe_code)]
fn as_server_user(cmd: &mut Command, user: Option<(u32, u32)>, die_with_parent: bool) {
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = user {
                if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After setuid, which clears it.
            if die_with_parent {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            Ok(())
        });
    }
}

fn chown(path: &Path, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown the cluster directory");
    }
}

/// Removes the clusters of test processes that have ended. A server dies with its process
/// (no destructor runs for a static), so its directory is swept by the next one instead;
/// without this, every test run and bench leaves gigabytes behind in the temp directory.
fn sweep_dead_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("ephemera-pg-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The server, started on first use; it lives as long as the test process.
pub fn postgres() -> &'static Postgres {
    PG.get_or_init(|| start(&Setup::default()))
}

/// What a server of its own needs besides the defaults (TLS tests: certificates, `ssl=on`,
/// a `pg_hba.conf` that takes `hostssl` only).
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Files written into the cluster's directory, readable by the server user alone.
    pub files: Vec<(String, Vec<u8>)>,
    /// `-c name=value` settings; `$DIR` in a value is the cluster's directory.
    pub settings: Vec<(String, String)>,
}

/// A server of its own for this test process, with `setup` applied; it lives as long as the
/// process.
pub fn start(setup: &Setup) -> Postgres {
    {
        sweep_dead_clusters();
        let bin = bin_dir();
        let user = server_user();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ephemera-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        chown(&dir, user);
        for (name, bytes) in &setup.files {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            chown(&path, user);
        }
        let settings: Vec<String> = setup
            .settings
            .iter()
            .flat_map(|(k, v)| {
                [
                    "-c".to_string(),
                    format!("{k}={}", v.replace("$DIR", dir.to_str().unwrap())),
                ]
            })
            .collect();
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_server_user(&mut initdb, user, false);
        let out = initdb.output().expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let dir_for_thread = dir.clone();
        // The server is a child of a thread that never ends, so PDEATHSIG fires only at exit.
        std::thread::Builder::new()
            .name("postgres".into())
            .spawn(move || {
                let log = std::fs::File::create(dir_for_thread.join("server.log")).unwrap();
                let mut cmd = Command::new(bin.join("postgres"));
                cmd.args(["-D", data.to_str().unwrap(), "-p", &port.to_string()])
                    .args(["-k", dir_for_thread.to_str().unwrap()])
                    .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                    .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
                    .args(["-c", "max_connections=50", "-c", "shared_buffers=256MB"])
                    .args(&settings)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log);
                as_server_user(&mut cmd, user, true);
                #[allow(clippy::zombie_processes)]
                let _child = cmd.spawn().expect("start postgres");
                ready_tx.send(()).unwrap();
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
        ready_rx.recv().unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "postgres did not start: see {}",
                dir.join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Accepting TCP is not accepting queries yet; the worker's tests retry their connect.
        std::thread::sleep(Duration::from_millis(300));
        Postgres { port, dir }
    }
}

impl Postgres {
    /// A URL for a fresh database of this name (created on first call).
    pub fn database(&self, name: &str) -> String {
        let psql = bin_dir().join("psql");
        let out = Command::new(psql)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-c", &format!("CREATE DATABASE \"{name}\"")])
            .output()
            .expect("psql");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("already exists"),
            "{err}"
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

//! Containers on this machine, for the container tests and `make demo SCENARIO=container`:
//! podman with the repository's settings (`containers/containers.conf`), a registry on the
//! loopback address playing ECR (Debian's `docker-registry`), and images built from this
//! machine's own files (`containers/rootfs.sh`): nothing is pulled from outside.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The repository's root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// podman's settings on these machines (runc, cgroupfs, no default ulimits), for
/// `CONTAINERS_CONF` of every podman this process or its children start.
pub fn containers_conf() -> PathBuf {
    root().join("containers/containers.conf")
}

/// The environment a podman (or a worker that starts one) needs here.
pub fn podman_env() -> [(&'static str, PathBuf); 1] {
    [("CONTAINERS_CONF", containers_conf())]
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// Whether podman and docker-registry are installed. Absent, a test is skipped on a
/// workstation; under CI it fails, so the check cannot quietly disappear (`make setup`
/// installs them).
pub fn available() -> bool {
    let found = on_path("podman") && on_path("docker-registry");
    if !found && std::env::var_os("CI").is_some() {
        panic!("podman or docker-registry is not installed and CI is set: `make setup` installs them (apt-get install podman runc docker-registry)");
    }
    found
}

/// A registry on 127.0.0.1 (a free port), its storage in a directory of its own; stopped
/// when dropped.
pub struct Registry {
    pub addr: String,
    child: Child,
    dir: PathBuf,
    /// The images pushed, which whoever ran them pulled into podman's store: removed with it.
    pushed: std::sync::Mutex<Vec<String>>,
}

impl Registry {
    pub fn start(dir: &Path) -> Result<Registry> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(dir)?;
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(root().join("containers/registry.yml"))
            .env("REGISTRY_HTTP_ADDR", &addr)
            .env("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log"))?);
        // The registry dies with the thread that started it, however the process ends.
        // SAFETY: pre_exec runs between fork and exec; prctl is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting docker-registry")?;
        let began = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            if began.elapsed() > Duration::from_secs(20) {
                bail!("docker-registry did not listen on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Registry {
            addr,
            child,
            dir: dir.to_path_buf(),
            pushed: Default::default(),
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let pushed = self.pushed.lock().map(|p| p.clone()).unwrap_or_default();
        for image in pushed {
            let _ = podman(&["rmi", "--force", &image]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn podman(args: &[&str]) -> Result<()> {
    let out = Command::new("podman")
        .args(args)
        .envs(podman_env())
        .output()
        .with_context(|| format!("podman {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "podman {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// An image `FROM scratch` holding `programs` (and the libraries they link) from this
/// machine, then `files` (a file of the repository, its path in the image), built with podman,
/// pushed to `registry` as `<registry>/<name>` and removed from the local store, so that
/// whoever runs it pulls it as from ECR. Its reference.
pub fn image_from_host(
    registry: &Registry,
    name: &str,
    programs: &[&str],
    files: &[(PathBuf, &str)],
) -> Result<String> {
    let context = registry
        .dir
        .join(format!("build-{}", name.replace(['/', ':'], "-")));
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context)?;
    let status = Command::new("bash")
        .arg(root().join("containers/rootfs.sh"))
        .arg(context.join("rootfs"))
        .args(programs)
        .status()
        .context("containers/rootfs.sh")?;
    anyhow::ensure!(status.success(), "containers/rootfs.sh failed ({status})");
    let mut containerfile = String::from("FROM scratch\nCOPY rootfs/ /\n");
    for (i, (src, dest)) in files.iter().enumerate() {
        std::fs::copy(src, context.join(format!("file-{i}")))
            .with_context(|| format!("{}", src.display()))?;
        containerfile.push_str(&format!("COPY file-{i} {dest}\n"));
    }
    std::fs::write(context.join("Containerfile"), containerfile)?;
    let reference = format!("{}/{name}", registry.addr);
    let ctx = context.display().to_string();
    podman(&["build", "--quiet", "--tag", &reference, &ctx])?;
    // Plain HTTP to the loopback registry only: nothing else can reach it.
    podman(&["push", "--quiet", "--tls-verify=false", &reference])?;
    podman(&["rmi", &reference])?;
    if let Ok(mut p) = registry.pushed.lock() {
        p.push(reference.clone());
    }
    let _ = std::fs::remove_dir_all(&context);
    Ok(reference)
}

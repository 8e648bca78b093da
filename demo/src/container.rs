//! `make demo SCENARIO=container`: the resumable job (`examples/resumable-job/job.py`) as a
//! container image, built from this machine's files (Python and its standard library, no
//! registry pull from outside), pushed to a registry on the loopback address that plays ECR,
//! and pulled and run by the real worker under podman.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ephemera_tests::containers::{self, Registry};

/// The job's command in its image.
pub const COMMAND: [&str; 2] = ["python3", "/opt/job/job.py"];

/// The registry (stopped when dropped) and the job's image in it.
pub struct JobImage {
    pub registry: Registry,
    pub reference: String,
    /// The run whose containers go with the demo (`ephemera-<run>-w<n>-a<n>`).
    run_id: String,
}

/// A worker killed with its instance leaves its container running, as the instance's end
/// would take it on AWS: here the demo's end does.
impl Drop for JobImage {
    fn drop(&mut self) {
        let listed = std::process::Command::new("podman")
            .args(["ps", "--all", "--quiet", "--filter"])
            .arg(format!("name=ephemera-{}-", self.run_id))
            .envs(containers::podman_env())
            .output();
        if let Ok(out) = listed {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = std::process::Command::new("podman")
                    .args(["rm", "--force", id])
                    .envs(containers::podman_env())
                    .output();
            }
        }
    }
}

/// The image: Debian's Python (`/usr/bin/python3`, the libraries it links, its standard
/// library) and the job's script at `/opt/job/job.py`, `FROM scratch`. The inputs (the bars)
/// are fetched into the working directory as in the exec scenario; the image holds the code.
pub fn build(out: &Path, run_id: &str) -> Result<JobImage> {
    anyhow::ensure!(
        containers::available(),
        "podman and docker-registry are needed for this scenario: `make setup` installs them"
    );
    let registry = Registry::start(&out.join("registry")).context("the loopback registry")?;
    let python = std::fs::read_link("/usr/bin/python3")
        .map(|v| PathBuf::from("/usr/lib").join(v))
        .context("/usr/bin/python3 (Debian's python3)")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/resumable-job/job.py");
    let reference = containers::image_from_host(
        &registry,
        "ephemera/resumable-job:demo",
        &["/usr/bin/python3", &python.display().to_string()],
        &[(script, "/opt/job/job.py")],
    )?;
    Ok(JobImage {
        registry,
        reference,
        run_id: run_id.to_string(),
    })
}

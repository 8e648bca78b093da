//! The `ephemera` binary as a person runs it against the emulator, for the cli crate's tests
//! (which alone can name the binary: `env!("CARGO_BIN_EXE_ephemera")`).

use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;

/// The binary at `bin` as a person runs it, in `region` of the emulator, as its administrator:
/// none of the caller's profile, deployment or log settings.
pub fn command(bin: &str, region: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin);
    c.env("AWS_ENDPOINT_URL", &crate::harness().endpoint)
        .env("AWS_REGION", region)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .env_remove("EPHEMERA_STATE_MACHINE_ARN")
        .env_remove("EPHEMERA_LEDGER_TABLE")
        .env_remove("EPHEMERA_MONTHLY_BUDGET_USD")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    c
}

/// A run's stdout and stderr, as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `spec` written to a file of this process's own, named after `name`, for `--spec`-style
/// arguments.
pub fn write_spec(name: &str, spec: &Value) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("ephemera-spec-{name}-{}.json", std::process::id()));
    std::fs::write(&path, spec.to_string()).unwrap();
    path
}

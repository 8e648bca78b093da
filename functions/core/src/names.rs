//! Error names as the state machine matches them (`ErrorEquals`); see DESIGN.md.

pub const INVALID_RUNSPEC: &str = "Ephemera.InvalidRunSpec";
pub const QUOTA_DENIED: &str = "Ephemera.QuotaDenied";
pub const QUOTA_TIMEOUT: &str = "Ephemera.QuotaTimeout";
pub const OVER_BUDGET: &str = "Ephemera.OverBudget";
pub const CAPACITY_UNAVAILABLE: &str = "Ephemera.CapacityUnavailable";
pub const LAUNCH_FAILED: &str = "Ephemera.LaunchFailed";
pub const BOOT_FAILED: &str = "Ephemera.BootFailed";
pub const SPOT_INTERRUPTED: &str = "Worker.SpotInterrupted";
pub const WORKER_FAILED: &str = "Worker.Failed";
/// A heartbeat or runtime timeout (States.HeartbeatTimeout / States.Timeout), as the execution fails.
pub const WORKER_TIMED_OUT: &str = "Worker.TimedOut";
pub const VERIFICATION_FAILED: &str = "Ephemera.VerificationFailed";
pub const REFUSED: &str = "Ephemera.RefusedToTerminate";
pub const AWS: &str = "Ephemera.AwsError";
/// The Lambda's input does not have the shape the state machine gives it (a contract error
/// between the ASL and the code, not the user's RunSpec, which is `INVALID_RUNSPEC`).
pub const BAD_INPUT: &str = "Ephemera.BadInput";
/// A fault of ephemera's own code (an output it cannot serialise, an unknown function).
pub const INTERNAL: &str = "Ephemera.Internal";

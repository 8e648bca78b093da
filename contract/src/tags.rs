//! The tags ephemera puts on every instance and volume it launches: what cleanup, the sweeper
//! and IAM conditions (`ec2:ResourceTag/ephemera:managed`) recognise them by.

/// `true` on everything a run launches: the roles' conditions and the sweeper look for it.
pub const MANAGED: &str = "ephemera:managed";
/// The run id (`run_id`).
pub const RUN: &str = "ephemera:run";
/// The execution's ARN: the sweeper asks Step Functions whether it has ended.
pub const EXECUTION: &str = "ephemera:execution";
/// Which launch of its worker the instance is (1, then each relaunch).
pub const ATTEMPT: &str = "ephemera:attempt";
/// Which of the run's workers (`1..=worker.count`) the instance is; its attempts share it.
pub const WORKER: &str = "ephemera:worker";
/// On a snapshot: the stack that took it (`${AWS::StackName}`), so that a stack prunes only its
/// own snapshots of a database other stacks snapshot too.
pub const STACK: &str = "ephemera:stack";
/// RFC 3339: past it, the sweeper terminates the instance whatever its execution says.
pub const DEADLINE: &str = "ephemera:deadline";
/// On a task token parameter (not an instance): who may read it; the worker role reads a token
/// only when this tag equals its own `aws:userid` (template.yaml, `ReadItsOwnTaskToken`).
pub const READER: &str = "ephemera:reader";

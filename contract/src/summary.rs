//! The completion summary: what the worker sends with SendTaskSuccess (`$.result`), and what
//! verify-completion checks against the run's expectations.

use serde::{Deserialize, Serialize};

/// What a worker did, sent when its work succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The run the worker worked for.
    pub run_id: String,
    /// Partitions (stage × pair × month) of this run done, and failed for good.
    pub partitions_done: u64,
    /// Partitions that failed for good.
    pub partitions_failed: u64,
    /// Bars read and feature rows written by the feature stages.
    pub rows_in: u64,
    /// Feature rows written.
    pub rows_out: u64,
    // verify-completion checks only the counts above and the manifest: a summary without the
    // fields below (the harness's stand-in workers send none) is still read.
    /// Partitions this process computed (the rest were done before, or by other workers).
    #[serde(default)]
    pub processed_here: u64,
    /// The stages the run computed, by name.
    #[serde(default)]
    pub stages: Vec<String>,
    /// How long the work took.
    #[serde(default)]
    pub seconds: f64,
    /// `s3://bucket/key` (or a path, for a local export) of the export manifest, once every
    /// export partition is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The `validate` stage's totals, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    /// A job run under `ephemera-worker exec`: the command and how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
}

/// The most SendTaskSuccess takes as its output: Step Functions' 256 KiB for a task's result
/// (Step Functions quotas, "Maximum input or output size for a task, state, or execution";
/// `States.DataLimitExceeded` past it, which no Catch of the run's takes).
pub const SENT_MAX_BYTES: usize = 256 * 1024;

/// The characters of a job's command line the summary keeps: forty workers' summaries share
/// the run document's 256 KiB, and `worker.args` may hold 4 KB.
pub const JOB_COMMAND_KEPT: usize = 200;

/// A command `ephemera-worker exec` supervised to its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The command line, as given after `--` (its first [`JOB_COMMAND_KEPT`] characters).
    pub command: String,
    /// Its exit status (0: success; a job that failed is reported as `Worker.Failed`).
    pub exit_code: i32,
    /// How long it ran (its last run, after any retries).
    pub seconds: f64,
    /// The runs before the last that failed with an exit code the RunSpec retries
    /// (`job.retry`), in order: each ran again on the same instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<Retried>,
}

/// The most retries a job may ask for (`job.retry.max`): the summary keeps each.
pub const JOB_RETRIES_MAX: u32 = 10;

/// One run of a job that failed and was run again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retried {
    /// Its exit status (128 + the signal when it was killed by one).
    pub exit_code: i32,
    /// How long it ran.
    pub seconds: f64,
}

/// Totals of the `validate` stage over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// Partitions validated.
    pub partitions: u64,
    /// Problems found, of every kind below.
    pub problems: u64,
    /// Null values past an indicator's warm-up rows.
    pub nulls_beyond_warm_up: u64,
    /// NaN or infinite values.
    pub non_finite: u64,
    /// Values outside their feature's range.
    pub out_of_range: u64,
    /// Gaps in the bars the source does not explain.
    pub unexpected_gaps: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full() -> Summary {
        Summary {
            run_id: "r1".into(),
            partitions_done: 8,
            partitions_failed: 1,
            rows_in: 1_000,
            rows_out: 900,
            processed_here: 5,
            stages: vec!["indicators".into(), "export".into()],
            seconds: 3.5,
            manifest: Some("s3://out/runs/r1/manifest.json".into()),
            validation: Some(Validation {
                partitions: 4,
                problems: 1,
                nulls_beyond_warm_up: 2,
                non_finite: 3,
                out_of_range: 4,
                unexpected_gaps: 5,
            }),
            job: Some(Job {
                command: "python3 job.py".into(),
                exit_code: 0,
                seconds: 12.5,
                retries: vec![],
            }),
        }
    }

    #[test]
    fn what_the_worker_sends_is_what_verify_completion_reads() {
        let mut bare = full();
        bare.manifest = None;
        bare.validation = None;
        bare.job = None;
        for s in [full(), bare] {
            let sent = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<Summary>(&sent).unwrap(), s, "{sent}");
        }
    }

    #[test]
    fn the_wire_format_is_pinned() {
        // Field names are the contract: a rename on one side would drop the value on the other.
        assert_eq!(
            serde_json::to_value(full()).unwrap(),
            json!({
                "run_id": "r1", "partitions_done": 8, "partitions_failed": 1,
                "rows_in": 1000, "rows_out": 900, "processed_here": 5,
                "stages": ["indicators", "export"], "seconds": 3.5,
                "manifest": "s3://out/runs/r1/manifest.json",
                "validation": {"partitions": 4, "problems": 1, "nulls_beyond_warm_up": 2,
                               "non_finite": 3, "out_of_range": 4, "unexpected_gaps": 5},
                "job": {"command": "python3 job.py", "exit_code": 0, "seconds": 12.5}
            })
        );
        let mut bare = full();
        bare.manifest = None;
        bare.validation = None;
        bare.job = None;
        let v = serde_json::to_value(bare).unwrap();
        assert!(
            v.get("manifest").is_none() && v.get("validation").is_none() && v.get("job").is_none(),
            "{v}"
        );
    }

    #[test]
    fn counts_alone_are_read_and_unknown_fields_ignored() {
        let s: Summary = serde_json::from_value(json!({
            "run_id": "r1", "partitions_done": 2, "partitions_failed": 0,
            "rows_in": 20, "rows_out": 20, "durations": {"total_s": 3.5}
        }))
        .unwrap();
        assert_eq!(
            (s.partitions_done, s.rows_out, s.processed_here),
            (2, 20, 0)
        );
        assert_eq!((s.manifest, s.validation), (None, None));
        // The counts are not optional: a summary without them is not a summary.
        assert!(serde_json::from_value::<Summary>(json!({"run_id": "r1"})).is_err());
    }
}

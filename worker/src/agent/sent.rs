//! What the agent sends the state machine is bounded before it is sent: a success Step
//! Functions refuses (`States.DataLimitExceeded` past [`SENT_MAX_BYTES`]) would end the run
//! without its worker's result.

use ephemera_contract::summary::{Summary, JOB_COMMAND_KEPT, SENT_MAX_BYTES};

use super::redact;

/// The most characters of a failure's cause sent: SendTaskFailure takes 32,768
/// (https://docs.aws.amazon.com/step-functions/latest/apireference/API_SendTaskFailure.html).
pub const CAUSE_MAX_CHARS: usize = 32_000;

/// A failure's cause as sent: the job's secrets redacted (the cause carries the last lines of
/// its stderr into the history, the email and the page), then cut to what Step Functions takes.
pub fn failure_cause(cause: &str) -> String {
    redact::scrub(cause).chars().take(CAUSE_MAX_CHARS).collect()
}

/// The summary as sent, at most `max` bytes of JSON: what could grow without bound (the stages'
/// names, a job's command line, the manifest's location) is cut, from the end, until it fits,
/// so that the run ends with its report. The counts verify-completion checks are never cut.
pub fn summary_json(summary: &Summary, max: usize) -> String {
    let len = |s: &Summary| serde_json::to_string(s).map_or(usize::MAX, |j| j.len());
    let fits = |s: &Summary| len(s) <= max;
    let mut s = summary.clone();
    // The job's command line is the RunSpec's (no secret's value), unless the job's own words
    // reached it: redacted all the same, as every text that leaves.
    if let Some(job) = s.job.as_mut() {
        job.command = redact::scrub(&job.command);
    }
    if !fits(&s) {
        if let Some(job) = s.job.as_mut() {
            job.command = job.command.chars().take(JOB_COMMAND_KEPT).collect();
        }
    }
    // Stages from the end, as many as the excess asks for at once (each is its JSON string and
    // a comma): one serialization a round, not one a stage.
    while !fits(&s) && !s.stages.is_empty() {
        let mut excess = len(&s).saturating_sub(max);
        while excess > 0 {
            let Some(last) = s.stages.pop() else { break };
            let cost = serde_json::to_string(&last).map_or(0, |j| j.len()) + 1;
            excess = excess.saturating_sub(cost);
        }
    }
    if !fits(&s) {
        s.manifest = None;
        s.validation = None;
    }
    if !fits(&s) {
        s.run_id = s.run_id.chars().take(64).collect();
    }
    serde_json::to_string(&s).unwrap_or_default()
}

/// [`summary_json`] at Step Functions' limit.
pub fn success_output(summary: &Summary) -> String {
    summary_json(summary, SENT_MAX_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ephemera_contract::summary::Job;

    fn summary() -> Summary {
        Summary {
            run_id: "r1".into(),
            partitions_done: 8,
            partitions_failed: 1,
            rows_in: 1_000,
            rows_out: 900,
            processed_here: 5,
            stages: vec!["indicators".into()],
            seconds: 3.5,
            manifest: Some("s3://out/runs/r1/worker-1/manifest.json".into()),
            validation: None,
            job: Some(Job {
                command: "python3 job.py".into(),
                exit_code: 0,
                seconds: 12.5,
                retries: vec![],
            }),
        }
    }

    #[test]
    fn a_summary_within_the_limit_is_sent_whole() {
        let s = summary();
        assert_eq!(success_output(&s), serde_json::to_string(&s).unwrap());
    }

    #[test]
    fn a_summary_over_the_limit_is_cut_to_it_and_keeps_its_counts() {
        let mut huge = summary();
        huge.stages = (0..40_000).map(|i| format!("stage-{i:08}")).collect();
        huge.job.as_mut().unwrap().command = "x".repeat(300_000);
        assert!(serde_json::to_string(&huge).unwrap().len() > SENT_MAX_BYTES);
        let sent = success_output(&huge);
        assert!(sent.len() <= SENT_MAX_BYTES, "{}", sent.len());
        let back: Summary = serde_json::from_str(&sent).unwrap();
        assert_eq!(
            (back.partitions_done, back.partitions_failed, back.rows_out),
            (8, 1, 900)
        );
        assert!(back.job.unwrap().command.chars().count() <= JOB_COMMAND_KEPT);
        // A limit below even the counts: still a Summary verify-completion reads.
        let tiny: Summary = serde_json::from_str(&summary_json(&huge, 10)).unwrap();
        assert_eq!(tiny.rows_in, 1_000);
    }

    #[test]
    fn the_jobs_secrets_are_redacted_from_the_cause_and_the_summary_before_they_are_sent() {
        redact::keep(&["sent-test-secret-5b7c".to_string()]);
        let cause = format!(
            "`sh -c job` exited with status 3; the last lines of its stderr:\nkey is sent-test-secret-5b7c\n{}",
            "x".repeat(40_000)
        );
        let sent = failure_cause(&cause);
        assert!(sent.contains("key is [redacted]"), "{}", &sent[..120]);
        assert!(!sent.contains("sent-test-secret-5b7c"));
        assert_eq!(sent.chars().count(), CAUSE_MAX_CHARS);
        let mut s = summary();
        s.job.as_mut().unwrap().command = "echo sent-test-secret-5b7c".into();
        let out = success_output(&s);
        assert!(
            out.contains("echo [redacted]") && !out.contains("sent-test-secret-5b7c"),
            "{out}"
        );
    }
}

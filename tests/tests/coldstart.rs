//! The cold-start timer of `make lambdas` against this machine's builds of real bootstraps: it
//! sees each start ask for its event and answer it, without the network.

use std::path::PathBuf;
use std::time::Duration;

use ephemera_tests::coldstart::{measure, Timer};
use ephemera_tests::host_bins;

fn host_bin(name: &str) -> PathBuf {
    host_bins().join(name)
}

/// The real terminate-with-cost-report bootstrap, its teardown refused: the failure is a metric
/// in its log, in the embedded metric format CloudWatch extracts (the template's alarm watches
/// it), beside the error the state machine retries.
#[tokio::test]
async fn a_refused_teardown_is_a_metric_in_the_functions_log() {
    use ephemera_core::metrics::NAMESPACE;
    let timer = Timer::start().await.unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let event =
        std::fs::read_to_string(root.join("events/terminate-with-cost-report.json")).unwrap();
    let (start, stdout) = timer
        .invoke(
            &host_bin("terminate-with-cost-report"),
            &event,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(start.aws_calls > 0, "{start:?}");
    assert!(start.error_type.is_some(), "the teardown failed: {start:?}");
    let line = stdout
        .lines()
        .find(|l| l.contains("\"_aws\""))
        .unwrap_or_else(|| panic!("no metrics line in:\n{stdout}"));
    let doc: serde_json::Value = serde_json::from_str(line).unwrap();
    let directive = &doc["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], NAMESPACE);
    assert_eq!(directive["Dimensions"], serde_json::json!([["Stack"]]));
    assert_eq!(
        directive["Metrics"],
        serde_json::json!([{"Name": "CleanupFailures", "Unit": "Count"}])
    );
    assert_eq!(doc["Stack"], "ephemera");
    assert_eq!(doc["CleanupFailures"], 1.0);
}

#[tokio::test]
async fn a_bootstrap_that_refuses_its_input_answers_without_calling_aws() {
    let timer = Timer::start().await.unwrap();
    let start = timer
        .time(&host_bin("quota-check"), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(start.init < start.answer, "{start:?}");
    assert_eq!(
        start.error_type.as_deref(),
        Some("Ephemera.BadInput"),
        "{start:?}"
    );
    assert_eq!(start.aws_calls, 0, "{start:?}");
    assert!(start.peak_rss_kib > 0, "{start:?}");
}

#[tokio::test]
async fn a_bootstrap_whose_first_call_is_denied_answers_once_without_retrying() {
    let timer = Timer::start().await.unwrap();
    let row = measure(&timer, &host_bin("sweeper"), 3).await.unwrap();
    assert_eq!(row.name, "sweeper");
    assert!(row.init.median < row.answer.median, "{row:?}");
    assert!(
        row.answer.max < Duration::from_secs(5),
        "no retry backoff: {row:?}"
    );
    assert!(
        row.answered_with.contains("after 1 AWS call"),
        "the sweeper's first call was denied and it answered: {row:?}"
    );
}

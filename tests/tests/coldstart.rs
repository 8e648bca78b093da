//! The cold-start timer of `make lambdas` against this machine's builds of real bootstraps: it
//! sees each start ask for its event and answer it, without the network.

use std::path::PathBuf;
use std::time::Duration;

use ephemera_tests::coldstart::{measure, Timer};
use ephemera_tests::host_bins;

fn host_bin(name: &str) -> PathBuf {
    host_bins().join(name)
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

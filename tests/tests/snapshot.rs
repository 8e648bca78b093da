//! `database.snapshot_before`, end to end: the deployed ASL in moto, the real snapshot-database
//! handler behind the front door (its template role enforced, RDS answering "creating" before
//! "available" as it does), a worker stand-in on the task token. The snapshot is taken and
//! waited for before anything is launched, named in the report; a source that does not exist
//! fails the run before any worker exists.

use aws_sdk_rds::types::Tag;
use ephemera_functions::{invoke, Function, Settings};
use ephemera_tests::e2e::State;
use ephemera_tests::e2e::{self, Run};
use ephemera_tests::worker_standin::Behaviour;
use ephemera_tests::{clients, fixtures, fresh_region, function_clients};
use serde_json::{json, Value};

/// A PostgreSQL DB instance in moto's RDS, as the operator has one.
async fn db_instance(region: &str, id: &str) {
    clients(region)
        .rds
        .create_db_instance()
        .db_instance_identifier(id)
        .engine("postgres")
        .db_instance_class("db.t4g.micro")
        .allocated_storage(20)
        .master_username("ephemera")
        .master_user_password("not-a-secret-moto-only")
        .send()
        .await
        .expect("CreateDBInstance");
}

async fn run(region: &'static str, run_id: &str, source: Value) -> Run {
    let report = json!({"run_id": run_id, "partitions_done": 2, "partitions_failed": 0,
                        "rows_in": 1000, "rows_out": 1000});
    e2e::scenario(region, run_id, Behaviour::Succeed(report), |spec| {
        spec["database"] = json!({"snapshot_before": source, "snapshot_timeout_seconds": 600});
    })
    .await
}

#[tokio::test]
async fn the_snapshot_is_taken_and_waited_for_before_any_worker() {
    let region = fresh_region();
    db_instance(region, "fx-db").await;
    let r = run(region, "snap-ok", json!({"instance": "fx-db"})).await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    // RDS answered "creating" first: the run waited, then went on.
    assert!(
        r.finished.visited(State::WaitSnapshot) >= 1,
        "{:?}",
        r.finished.path
    );
    let path = &r.finished.path;
    let snap = path
        .iter()
        .position(|s| *s == State::SnapshotReady)
        .unwrap();
    let launch = path.iter().position(|s| *s == State::LaunchWorker).unwrap();
    assert!(snap < launch, "the snapshot before the launch: {path:?}");

    let named = &r.finished.report["snapshot"];
    assert_eq!(named["status"], "available", "{named}");
    assert_eq!(named["source"], "fx-db");
    let id = named["identifier"].as_str().unwrap();
    assert!(id.starts_with("ephemera-snap-ok-"), "{id}");
    let found = clients(region)
        .rds
        .describe_db_snapshots()
        .db_snapshot_identifier(id)
        .send()
        .await
        .unwrap();
    let s = &found.db_snapshots()[0];
    assert_eq!(s.db_instance_identifier(), Some("fx-db"));
    let tags: Vec<(&str, &str)> = s
        .tag_list()
        .iter()
        .filter_map(|t: &Tag| Some((t.key()?, t.value()?)))
        .collect();
    assert!(tags.contains(&("ephemera:run", "snap-ok")), "{tags:?}");
    assert!(
        r.emails[0]
            .body
            .contains(&format!("Snapshot before writing: {id}")),
        "{}",
        r.emails[0].body
    );
}

#[tokio::test]
async fn a_snapshot_that_cannot_be_taken_fails_the_run_with_nothing_launched() {
    let region = fresh_region();
    let r = run(region, "snap-missing", json!({"instance": "no-such-db"})).await;
    assert_eq!(r.finished.status, "FAILED", "{:?}", r.finished);
    assert_eq!(
        r.finished.error.as_deref(),
        Some("Ephemera.SnapshotFailed"),
        "{:?}",
        r.finished
    );
    let cause = r.finished.cause.as_deref().unwrap_or_default();
    assert!(cause.contains("database.snapshot_before"), "{cause}");
    assert!(cause.contains("no worker was launched"), "{cause}");
    assert_eq!(
        r.finished.visited(State::Workers),
        0,
        "{:?}",
        r.finished.path
    );
    assert!(r.instances.is_empty(), "{:?}", r.instances);
    assert_eq!(r.emails.len(), 1);
    assert!(r.emails[0].subject.contains(": FAILED $"));
}

#[tokio::test]
async fn a_retried_request_finds_its_snapshot_and_the_role_reaches_only_its_own() {
    let region = fresh_region();
    db_instance(region, "fx-db").await;
    let net = fixtures::network(&clients(region)).await;
    let mut spec = fixtures::runspec("snap-retry", &net, None);
    // An hour-long snapshot polled every second (the fixture's boot poll) could outgrow the
    // execution history; ten minutes cannot.
    spec["database"] =
        json!({"snapshot_before": {"instance": "fx-db"}, "snapshot_timeout_seconds": 600});
    let execution = ephemera_tests::deployed::execution(region, "snap-retry");
    let role = function_clients(region, Function::SnapshotDatabase.name());
    let settings = Settings::default();
    let call = || {
        invoke(
            &role,
            &settings,
            Function::SnapshotDatabase,
            json!({"run": spec, "execution": execution}),
        )
    };
    let first: Value = call().await.unwrap();
    assert_eq!(first["verdict"], "creating", "{first}");
    // A retried first call (a Lambda timeout): CreateDBSnapshot answers that the snapshot
    // exists, and the handler follows that one.
    let again: Value = call().await.unwrap();
    assert_eq!(again["identifier"], first["identifier"]);
    // The template's role may not read other snapshots.
    let other = role
        .rds
        .describe_db_snapshots()
        .db_snapshot_identifier("someone-elses")
        .send()
        .await
        .unwrap_err();
    let text = format!("{}", aws_sdk_rds::error::DisplayErrorContext(&other));
    assert!(text.contains("AccessDenied"), "{text}");
}

/// A snapshot made before this run: ephemera's own, taken by `stack` (tagged as such), or the
/// operator's (None).
async fn earlier_snapshot(region: &str, id: &str, stack: Option<&str>) {
    let mut req = clients(region)
        .rds
        .create_db_snapshot()
        .db_instance_identifier("fx-db")
        .db_snapshot_identifier(id);
    if let Some(stack) = stack {
        req = req
            .tags(Tag::builder().key("ephemera:managed").value("true").build())
            .tags(Tag::builder().key("ephemera:stack").value(stack).build());
    }
    req.send().await.expect("CreateDBSnapshot");
}

/// RDS refuses to snapshot a DB instance that is not `available` (InvalidDBInstanceState:
/// starting, modifying, backing up): the run asks again at each poll instead of failing. After
/// its outputs verified, ephemera's older snapshots of the source beyond
/// `database.keep_snapshots` are deleted, the newest kept, the operator's own never touched
/// (the template's role may delete only snapshots tagged as ephemera's).
#[tokio::test]
async fn a_busy_source_is_waited_for_and_older_snapshots_are_pruned_after_a_verified_run() {
    let region = fresh_region();
    db_instance(region, "fx-db").await;
    // Oldest first, a second apart (RDS dates snapshots to the second). Another stack that
    // snapshots the same database: its snapshots, however old, are its own to prune.
    let ours = Some(ephemera_tests::iam::STACK);
    for (id, stack) in [
        ("ephemera-other-stack-1", Some("another-stack")),
        ("ephemera-old-1", ours),
        ("ephemera-old-2", ours),
        ("nightly-backup", None),
        ("ephemera-old-3", ours),
    ] {
        earlier_snapshot(region, id, stack).await;
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    ephemera_tests::harness().door.add_fault(
        ephemera_tests::FaultRule::always(
            region,
            "CreateDBSnapshot",
            "InvalidDBInstanceState",
            400,
        )
        .times(2),
    );
    let run_id = "snap-prune";
    let report = json!({"run_id": run_id, "partitions_done": 2, "partitions_failed": 0,
                        "rows_in": 1000, "rows_out": 1000});
    let r = e2e::scenario(region, run_id, Behaviour::Succeed(report), |spec| {
        spec["database"] = json!({"snapshot_before": {"instance": "fx-db"},
                                  "snapshot_timeout_seconds": 600, "keep_snapshots": 2});
    })
    .await;
    assert_eq!(r.finished.status, "SUCCEEDED", "{:?}", r.finished);
    let fired = ephemera_tests::harness().door.faults_fired_in(region);
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert!(
        r.finished.visited(State::WaitSnapshot) >= 3,
        "{:?}",
        r.finished.path
    );

    let named = &r.finished.report["snapshot"];
    let id = named["identifier"].as_str().unwrap().to_string();
    assert_eq!(
        named["pruned"]["deleted"],
        json!(["ephemera-old-2", "ephemera-old-1"]),
        "{named}"
    );
    let left = clients(region)
        .rds
        .describe_db_snapshots()
        .db_instance_identifier("fx-db")
        .snapshot_type("manual")
        .send()
        .await
        .unwrap();
    let mut left: Vec<String> = left
        .db_snapshots()
        .iter()
        .filter_map(|s| s.db_snapshot_identifier().map(str::to_string))
        .collect();
    left.sort();
    let mut expected = vec![
        "ephemera-old-3".to_string(),
        id.clone(),
        "nightly-backup".to_string(),
        "ephemera-other-stack-1".to_string(),
    ];
    expected.sort();
    assert_eq!(left, expected);
    // Nor could the role delete it if the code tried: its condition names the stack's tag.
    let refused = function_clients(region, Function::SnapshotDatabase.name())
        .rds
        .delete_db_snapshot()
        .db_snapshot_identifier("ephemera-other-stack-1")
        .send()
        .await
        .unwrap_err();
    let text = format!("{}", aws_sdk_rds::error::DisplayErrorContext(&refused));
    assert!(text.contains("AccessDenied"), "{text}");
    assert!(
        r.emails[0].body.contains(
            "older snapshots deleted (database.keep_snapshots = 2): ephemera-old-2, ephemera-old-1"
        ),
        "{}",
        r.emails[0].body
    );
}

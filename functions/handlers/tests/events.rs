//! The sample events under `events/` stay valid inputs of their handlers.

use ephemera_core::admission;
use ephemera_functions::handlers::{
    health_check, launch_worker, quota_check, snapshot_database, terminate_report,
    verify_completion,
};

fn event(name: &str) -> serde_json::Value {
    let path = format!("{}/../../events/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).expect(&path)
}

#[test]
fn sample_events_parse() {
    admission::parse(&event("runspec")).expect("events/runspec.json is a valid RunSpec");
    let q: quota_check::Input = serde_json::from_value(event("quota-check")).unwrap();
    admission::parse(&q.run).unwrap();
    // The states after CheckQuota read the RunSpec it accepted: each sample's is valid too.
    let s: snapshot_database::Input = serde_json::from_value(event("snapshot-database")).unwrap();
    admission::validate(&s.run).unwrap();
    assert!(s.run.database.snapshot_before.is_some());
    let l: launch_worker::Input = serde_json::from_value(event("launch-worker")).unwrap();
    admission::validate(&l.run).unwrap();
    let h: health_check::Input = serde_json::from_value(event("health-check")).unwrap();
    admission::validate(&h.run).unwrap();
    let v: verify_completion::Input = serde_json::from_value(event("verify-completion")).unwrap();
    admission::validate(&v.run).unwrap();
    let t: terminate_report::Input =
        serde_json::from_value(event("terminate-with-cost-report")).unwrap();
    admission::validate(&t.run).unwrap();
}

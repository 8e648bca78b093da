//! The state machine's states are one list (`ephemera_contract::State`), and the RunSpec is
//! validated once: by CheckQuota, the one state every path to a state that acts on it passes.

use std::collections::{BTreeSet, VecDeque};

use ephemera_core::State;
use serde_json::{Map, Value};

const ASL: &str = include_str!("../../../state-machines/ephemeral-worker.asl.json");

fn asl() -> Value {
    serde_json::from_str(ASL).unwrap()
}

/// Every state's name with its definition, the Map's own states after the Map, in file order.
fn states(machine: &Value, out: &mut Vec<(String, Value)>) {
    for (name, s) in machine["States"].as_object().unwrap() {
        out.push((name.clone(), s.clone()));
        if let Some(inner) = s.get("ItemProcessor").or_else(|| s.get("Iterator")) {
            states(inner, out);
        }
    }
}

#[test]
fn the_asl_has_exactly_the_states_the_code_names() {
    let mut found = vec![];
    states(&asl(), &mut found);
    let asl: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    let code: Vec<&str> = State::ALL.iter().map(|s| s.name()).collect();
    assert_eq!(
        asl, code,
        "ephemera_contract::State must list the ASL's states, in its order"
    );
}

/// Where a state goes next: Next, a Choice's rules and Default, and its Catchers; for
/// `success_blocked`, only where it goes when it fails.
fn successors(s: &Map<String, Value>, success_blocked: bool) -> Vec<String> {
    let mut next = vec![];
    if !success_blocked {
        next.extend(s.get("Next").and_then(Value::as_str).map(str::to_string));
        next.extend(s.get("Default").and_then(Value::as_str).map(str::to_string));
        for rule in s
            .get("Choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            next.extend(rule["Next"].as_str().map(str::to_string));
        }
    }
    for c in s
        .get("Catch")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        next.extend(c["Next"].as_str().map(str::to_string));
    }
    next
}

/// Whether a state hands the RunSpec (`$.run`) to what it runs.
fn reads_the_runspec(s: &Value) -> bool {
    let args = s
        .get("Parameters")
        .or_else(|| s.get("ItemSelector"))
        .cloned()
        .unwrap_or(Value::Null);
    args.to_string().contains("\"$.run\"")
}

#[test]
fn every_state_that_acts_on_the_runspec_comes_after_check_quota_accepted_it() {
    let machine = asl();
    let top = machine["States"].as_object().unwrap();
    // What the run reaches while CheckQuota has not returned: its failures only.
    let mut seen = BTreeSet::new();
    let mut queue = VecDeque::from([machine["StartAt"].as_str().unwrap().to_string()]);
    while let Some(name) = queue.pop_front() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let s = top[&name].as_object().unwrap();
        let blocked = name == State::CheckQuota.name();
        queue.extend(successors(s, blocked));
    }
    let before: Vec<&String> = seen
        .iter()
        .filter(|n| reads_the_runspec(&top[n.as_str()]))
        .collect();
    // Cleanup reads it to find and terminate what the run started (nothing yet, on these
    // paths) and never acts on a rule CheckQuota checks; TellRefusal reads the refused one's
    // run_id and topic to tell someone.
    assert_eq!(
        before,
        vec![
            State::CheckQuota.name(),
            State::Cleanup.name(),
            State::TellRefusal.name()
        ],
        "states that read $.run before CheckQuota accepted it"
    );
    // The check is not vacuous: the states that launch and snapshot read it, after.
    for later in [
        State::SnapshotDatabase,
        State::Workers,
        State::VerifyCompletion,
    ] {
        assert!(reads_the_runspec(&top[later.name()]), "{later}");
        assert!(!seen.contains(later.name()), "{later}");
    }
    // CheckQuota's only way on with an invalid RunSpec is RejectRunSpec, which fails the run.
    let catch = top[State::CheckQuota.name()]["Catch"][0].clone();
    assert_eq!(
        catch["ErrorEquals"][0],
        ephemera_core::names::INVALID_RUNSPEC
    );
    assert_eq!(catch["Next"], State::TellRefusal.name());
    let tell = &top[State::TellRefusal.name()];
    assert_eq!(tell["Next"], State::RejectRunSpec.name());
    assert_eq!(tell["Catch"][0]["Next"], State::RejectRunSpecUntold.name());
    for fail in [State::RejectRunSpec, State::RejectRunSpecUntold] {
        assert_eq!(top[fail.name()]["Type"], "Fail");
    }
}

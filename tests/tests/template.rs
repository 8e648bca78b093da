//! The template deploys the very ASL file the end-to-end tests execute, with the same
//! substitutions.

use std::collections::BTreeSet;

use ephemera_tests::e2e;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn template_and_tests_substitute_the_same_names_into_the_same_file() {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    assert!(template.contains("DefinitionUri: state-machines/ephemeral-worker.asl.json"));
    assert!(e2e::asl_path().ends_with("state-machines/ephemeral-worker.asl.json"));

    // Keys under DefinitionSubstitutions (the lines indented below it).
    let mut in_block = false;
    let mut indent = 0;
    let mut from_template = BTreeSet::new();
    for line in template.lines() {
        let trimmed = line.trim_start();
        let here = line.len() - trimmed.len();
        if trimmed.starts_with("DefinitionSubstitutions:") {
            in_block = true;
            indent = here;
            continue;
        }
        if in_block {
            if trimmed.starts_with('#') {
                continue;
            }
            if here <= indent || trimmed.is_empty() {
                break;
            }
            from_template.insert(trimmed.split(':').next().unwrap().to_string());
        }
    }
    let from_tests: BTreeSet<String> = e2e::substitutions("us-east-1")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(from_template, from_tests);

    let asl = std::fs::read_to_string(e2e::asl_path()).unwrap();
    let placeholders: BTreeSet<String> = asl
        .split("${")
        .skip(1)
        .map(|s| s.split('}').next().unwrap().to_string())
        .collect();
    assert_eq!(placeholders, from_tests);
    // The definition is valid JSON once substituted.
    let _: serde_json::Value = serde_json::from_str(&e2e::definition("us-east-1")).unwrap();
}

#[test]
fn every_lambda_of_the_template_is_a_binary_of_the_functions_crate() {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let binaries: BTreeSet<String> = template
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Binary: "))
        .map(str::to_string)
        .collect();
    let functions: BTreeSet<String> = ephemera_functions::Function::ALL
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    assert_eq!(binaries, functions);
    for f in &functions {
        assert!(
            root()
                .join(format!("functions/handlers/src/bin/{f}.rs"))
                .exists(),
            "{f}"
        );
    }
}

/// The template and the ASL cannot import the contract: they spell its tag keys, SSM paths and
/// log group, and must spell them as `ephemera_contract` defines them.
#[test]
fn the_template_and_the_asl_spell_the_contracts_names() {
    use ephemera_core::contract::RunParameters;
    use ephemera_core::tags;

    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let asl = std::fs::read_to_string(e2e::asl_path()).unwrap();
    let keys = [
        tags::MANAGED,
        tags::RUN,
        tags::EXECUTION,
        tags::ATTEMPT,
        tags::DEADLINE,
        tags::READER,
    ];
    let mut spelt = BTreeSet::new();
    for text in [&template, &asl] {
        for (at, _) in text.match_indices("ephemera:") {
            let name: String = text[at + "ephemera:".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            // "ephemera: run one heavy batch job" is prose, not a key.
            if !name.is_empty() {
                spelt.insert(format!("ephemera:{name}"));
            }
        }
    }
    let unknown: Vec<&String> = spelt
        .iter()
        .filter(|k| !keys.contains(&k.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "tag keys not in the contract: {unknown:?}"
    );
    // The IAM conditions and the token's reader tag are what the walk must have seen.
    for k in [tags::MANAGED, tags::RUN, tags::READER] {
        assert!(spelt.contains(k), "{k} not found in {spelt:?}");
    }

    // Every SSM parameter the policies name is one of a run's parameters, for any run and instance.
    let any_run = RunParameters::of_run("*");
    let known = [any_run.started("*"), any_run.task_token("*")];
    let mut named = 0;
    for (at, _) in template.match_indices(":parameter/") {
        let name: String = template[at + ":parameter".len()..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        // AWS's public parameters (the AMI aliases) are not ephemera's.
        if name.starts_with("/aws/") {
            continue;
        }
        assert!(known.contains(&name), "{name}: not one of {known:?}");
        named += 1;
    }
    assert!(named > 0, "no SSM parameter found in the template");

    // The worker log group is the stack's, as the CLI and the harness name it.
    let group = ephemera_core::contract::logs::stack_worker_log_group("${AWS::StackName}");
    assert!(
        template.contains(&format!("LogGroupName: !Sub {group}\n")),
        "the template's worker log group is not {group}"
    );
}

/// The Choice states compare the run document's typed verdicts by their serialized names: each
/// value the ASL compares must be one the Rust type writes.
#[test]
fn the_asls_choices_compare_values_the_handlers_write() {
    use ephemera_core::quota::QuotaVerdict;
    use ephemera_core::rundoc::HealthVerdict;
    let asl: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("state-machines/ephemeral-worker.asl.json")).unwrap(),
    )
    .unwrap();
    let written = |v: serde_json::Value| v.as_str().unwrap().to_string();
    let health: BTreeSet<String> = [
        HealthVerdict::Healthy,
        HealthVerdict::Booting,
        HealthVerdict::Silent,
    ]
    .into_iter()
    .map(|v| written(serde_json::to_value(v).unwrap()))
    .collect();
    let quota: BTreeSet<String> = [
        QuotaVerdict::Enough,
        QuotaVerdict::Waiting,
        QuotaVerdict::Denied,
        QuotaVerdict::DeadlinePassed,
    ]
    .into_iter()
    .map(|v| written(serde_json::to_value(v).unwrap()))
    .collect();
    let mut compared = 0;
    for state in asl["States"].as_object().unwrap().values() {
        for choice in state["Choices"].as_array().into_iter().flatten() {
            let (Some(var), Some(value)) =
                (choice["Variable"].as_str(), choice["StringEquals"].as_str())
            else {
                continue;
            };
            let allowed = match var {
                "$.health.verdict" => &health,
                "$.quota.verdict" => &quota,
                _ => continue,
            };
            assert!(
                allowed.contains(value),
                "{var} == {value:?}: written are {allowed:?}"
            );
            compared += 1;
        }
    }
    assert!(compared >= 2, "the verdict choices were found");
}

/// Lambda caps a function's name at 64 characters
/// (https://docs.aws.amazon.com/lambda/latest/api/API_CreateFunction.html#lambda-CreateFunction-request-FunctionName),
/// and the template names each `${AWS::StackName}-<function>`: a longer stack name fails the
/// deploy part way. CloudFormation's Rules cannot measure a string, so `make deploy` checks the
/// name first (`make stack-name`), with the limit the template's longest name leaves.
#[test]
fn make_deploy_refuses_a_stack_name_its_functions_could_not_carry() {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let longest = template
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("FunctionName: !Sub ${AWS::StackName}")
        })
        .map(str::len)
        .max()
        .expect("the functions are named after the stack");
    let max = 64 - longest;
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    assert!(
        makefile.contains(&format!("STACK_NAME_MAX := {max}\n")),
        "the Makefile's limit is not 64 - {longest}"
    );
    let check = |name: &str| {
        std::process::Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(root())
            .arg("stack-name")
            .arg(format!("STACK={name}"))
            .output()
            .expect("make")
    };
    assert!(check(&"s".repeat(max)).status.success());
    let refused = check(&"s".repeat(max + 1));
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains(&format!("is {} characters; at most {max}", max + 1)),
        "{said}"
    );
}

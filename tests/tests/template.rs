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

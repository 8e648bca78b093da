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
        tags::STACK,
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
    // Besides them: every run's parameters at once (the Deny that keeps the secrets' grant off
    // them) and the user's SecureStrings under the stack's secret prefix (job.secrets).
    let any_run = RunParameters::of_run("*");
    let known = [
        any_run.started("*"),
        any_run.task_token("*"),
        format!("{}/*", RunParameters::ROOT),
        "/${DatabaseSecretPrefix}*".to_string(),
        any_run.run_session("*"),
    ];
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

/// The template, CloudFormation's short tags (`!Ref X`) read as `{"!Ref": X}`.
fn template_yaml() -> serde_json::Value {
    fn plain(v: serde_yaml_ng::Value) -> serde_json::Value {
        use serde_yaml_ng::Value as Y;
        match v {
            Y::Tagged(t) => {
                let tag = format!("!{}", t.tag.to_string().trim_start_matches('!'));
                serde_json::json!({ tag: plain(t.value) })
            }
            Y::Mapping(m) => serde_json::Value::Object(
                m.into_iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_string(), plain(v))))
                    .collect(),
            ),
            Y::Sequence(s) => s.into_iter().map(plain).collect(),
            other => serde_json::to_value(other).unwrap_or_default(),
        }
    }
    let text = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    plain(serde_yaml_ng::from_str(&text).unwrap())
}

/// Every alarm watches a metric that something sends: ephemera's own with the names, units'
/// source and dimensions the functions emit (functions/core/src/metrics.rs), or the Errors of
/// the template's own functions; each notifies the alarm topic, and the dashboard names only
/// metrics that exist.
#[test]
fn the_alarms_and_the_dashboard_watch_metrics_the_functions_send() {
    use ephemera_core::metrics::{ALL, NAMESPACE};
    let t = template_yaml();
    let resources = t["Resources"].as_object().unwrap();
    let of_type = |ty: &str| -> Vec<(&String, &serde_json::Value)> {
        resources.iter().filter(|(_, r)| r["Type"] == ty).collect()
    };
    let functions: BTreeSet<&str> = of_type("AWS::Serverless::Function")
        .into_iter()
        .map(|(id, _)| id.as_str())
        .collect();
    let alarms = of_type("AWS::CloudWatch::Alarm");
    assert!(alarms.len() >= 3, "{alarms:?}");
    let mut watched_functions = BTreeSet::new();
    let mut watched_ours = BTreeSet::new();
    for (id, alarm) in &alarms {
        let p = &alarm["Properties"];
        assert_eq!(
            p["AlarmActions"],
            serde_json::json!([{"!Ref": "AlarmTopic"}]),
            "{id}"
        );
        assert_eq!(p["TreatMissingData"], "notBreaching", "{id}");
        if let Some(name) = p["MetricName"].as_str() {
            assert_eq!(p["Namespace"], NAMESPACE, "{id}");
            let (_, _, source) = ALL
                .iter()
                .find(|(n, _, _)| *n == name)
                .unwrap_or_else(|| panic!("{id}: no function sends {name}"));
            let dims: Vec<&str> = p["Dimensions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["Name"].as_str().unwrap())
                .collect();
            // An alarm must name every dimension the metric is sent with, or it sees nothing.
            assert_eq!(dims, source.dimensions(), "{id}");
            watched_ours.insert(name);
            continue;
        }
        let metrics = p["Metrics"].as_array().expect("a metric or metric math");
        assert!(
            metrics.len() <= 10,
            "{id}: CloudWatch allows 10 metrics an alarm"
        );
        let returned: Vec<_> = metrics.iter().filter(|m| m["ReturnData"] == true).collect();
        assert_eq!(returned.len(), 1, "{id}: an alarm returns one series");
        let expression = returned[0]["Expression"].as_str().unwrap();
        for m in metrics.iter().filter(|m| m.get("MetricStat").is_some()) {
            let metric = &m["MetricStat"]["Metric"];
            assert_eq!(metric["Namespace"], "AWS/Lambda", "{id}");
            assert_eq!(metric["MetricName"], "Errors", "{id}");
            let function = metric["Dimensions"][0]["Value"]["!Ref"].as_str().unwrap();
            assert!(functions.contains(function), "{id}: {function}");
            assert!(
                expression.contains(m["Id"].as_str().unwrap()),
                "{id}: {expression}"
            );
            watched_functions.insert(function);
        }
    }
    assert_eq!(watched_functions, functions, "every function's errors");
    assert_eq!(
        watched_ours,
        BTreeSet::from(["SweptInstances", "CleanupFailures"])
    );

    let dashboards = of_type("AWS::CloudWatch::Dashboard");
    assert_eq!(dashboards.len(), 1);
    let body = dashboards[0].1["Properties"]["DashboardBody"]["!Sub"]
        .as_str()
        .unwrap();
    // Valid JSON once CloudFormation substitutes its references.
    let mut substituted = body.to_string();
    for (name, value) in [
        ("${AWS::Region}", "us-east-1"),
        ("${AWS::StackName}", "ephemera"),
    ] {
        substituted = substituted.replace(name, value);
    }
    for (id, _) in &alarms {
        substituted = substituted.replace(&format!("${{{id}.Arn}}"), "arn:alarm");
    }
    assert!(!substituted.contains("${"), "an unknown reference");
    let parsed: serde_json::Value = serde_json::from_str(&substituted).unwrap();
    let named: BTreeSet<String> = substituted
        .split("MetricName=\\\"")
        .skip(1)
        .map(|s| s.split('\\').next().unwrap().to_string())
        .chain(
            parsed["widgets"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|w| {
                    w["properties"]["metrics"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .filter(|m| m[0] == NAMESPACE)
                .map(|m| m[1].as_str().unwrap().to_string()),
        )
        .collect();
    assert!(named.len() >= 8, "{named:?}");
    for name in &named {
        assert!(
            ALL.iter().any(|(n, _, _)| n == name),
            "{name} is sent by nothing"
        );
    }
    // Every environment the functions read it from names the stack.
    assert_eq!(
        t["Globals"]["Function"]["Environment"]["Variables"]["EPHEMERA_STACK"],
        serde_json::json!({"!Ref": "AWS::StackName"})
    );
}

/// The worker role reads `secret:${DatabaseSecretPrefix}*`: the parameter must not be empty
/// nor a bare word that other secrets' names start with. The pattern is a Java regex
/// (CloudFormation's); this one is in the subset Python's `re` reads the same.
#[test]
fn the_secret_prefix_is_a_non_empty_path() {
    let template: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(root().join("template.yaml")).unwrap())
            .unwrap();
    let p = &template["Parameters"]["DatabaseSecretPrefix"];
    let pattern = p["AllowedPattern"].as_str().expect("an AllowedPattern");
    let default = p["Default"].as_str().unwrap();
    let check = |value: &str| {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import re,sys; sys.exit(0 if re.fullmatch(sys.argv[1], sys.argv[2]) else 1)",
                pattern,
                value,
            ])
            .status()
            .expect("python3 runs");
        out.success()
    };
    for ok in [default, "team/fx/", "a.b@c/"] {
        assert!(check(ok), "{ok:?} should be allowed by {pattern}");
    }
    for bad in ["", "/", "*", "ephemera", "ephemera/*", "a//"] {
        assert!(!check(bad), "{bad:?} should be refused by {pattern}");
    }
}

/// What the run's cap counts an attempt for (`ephemera_core::budget`) is the template's: the
/// sweeper's schedule (an instance past its deadline is gone within one interval), and each
/// function's memory and timeout (an invocation is billed at most that).
#[test]
fn the_caps_worst_case_counts_the_templates_sweeper_interval_and_lambda_limits() {
    use ephemera_core::budget;
    let t = template_yaml();
    let r = &t["Resources"];
    let schedule = r["SweeperFunction"]["Properties"]["Events"]
        .as_object()
        .unwrap()
        .values()
        .map(|e| e["Properties"]["ScheduleExpression"].as_str().unwrap())
        .collect::<Vec<_>>();
    let interval = ephemera_core::sweep::SWEEPER_INTERVAL_SECONDS;
    assert_eq!(schedule, [format!("rate({} minutes)", interval / 60)]);

    let globals = &t["Globals"]["Function"];
    let memory = globals["MemorySize"].as_f64().unwrap();
    assert_eq!(memory / 1024.0, budget::LAMBDA_MEMORY_GB);
    let timeout = |name: &str| {
        let f = &r[name]["Properties"];
        assert!(
            f.get("MemorySize").is_none(),
            "{name} has a MemorySize of its own"
        );
        f["Timeout"]
            .as_f64()
            .or(globals["Timeout"].as_f64())
            .unwrap()
    };
    assert_eq!(
        timeout("HealthCheckFunction"),
        budget::HEALTH_CHECK_TIMEOUT_SECONDS
    );
    assert_eq!(
        timeout("LaunchWorkerFunction"),
        budget::LAUNCH_WORKER_TIMEOUT_SECONDS
    );
    assert_eq!(
        timeout("TerminateWithCostReportFunction"),
        budget::TERMINATE_TIMEOUT_SECONDS
    );
    assert_eq!(
        timeout("QuotaCheckFunction"),
        budget::QUOTA_CHECK_TIMEOUT_SECONDS
    );
    // Snapshot polls are counted as quota polls, and the run's other invocations (verify,
    // prune) at the report's timeout: none may be longer.
    assert!(timeout("SnapshotDatabaseFunction") <= budget::QUOTA_CHECK_TIMEOUT_SECONDS);
    assert!(timeout("VerifyCompletionFunction") <= budget::TERMINATE_TIMEOUT_SECONDS);
}

/// The quota-check role may read and ask to raise exactly the EC2 vCPU quotas the catalog
/// draws runs on, by their ARNs (never `ec2/L-*`, which would grant every EC2 quota); the
/// request bounds' parameters reach the function with the defaults `quota_request` states.
#[test]
fn the_quota_check_role_asks_only_for_the_catalogs_vcpu_quotas() {
    use ephemera_core::quota_request;
    let t = template_yaml();
    let f = &t["Resources"]["QuotaCheckFunction"]["Properties"];
    let statements: Vec<&serde_json::Value> = f["Policies"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["Statement"].as_array().unwrap())
        .collect();
    let grants = |action: &str| -> Vec<String> {
        statements
            .iter()
            .filter(|s| {
                let a = &s["Action"];
                a.as_str() == Some(action)
                    || a.as_array()
                        .is_some_and(|l| l.iter().any(|x| x.as_str() == Some(action)))
            })
            .flat_map(|s| match &s["Resource"] {
                serde_json::Value::Array(l) => l.clone(),
                one => vec![one.clone()],
            })
            .map(|r| {
                r.get("!Sub")
                    .or(Some(&r))
                    .and_then(|v| v.as_str())
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let prefix = "arn:${AWS::Partition}:servicequotas:${AWS::Region}:${AWS::AccountId}:ec2/";
    for action in [
        "servicequotas:RequestServiceQuotaIncrease",
        "servicequotas:GetServiceQuota",
    ] {
        let mut codes: Vec<String> = grants(action)
            .iter()
            .map(|r| {
                r.strip_prefix(prefix)
                    .unwrap_or_else(|| panic!("{action} on {r}, not an EC2 quota's ARN"))
                    .to_string()
            })
            .collect();
        codes.sort();
        let catalog: Vec<String> = ephemera_core::catalog::vcpu_quota_codes()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(codes, catalog, "{action}");
    }

    let params = &t["Parameters"];
    assert_eq!(
        params["QuotaDenialCooloffHours"]["Default"].as_u64(),
        Some(quota_request::DEFAULT_COOLOFF_HOURS as u64)
    );
    assert_eq!(
        params["MaxQuotaRequestVcpus"]["Default"].as_u64(),
        Some(quota_request::DEFAULT_MAX_REQUEST_VCPUS as u64)
    );
    let env = &f["Environment"]["Variables"];
    assert_eq!(
        env["EPHEMERA_QUOTA_DENIAL_COOLOFF_HOURS"],
        serde_json::json!({"!Ref": "QuotaDenialCooloffHours"})
    );
    assert_eq!(
        env["EPHEMERA_MAX_QUOTA_REQUEST_VCPUS"],
        serde_json::json!({"!Ref": "MaxQuotaRequestVcpus"})
    );
}

/// quota-check ends within its Timeout: its Price List deadline leaves half a minute for the
/// rest, and CheckQuota retries a Lambda timeout (Step Functions reports an unhandled Lambda
/// error, a timeout among them, as `Lambda.Unknown`
/// (<https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html>);
/// newer runtimes' `Sandbox.Timedout` and a Task's own `States.Timeout` alike) a bounded number
/// of times; a retry follows the request the timed-out check may have filed.
#[test]
fn quota_check_prices_within_its_timeout_and_a_timeout_is_retried() {
    use ephemera_functions::handlers::quota_check::PRICING_WITHIN;
    let t = template_yaml();
    let f = &t["Resources"]["QuotaCheckFunction"]["Properties"];
    let timeout = f["Timeout"]
        .as_f64()
        .or(t["Globals"]["Function"]["Timeout"].as_f64())
        .unwrap();
    assert!(
        PRICING_WITHIN.as_secs_f64() + 30.0 <= timeout,
        "{PRICING_WITHIN:?} of pricing leaves too little of a {timeout} s timeout"
    );
    let asl: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("state-machines/ephemeral-worker.asl.json")).unwrap(),
    )
    .unwrap();
    let retry = asl["States"]["CheckQuota"]["Retry"].as_array().unwrap();
    for error in ["Lambda.Unknown", "Sandbox.Timedout", "States.Timeout"] {
        let r = retry
            .iter()
            .find(|r| {
                r["ErrorEquals"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e.as_str() == Some(error))
            })
            .unwrap_or_else(|| panic!("CheckQuota does not retry {error}"));
        let attempts = r["MaxAttempts"].as_u64().unwrap();
        assert!((1..=3).contains(&attempts), "{error}: {attempts} attempts");
    }
}

/// The rule that brings terminate-with-cost-report to a stopped run matches what Step Functions
/// sends for one (https://docs.aws.amazon.com/step-functions/latest/dg/cw-events.html): the
/// status change of the stack's own state machine to ABORTED (`ephemera cancel`, the console,
/// StopExecution) or TIMED_OUT (past its TimeoutSeconds), the detail type the handler reads
/// (`stopped::DETAIL_TYPE`). The front door delivers that event when a test plays the rule.
#[test]
fn a_stopped_or_timed_out_execution_brings_the_teardown() {
    let t = template_yaml();
    let (name, function) = t["Resources"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, r)| {
            r["Properties"]["FunctionName"]["!Sub"]
                .as_str()
                .is_some_and(|n| n.ends_with("-terminate-with-cost-report"))
        })
        .expect("terminate-with-cost-report in the template");
    let rule = &function["Properties"]["Events"]["ExecutionStopped"];
    assert_eq!(rule["Type"], "EventBridgeRule", "{name}: {rule}");
    let pattern = &rule["Properties"]["Pattern"];
    assert_eq!(pattern["source"], serde_json::json!(["aws.states"]));
    assert_eq!(
        pattern["detail-type"],
        serde_json::json!([ephemera_core::stopped::DETAIL_TYPE])
    );
    let statuses: Vec<&str> = pattern["detail"]["status"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(statuses, ["ABORTED", "TIMED_OUT"]);
    // Only its own stack's runs: another stack's stopped runs are that stack's to tear down.
    assert_eq!(
        pattern["detail"]["stateMachineArn"],
        serde_json::json!([{"!Ref": "WorkerStateMachine"}])
    );
}

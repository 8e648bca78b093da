//! The run's own session (issue 34 part 1), end to end: launch-worker vends the instance its
//! run's session of the run role into a parameter of the instance's own, the real worker reads
//! it and signs every S3 and CloudWatch Logs call of a job with it (the instance role's S3 and
//! log grants are taken away in this test's region, as the template will take them), and
//! renews it from itself when it nears its end (the front door's sessions last 30 s here).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ephemera_tests::e2e::State;
use ephemera_tests::iam::{worker_log_group, Principal, EXPORT_BUCKET};
use ephemera_tests::{clients, e2e, fixtures, fresh_region, harness};
use serde_json::json;

async fn export_bucket(s3: &aws_sdk_s3::Client, region: &str) {
    fixtures::bucket(s3, EXPORT_BUCKET, region).await;
}

/// The template's policies with the instance role's S3 and CloudWatch Logs grants taken away:
/// whatever of those the worker still signs with its instance role is refused.
fn instance_role_without_s3_or_logs() -> ephemera_tests::iam::Policies {
    let mut p = harness().door.template_policies();
    let worker = p.by_principal.get_mut(&Principal::Worker).unwrap();
    worker.retain(|s| {
        !s.actions.iter().any(|a| {
            a.starts_with("s3:") || a.starts_with("logs:") || a.starts_with("secretsmanager:")
        })
    });
    p
}

#[tokio::test]
async fn a_job_runs_as_its_own_user_on_its_runs_vended_session_and_cannot_reach_its_token() {
    // The worker runs as root on the instance (the user data's service), as it must to run the
    // job as another user; so does this test (CI runs as root, as podman's tests need too).
    assert!(
        nix_root(),
        "this test runs the job as another user: run it as root, as CI does"
    );
    // A user of this test's own (no other process runs as it: its leftovers are killed by id).
    let job_user = (
        61_000 + std::process::id() % 1000,
        61_000 + std::process::id() % 1000,
    );
    let region = fresh_region();
    let door = &harness().door;
    door.set_policies(region, instance_role_without_s3_or_logs());
    // Sessions of 30 s: renewed 10 s in (`agent::credentials::due`), so a job of 40 s outlives
    // the first session and its outputs go up with a renewed one.
    door.sessions_last(region, 30);
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&ephemera_tests::sdk_config(region));
    logs.create_log_group()
        .log_group_name(worker_log_group())
        .send()
        .await
        .unwrap();
    let machine = e2e::create_state_machine(region).await;
    export_bucket(&aws.s3, region).await;
    let run_id = "vended-session";
    // A secret of the job's, which only the run's session may read here.
    let secret_arn = aws_sdk_secretsmanager::Client::new(&ephemera_tests::sdk_config(region))
        .create_secret()
        .name(format!("ephemera/{run_id}/api"))
        .secret_string("vended-secret-81f3")
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let base = std::env::temp_dir().join(format!("ephemera-vended-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    // The job as an attacker would write it (shipped in its inputs), as its own user
    // (`--run-as`): it finds none of the worker's credentials, cannot read the agent's
    // environment; with the only credentials it has (its session, derived by the agent from
    // the run's with the job's policy) it writes in its run's scratch (`runs/<run>/job/`) and
    // nowhere else (not its run's manifest, not the agent's log stream), and is
    // refused the task token, SendTaskSuccess, the secrets (given to it by value) and a renewal
    // of its own. After the first session has ended (40 s of 30 s sessions) its copy still
    // works: the agent derived and wrote the next one.
    // Any instance's: a name under the run's parameters is refused before it is looked up.
    let token = format!("/ephemera/runs/{run_id}/task-token/i-0123456789abcdef0");
    let script = format!(
        r#"set -u
test "$API_KEY" = vended-secret-81f3 || exit 9
test "$(id -u)" = {uid} || exit 20
for v in AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_EC2_METADATA_SERVICE_ENDPOINT; do
  eval "test -z \"\${{$v:-}}\"" || {{ echo "inherited $v" >&2; exit 21; }}
done
if cat /proc/$PPID/environ > /dev/null 2>&1; then echo "read the agent's environment" >&2; exit 22; fi
signed() {{
  doc=$(sh -c "$(sed -n 's/^credential_process = //p' "$AWS_CONFIG_FILE")")
  field() {{ printf '%s' "$doc" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }}
  service=$1; shift
  curl -sS --aws-sigv4 "aws:amz:$AWS_REGION:$service" --user "$(field AccessKeyId):$(field SecretAccessKey)" \
    -H "x-amz-security-token: $(field SessionToken)" "$@"
}}
call() {{ signed "$1" -H "X-Amz-Target: $2" -H "Content-Type: application/x-amz-json-$3" -d "$4" "$AWS_ENDPOINT_URL/"; }}
put() {{ signed s3 -o /dev/null -w '%{{http_code}}' -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T input.txt "$AWS_ENDPOINT_URL/{bucket}/$1"; }}
test "$(put runs/{run_id}/job/own.txt)" = 200 || {{ echo "its scratch refused" >&2; exit 23; }}
test "$(put runs/{run_id}/worker-1/manifest.json)" = 403 || {{ echo "wrote its run's manifest" >&2; exit 31; }}
test "$(put runs/other-run/planted.txt)" = 403 || {{ echo "wrote under another run" >&2; exit 28; }}
call ssm AmazonSSM.GetParameter 1.1 '{{"Name":"{token}","WithDecryption":true}}' > token.out
grep -q AccessDenied token.out || {{ cat token.out >&2; exit 24; }}
call ssm AmazonSSM.GetParametersByPath 1.1 '{{"Path":"/ephemera/runs/{run_id}","Recursive":true,"WithDecryption":true}}' > listed.out
grep -q AccessDenied listed.out || {{ cat listed.out >&2; exit 27; }}
call logs Logs_20140328.PutLogEvents 1.1 '{{"logGroupName":"{group}","logStreamName":"{run_id}/1/i-0123456789abcdef0","logEvents":[{{"timestamp":1,"message":"heartbeat sent"}}]}}' > forged.out
grep -q AccessDenied forged.out || {{ cat forged.out >&2; exit 32; }}
call logs Logs_20140328.CreateLogStream 1.1 '{{"logGroupName":"{group}","logStreamName":"{run_id}/job/own"}}' > own.out
grep -q AccessDenied own.out || {{ cat own.out >&2; exit 33; }}
grep -qx "region = $AWS_REGION" "$AWS_CONFIG_FILE" || {{ echo "no region in its config" >&2; exit 34; }}
call states AWSStepFunctions.SendTaskSuccess 1.0 '{{"taskToken":"forged","output":"{{}}"}}' > sent.out
grep -q AccessDenied sent.out || {{ cat sent.out >&2; exit 25; }}
call secretsmanager secretsmanager.GetSecretValue 1.1 '{{"SecretId":"{secret}"}}' > secret.out
grep -q AccessDenied secret.out || {{ cat secret.out >&2; exit 29; }}
signed sts -H 'Content-Type: application/x-www-form-urlencoded' \
  -d 'Action=AssumeRole&Version=2011-06-15&RoleSessionName=mine&RoleArn={run_role}' "$AWS_ENDPOINT_URL/" > renewed.out
grep -q AccessDenied renewed.out || {{ cat renewed.out >&2; exit 30; }}
mkdir -p out; cat input.txt > out/copied.txt; echo 1 > "$EPHEMERA_CHECKPOINT/step"
sleep 40
test "$(put runs/{run_id}/job/later.txt)" = 200 || {{ echo "its renewed session refused" >&2; exit 26; }}
echo done > out/done.txt"#,
        bucket = EXPORT_BUCKET,
        group = worker_log_group(),
        run_role = ephemera_tests::iam::run_role_arn(),
        uid = job_user.0,
        secret = secret_arn,
        token = token,
    );
    // The job's secret by its ARN, as launch-worker adds it (`image::worker_args`); a
    // checkpoint every 10 s, so that the job's 40 s see saves under a renewed session too.
    let one = OneRun {
        region,
        machine: &machine,
        net: &net,
        topic: &inbox.topic_arn,
        base: &base,
        job_user,
        options: &["--checkpoint-every", "10"],
    };
    let (done, stderr) = one.run(run_id, &script, &[("API_KEY", &secret_arn)]).await;
    assert_eq!(done.status, "SUCCEEDED", "{done:?}\n{stderr}");
    assert_eq!(done.visited(State::Relaunch), 0, "{:?}", done.path);

    // The session launch-worker vended, tagged with the run, and at least one renewal the agent
    // made from it (role chaining: the tag came along).
    let sessions = door.sessions.of_run(run_id);
    let vended: Vec<_> = sessions.iter().filter(|s| !s.chained).collect();
    let renewed: Vec<_> = sessions.iter().filter(|s| s.chained).collect();
    assert_eq!(vended.len(), 1, "{sessions:?}");
    // The job's sessions: derived from the agent's with the job's narrower policy (no secret,
    // no renewal), at least twice (its first ended during the job).
    let for_job: Vec<_> = renewed
        .iter()
        .filter(|s| s.name.ends_with("-job"))
        .collect();
    assert!(for_job.len() >= 2, "{sessions:?}");
    for s in &for_job {
        let actions: Vec<&str> = s
            .policy
            .iter()
            .flatten()
            .flat_map(|st| st.actions.iter().map(String::as_str))
            .collect();
        assert!(
            !actions
                .iter()
                .any(|a| a.starts_with("sts:") || a.starts_with("secretsmanager:")),
            "{actions:?}"
        );
    }
    assert!(!renewed.is_empty(), "no renewal: {sessions:?}\n{stderr}");
    assert!(
        renewed
            .iter()
            .all(|s| s.transitive.contains("ephemera:run")),
        "{renewed:?}"
    );
    // Every renewal kept the session policy (a renewal without it would read the role's wider
    // inputs).
    assert!(renewed.iter().all(|s| s.policy.is_some()), "{renewed:?}");
    // Its outputs, stored with their manifest under the run's prefix: every S3 call the agent
    // made was the run session's, since the instance role may make none here.
    for key in ["copied.txt", "done.txt", "manifest.json"] {
        aws.s3
            .head_object()
            .bucket(EXPORT_BUCKET)
            .key(format!("runs/{run_id}/worker-1/{key}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{key}: {e:?}"));
    }
    // And no S3 or log call was tried with the instance role. (Its reads of the task token
    // before the state machine wrote it are refused, as AWS refuses them: the parameter has no
    // reader tag yet; the worker reads that as "not yet".)
    let refused: Vec<_> = door
        .denials_in(region)
        .into_iter()
        .filter(|d| d.principal == Principal::Worker)
        .filter(|d| {
            d.action.starts_with("s3:")
                || d.action.starts_with("logs:")
                || d.action.starts_with("secretsmanager:")
        })
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    // The job's tries, each refused by IAM as AWS refuses them: signed with the run's session.
    let denials = door.denials_in(region);
    for (action, resource) in [
        ("ssm:GetParameter", "task-token/"),
        ("ssm:GetParametersByPath", run_id),
        ("states:SendTaskSuccess", ""),
        (
            "secretsmanager:GetSecretValue",
            "ephemera/vended-session/api",
        ),
        ("sts:AssumeRole", "ephemera-run-role"),
        ("s3:PutObject", "runs/other-run/planted.txt"),
        ("s3:PutObject", "runs/vended-session/worker-1/manifest.json"),
        // A line in the agent's stream (a forged heartbeat), or a stream of its own: what the
        // job prints reaches the agent's capped stream, and nothing else of it CloudWatch Logs.
        ("logs:PutLogEvents", "log-stream:vended-session/1/"),
        (
            "logs:CreateLogStream",
            format!("log-group:{}:", worker_log_group()).as_str(),
        ),
    ] {
        assert!(
            denials.iter().any(|d| d.principal == Principal::Run
                && d.action == action
                && d.resource.contains(resource)),
            "{action} on {resource} not refused: {denials:?}"
        );
    }
    std::fs::remove_dir_all(&base).unwrap();
}

fn nix_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// One run of a job as launch-worker starts it: its inputs archive (`probe.sh` and
/// `input.txt`) put beside it, outside the run's prefix (the session's policy names it, so it
/// may read it), its execution started, the real worker run for its instance as the user data
/// runs it (`--run-session`, `--run-as`, its secrets by ARN), to its end (the worker exits 0).
struct OneRun<'a> {
    region: &'static str,
    machine: &'a str,
    net: &'a fixtures::Network,
    topic: &'a str,
    base: &'a std::path::Path,
    job_user: (u32, u32),
    /// The job's options beside its inputs, checkpoint and outputs.
    options: &'a [&'a str],
}

impl OneRun<'_> {
    async fn run(
        &self,
        run_id: &str,
        script: &str,
        secrets: &[(&str, &str)],
    ) -> (e2e::Finished, String) {
        let aws = clients(self.region);
        let inputs = format!("jobs/{run_id}/inputs.tar.gz");
        aws.s3
            .put_object()
            .bucket(EXPORT_BUCKET)
            .key(&inputs)
            .body(
                fixtures::tar_gz(&[
                    ("input.txt", &b"hello\n"[..]),
                    ("probe.sh", script.as_bytes()),
                ])
                .into(),
            )
            .send()
            .await
            .unwrap();
        let to = format!("s3://{EXPORT_BUCKET}/runs/{run_id}/");
        let options = [
            "--fetch".to_string(),
            format!("s3://{EXPORT_BUCKET}/{inputs}"),
            "--checkpoint".into(),
            "ckpt".into(),
            "--checkpoint-to".into(),
            format!("s3://{EXPORT_BUCKET}/runs/{run_id}/checkpoints/"),
            "--outputs".into(),
            "out".into(),
            "--to".into(),
            to.clone(),
        ]
        .into_iter()
        .chain(self.options.iter().map(|o| o.to_string()))
        .collect::<Vec<_>>();
        let mut spec = fixtures::runspec(run_id, self.net, Some(self.topic));
        let mut args = vec![json!("exec")];
        args.extend(options.iter().map(|o| json!(o)));
        args.extend([json!("--"), json!("sh"), json!("probe.sh")]);
        spec["worker"]["args"] = json!(args);
        spec["expect"] = json!({"export_prefix": to});
        let named: serde_json::Map<String, serde_json::Value> = secrets
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        if !named.is_empty() {
            spec["job"] = json!({ "secrets": named });
        }
        spec["limits"]["heartbeat_seconds"] = json!(30);
        let execution = e2e::start(self.region, self.machine, &format!("{run_id}-1"), &spec).await;
        let instance_id = Arc::new(Mutex::new(String::new()));
        let imds_url = {
            let id = instance_id.clone();
            ephemera_tests::imds::serve(move || id.lock().unwrap().clone(), || None).await
        };
        *instance_id.lock().unwrap() = fixtures::instance_of(self.region, run_id, "1").await;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ephemera-worker"));
        ephemera_tests::instance_env(&mut cmd, self.region, &imds_url);
        cmd.args(["exec", "--grace", "5", "--run-id", run_id, "--attempt", "1"])
            .args(["--ssm-prefix", &format!("/ephemera/runs/{run_id}")])
            .args([
                "--heartbeat-seconds",
                "30",
                "--log-group",
                &worker_log_group(),
            ])
            .arg("--run-session")
            .args(["--workdir", &self.base.join(run_id).display().to_string()])
            .args([
                "--run-as",
                &format!("{}:{}", self.job_user.0, self.job_user.1),
            ])
            .args(&options);
        for (name, arn) in secrets {
            cmd.args(["--secret", &format!("{name}={arn}")]);
        }
        cmd.args(["--", "sh", "probe.sh"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = cmd.spawn().unwrap().wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        let done = e2e::wait(self.region, &execution, Duration::from_secs(120)).await;
        (done, stderr)
    }
}

/// Every object under `prefix` of the export bucket, with its ETag: what "intact" compares.
async fn objects_under(region: &str, prefix: &str) -> Vec<(String, String)> {
    let r = clients(region)
        .s3
        .list_objects_v2()
        .bucket(EXPORT_BUCKET)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    r.contents()
        .iter()
        .map(|o| {
            (
                o.key().unwrap().to_string(),
                o.e_tag().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Two runs of one stack: the first ends SUCCEEDED with its outputs, manifest, checkpoint and
/// report; then the second's job, as an attacker, tries with the only credentials it has to
/// list, read, overwrite and delete each of them and to read the first run's secret. Each try
/// is refused by IAM as AWS refuses it, the attacker's own run still ends (it is judged by its
/// own outputs), and the first run's objects are as they were.
#[tokio::test]
async fn a_hostile_job_cannot_touch_another_runs_objects_or_read_its_secret() {
    assert!(
        nix_root(),
        "this test runs the job as another user: run it as root, as CI does"
    );
    let uid = 63_000 + std::process::id() % 1000;
    let region = fresh_region();
    let aws = clients(region);
    let net = fixtures::network(&aws).await;
    let inbox = fixtures::inbox(region, "ephemera-reports").await;
    let logs = aws_sdk_cloudwatchlogs::Client::new(&ephemera_tests::sdk_config(region));
    logs.create_log_group()
        .log_group_name(worker_log_group())
        .send()
        .await
        .unwrap();
    let machine = e2e::create_state_machine(region).await;
    export_bucket(&aws.s3, region).await;
    let secret = aws_sdk_secretsmanager::Client::new(&ephemera_tests::sdk_config(region))
        .create_secret()
        .name("ephemera/victim/key")
        .secret_string("victims-secret-5d1e")
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let base = std::env::temp_dir().join(format!("ephemera-two-runs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let runs = OneRun {
        region,
        machine: &machine,
        net: &net,
        topic: &inbox.topic_arn,
        base: &base,
        job_user: (uid, uid),
        // The victim's checkpoint stays, for the hostile job to try.
        options: &["--keep-checkpoints"],
    };

    let (victim, stderr) = runs
        .run(
            "victim",
            r#"test "$KEY" = victims-secret-5d1e || exit 9
echo 7 > "$EPHEMERA_CHECKPOINT/step"; sleep 2
mkdir -p out; cat input.txt > out/model.bin"#,
            &[("KEY", &secret)],
        )
        .await;
    assert_eq!(victim.status, "SUCCEEDED", "{victim:?}\n{stderr}");
    let before = objects_under(region, "runs/victim/").await;
    for key in [
        "runs/victim/worker-1/model.bin",
        "runs/victim/worker-1/manifest.json",
        "runs/victim/report.json",
    ] {
        assert!(before.iter().any(|(k, _)| k == key), "{key}: {before:?}");
    }
    let checkpoint = before
        .iter()
        .find(|(k, _)| k.starts_with("runs/victim/checkpoints/") && k.ends_with("checkpoint.json"))
        .map(|(k, _)| k.clone())
        .unwrap_or_else(|| panic!("the victim's checkpoint list: {before:?}"));

    // Each try must be refused (403, AccessDenied); one that is not fails the attacker's job.
    let attack = format!(
        r#"set -u
signed() {{
  doc=$(sh -c "$(sed -n 's/^credential_process = //p' "$AWS_CONFIG_FILE")")
  field() {{ printf '%s' "$doc" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }}
  service=$1; shift
  curl -sS -o /dev/null -w '%{{http_code}}' --aws-sigv4 "aws:amz:$AWS_REGION:$service" \
    --user "$(field AccessKeyId):$(field SecretAccessKey)" -H "x-amz-security-token: $(field SessionToken)" "$@"
}}
s3() {{ signed s3 -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@"; }}
refused() {{ test "$1" = 403 || {{ echo "allowed: $2 ($1)" >&2; exit 40; }}; }}
for key in runs/victim/worker-1/model.bin runs/victim/worker-1/manifest.json runs/victim/report.json {checkpoint}; do
  refused "$(s3 -T input.txt "$AWS_ENDPOINT_URL/{bucket}/$key")" "overwrite $key"
  refused "$(s3 -X DELETE "$AWS_ENDPOINT_URL/{bucket}/$key")" "delete $key"
  refused "$(s3 "$AWS_ENDPOINT_URL/{bucket}/$key")" "read $key"
done
refused "$(s3 "$AWS_ENDPOINT_URL/{bucket}?list-type=2&prefix=runs/victim/")" "list the victim"
code=$(signed secretsmanager -H 'X-Amz-Target: secretsmanager.GetSecretValue' \
  -H 'Content-Type: application/x-amz-json-1.1' -d '{{"SecretId":"{secret}"}}' "$AWS_ENDPOINT_URL/")
test "$code" = 400 || test "$code" = 403 || {{ echo "read the victim's secret ($code)" >&2; exit 41; }}
mkdir -p out; echo tried > out/tried.txt"#,
        bucket = EXPORT_BUCKET,
    );
    let (hostile, stderr) = runs.run("hostile", &attack, &[]).await;
    assert_eq!(hostile.status, "SUCCEEDED", "{hostile:?}\n{stderr}");
    assert_eq!(
        objects_under(region, "runs/victim/").await,
        before,
        "the victim's objects are as they were"
    );
    let denials = harness().door.denials_in(region);
    for (action, on) in [
        ("s3:PutObject", "runs/victim/worker-1/manifest.json"),
        ("s3:DeleteObject", "runs/victim/report.json"),
        ("s3:GetObject", "runs/victim/worker-1/model.bin"),
        ("s3:ListBucket", EXPORT_BUCKET),
        ("secretsmanager:GetSecretValue", "ephemera/victim/key"),
    ] {
        assert!(
            denials.iter().any(|d| d.principal == Principal::Run
                && d.action == action
                && d.resource.contains(on)),
            "{action} on {on} not refused: {denials:?}"
        );
    }
    std::fs::remove_dir_all(&base).unwrap();
}

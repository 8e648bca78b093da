//! One run's credentials reach that run's objects and no other's (issue 34 part 1): sessions of
//! the run role vended as launch-worker vends them (tagged `ephemera:run`, transitive, with the
//! session policy `run_credentials` writes from the RunSpec), minted by the front door's STS and
//! held to the template's policies on every S3 call that follows.

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use ephemera_core::run_credentials::{session_policy, Holder, Stack};
use ephemera_core::RunSpec;
use ephemera_tests::iam::{run_role_arn, ARTIFACT_BUCKET, EXPORT_BUCKET};
use ephemera_tests::{clients, fresh_region, sdk_config_as};
use serde_json::json;

fn spec(run: &str) -> RunSpec {
    serde_json::from_value(json!({
        "run_id": run,
        "worker": {"instance_types": ["m7i.large"], "subnets": ["subnet-1"], "image": "ami-1",
                   "artifact": format!("s3://{ARTIFACT_BUCKET}/worker/ephemera-worker"),
                   "args": ["exec", "--fetch", format!("s3://{ARTIFACT_BUCKET}/jobs/{run}.tar.gz"),
                            "--outputs", "out", "--to", format!("s3://{EXPORT_BUCKET}/runs/{run}/"),
                            "--", "sh", "-c", "true"]},
        "limits": {"budget_usd": 5.0, "max_runtime_seconds": 3600}
    }))
    .expect("a RunSpec")
}

const STACK: Stack = Stack {
    artifact_bucket: ARTIFACT_BUCKET,
    export_bucket: EXPORT_BUCKET,
    run_role_arn: "arn:aws:iam::123456789012:role/ephemera-run-role",
};

fn refused<T, E>(what: &str, r: Result<T, aws_sdk_s3::error::SdkError<E>>)
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match r {
        Ok(_) => panic!("{what} was allowed"),
        Err(e) => assert_eq!(
            e.as_service_error().and_then(|s| s.code()),
            Some("AccessDenied"),
            "{what}: {}",
            DisplayErrorContext(&e)
        ),
    }
}

#[tokio::test]
async fn a_runs_job_cannot_list_read_overwrite_or_delete_another_runs_objects() {
    let region = fresh_region();
    assert_eq!(STACK.run_role_arn, run_role_arn());
    let admin = clients(region).s3;
    for b in [EXPORT_BUCKET, ARTIFACT_BUCKET] {
        // Shared by the binary's tests: already there is fine.
        let _ = admin.create_bucket().bucket(b).send().await;
    }
    let (mine, other) = (format!("iso-a-{region}"), format!("iso-b-{region}"));
    // The other run's checkpoint, outputs, manifest and report, and this run's input.
    let theirs = [
        format!("runs/{other}/ckpt/{other}/worker-1/checkpoint.json"),
        format!("runs/{other}/worker-1/out/model.bin"),
        format!("runs/{other}/worker-1/manifest.json"),
        format!("runs/{other}/report.json"),
    ];
    for key in &theirs {
        admin
            .put_object()
            .bucket(EXPORT_BUCKET)
            .key(key)
            .body(ByteStream::from(key.as_bytes().to_vec()))
            .send()
            .await
            .unwrap();
    }
    for run in [&mine, &other] {
        admin
            .put_object()
            .bucket(ARTIFACT_BUCKET)
            .key(format!("jobs/{run}.tar.gz"))
            .body(ByteStream::from_static(b"inputs"))
            .send()
            .await
            .unwrap();
    }

    // As launch-worker vends them: the agent's session, then the job's from it.
    let launch = "fn-launch-worker";
    let agent_policy = session_policy(&spec(&mine), &STACK, Holder::Agent).unwrap();
    let agent =
        ephemera_tests::fixtures::assume_run_role(region, launch, Some(&mine), Some(&agent_policy))
            .await
            .expect("launch-worker vends the run's session");
    let job_policy = session_policy(&spec(&mine), &STACK, Holder::Job).unwrap();
    let job = ephemera_tests::fixtures::assume_run_role(region, &agent, None, Some(&job_policy))
        .await
        .expect("the agent gives its job a narrower session");
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk_config_as(region, &job))
            .force_path_style(true)
            .build(),
    );

    // Its own scratch: written, listed, read back, deleted; its input read.
    let own = format!("runs/{mine}/job/a.txt");
    s3.put_object()
        .bucket(EXPORT_BUCKET)
        .key(&own)
        .body(ByteStream::from_static(b"mine"))
        .send()
        .await
        .expect("its own output");
    let listed = s3
        .list_objects_v2()
        .bucket(EXPORT_BUCKET)
        .prefix(format!("runs/{mine}/"))
        .send()
        .await
        .expect("its own listing");
    assert_eq!(listed.contents().len(), 1);
    s3.get_object()
        .bucket(ARTIFACT_BUCKET)
        .key(format!("jobs/{mine}.tar.gz"))
        .send()
        .await
        .expect("its input");
    s3.delete_object()
        .bucket(EXPORT_BUCKET)
        .key(&own)
        .send()
        .await
        .expect("its own delete");

    // Its own run's manifest and checkpoint are the agent's to write: a job's credentials,
    // copied out, change nothing its run is judged or resumed by.
    for key in [
        format!("runs/{mine}/worker-1/manifest.json"),
        format!("runs/{mine}/checkpoints/{mine}/worker-1/checkpoint.json"),
    ] {
        refused(
            &format!("overwriting its run's {key}"),
            s3.put_object()
                .bucket(EXPORT_BUCKET)
                .key(&key)
                .body(ByteStream::from_static(b"{}"))
                .send()
                .await,
        );
    }

    // The other run's: refused, every one.
    refused(
        "listing the other run",
        s3.list_objects_v2()
            .bucket(EXPORT_BUCKET)
            .prefix(format!("runs/{other}/"))
            .send()
            .await,
    );
    refused(
        "listing the bucket",
        s3.list_objects_v2().bucket(EXPORT_BUCKET).send().await,
    );
    refused(
        "reading the other run's input",
        s3.get_object()
            .bucket(ARTIFACT_BUCKET)
            .key(format!("jobs/{other}.tar.gz"))
            .send()
            .await,
    );
    for key in &theirs {
        refused(
            &format!("reading {key}"),
            s3.get_object().bucket(EXPORT_BUCKET).key(key).send().await,
        );
        refused(
            &format!("overwriting {key}"),
            s3.put_object()
                .bucket(EXPORT_BUCKET)
                .key(key)
                .body(ByteStream::from_static(b"planted"))
                .send()
                .await,
        );
        refused(
            &format!("deleting {key}"),
            s3.delete_object()
                .bucket(EXPORT_BUCKET)
                .key(key)
                .send()
                .await,
        );
    }
    // Planting a checkpoint or a manifest beside the other run's: refused too.
    refused(
        "planting a checkpoint",
        s3.put_object()
            .bucket(EXPORT_BUCKET)
            .key(format!("runs/{other}/ckpt/{other}/worker-1/a1/g9/x"))
            .body(ByteStream::from_static(b"planted"))
            .send()
            .await,
    );

    // Nor can the job make itself a wider session or another run's.
    let renew = ephemera_tests::fixtures::assume_run_role(region, &job, None, None)
        .await
        .unwrap_err();
    assert!(renew.contains("AccessDenied"), "{renew}");
    let become_other = ephemera_tests::fixtures::assume_run_role(region, &job, Some(&other), None)
        .await
        .unwrap_err();
    assert!(become_other.contains("AccessDenied"), "{become_other}");
    // The agent may renew, and stays its run: even a renewal without any session policy (the
    // role's own policy alone, keyed on the transitive tag) reaches no other run's object.
    let renewed = ephemera_tests::fixtures::assume_run_role(region, &agent, None, None)
        .await
        .expect("the agent renews");
    let s3_renewed = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk_config_as(region, &renewed))
            .force_path_style(true)
            .build(),
    );
    for key in &theirs {
        refused(
            &format!("the renewed session overwriting {key}"),
            s3_renewed
                .put_object()
                .bucket(EXPORT_BUCKET)
                .key(key)
                .body(ByteStream::from_static(b"planted"))
                .send()
                .await,
        );
        refused(
            &format!("the renewed session deleting {key}"),
            s3_renewed
                .delete_object()
                .bucket(EXPORT_BUCKET)
                .key(key)
                .send()
                .await,
        );
    }
    refused(
        "the renewed session listing the other run",
        s3_renewed
            .list_objects_v2()
            .bucket(EXPORT_BUCKET)
            .prefix(format!("runs/{other}/"))
            .send()
            .await,
    );

    // The other run's objects are whole.
    for key in &theirs {
        let body = admin
            .get_object()
            .bucket(EXPORT_BUCKET)
            .key(key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        assert_eq!(body.as_ref(), key.as_bytes(), "{key}");
    }
}

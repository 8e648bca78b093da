//! What a test run needs in a region: subnets, an image, a topic whose messages can be read
//! back, and a RunSpec using them.

use aws_sdk_ec2::types::Filter;
use ephemera_functions::Aws;
use serde_json::{json, Value};

pub struct Network {
    pub subnets: Vec<String>,
    pub security_group: String,
    pub image: String,
}

/// moto's default VPC: two of its subnets, its default security group, and an image it knows.
pub async fn network(aws: &Aws) -> Network {
    let subnets = aws
        .ec2
        .describe_subnets()
        .filters(
            Filter::builder()
                .name("default-for-az")
                .values("true")
                .build(),
        )
        .send()
        .await
        .expect("DescribeSubnets");
    let mut subnets: Vec<String> = subnets
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id().map(str::to_string))
        .collect();
    subnets.sort();
    subnets.truncate(2);
    let sg = aws
        .ec2
        .describe_security_groups()
        .filters(
            Filter::builder()
                .name("group-name")
                .values("default")
                .build(),
        )
        .send()
        .await
        .expect("DescribeSecurityGroups");
    let security_group = sg.security_groups()[0].group_id().unwrap().to_string();
    let images = aws
        .ec2
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .expect("DescribeImages");
    let image = images
        .images()
        .iter()
        .filter_map(|i| i.image_id())
        .find(|id| id.len() >= 12)
        .expect("moto has an AMI")
        .to_string();
    Network {
        subnets,
        security_group,
        image,
    }
}

/// A test's own region (its own fresh account), its administrator's clients and its network.
pub struct Ctx {
    pub region: &'static str,
    pub aws: Aws,
    pub net: Network,
}

pub async fn ctx() -> Ctx {
    let region = crate::fresh_region();
    let aws = crate::clients(region);
    let net = network(&aws).await;
    Ctx { region, aws, net }
}

/// A topic with an SQS queue subscribed (SNS envelopes, so the subject can be read back).
pub struct Inbox {
    pub topic_arn: String,
    pub queue_url: String,
    sqs: aws_sdk_sqs::Client,
}

pub async fn inbox(region: &str, name: &str) -> Inbox {
    let conf = crate::sdk_config(region);
    let sns = aws_sdk_sns::Client::new(&conf);
    let sqs = aws_sdk_sqs::Client::new(&conf);
    let topic_arn = sns
        .create_topic()
        .name(name)
        .send()
        .await
        .expect("CreateTopic")
        .topic_arn()
        .unwrap()
        .to_string();
    let queue_url = sqs
        .create_queue()
        .queue_name(format!("{name}-inbox"))
        .send()
        .await
        .expect("CreateQueue")
        .queue_url()
        .unwrap()
        .to_string();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("GetQueueAttributes");
    let queue_arn = attrs
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .unwrap()
        .to_string();
    sns.subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint(queue_arn)
        .send()
        .await
        .expect("Subscribe");
    Inbox {
        topic_arn,
        queue_url,
        sqs,
    }
}

/// One email as SNS delivered it.
#[derive(Debug, Clone)]
pub struct Email {
    pub subject: String,
    pub body: String,
    pub attributes: Value,
}

impl Inbox {
    pub async fn read(&self) -> Vec<Email> {
        let r = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("ReceiveMessage");
        r.messages()
            .iter()
            .filter_map(|m| serde_json::from_str::<Value>(m.body()?).ok())
            .map(|env| Email {
                subject: env["Subject"].as_str().unwrap_or_default().to_string(),
                body: env["Message"].as_str().unwrap_or_default().to_string(),
                attributes: env["MessageAttributes"].clone(),
            })
            .collect()
    }
}

/// A RunSpec for this region's network: waits short, budget ample.
pub fn runspec(run_id: &str, net: &Network, topic_arn: Option<&str>) -> Value {
    let mut v = json!({
        "run_id": run_id,
        "worker": {
            "instance_types": ["c7g.4xlarge", "c6g.4xlarge"],
            "subnets": net.subnets,
            "security_groups": [net.security_group],
            "image": net.image,
            "volume_gib": 20,
            "artifact": "s3://ephemera-artifacts/worker/ephemera-worker",
            "args": ["run", "--stages", "indicators,regression"],
            "market": "spot-then-on-demand"
        },
        "quota": {"request_increase": true, "max_wait_seconds": 600},
        // The budget covers every attempt the relaunch tests make: a c7g.4xlarge attempt's worst
        // case (boot, two hours, teardown, a sweeper interval) is about $2.70, and the
        // three-workers scenario makes four attempts (ephemera_core::budget).
        "limits": {"boot_timeout_seconds": 300, "heartbeat_seconds": 60,
                   "max_runtime_seconds": 7200, "budget_usd": 20.0, "max_relaunches": 2},
        "tags": {"cost-center": "research"},
        "waits": {"quota_poll_min_seconds": 1, "quota_poll_max_seconds": 4, "boot_poll_seconds": 1}
    });
    if let Some(t) = topic_arn {
        v["notify"] = json!({"topic_arn": t});
    }
    v
}

/// One instance by id, once EC2 shows it: right after RunInstances it is not found by id for a
/// moment (EC2 is eventually consistent, and the front door plays it).
pub async fn instance(aws: &Aws, id: &str) -> aws_sdk_ec2::types::Instance {
    let found = crate::eventually(
        "the instance",
        std::time::Duration::from_secs(10),
        || async {
            aws.ec2
                .describe_instances()
                .instance_ids(id)
                .send()
                .await
                .ok()
        },
    )
    .await;
    found.reservations()[0].instances()[0].clone()
}

/// (instance id, state) of every instance tagged for `run_id`, in any state.
pub async fn instances_of(aws: &Aws, run_id: &str) -> Vec<(String, String)> {
    let found = aws
        .ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:ephemera:run")
                .values(run_id)
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances");
    found
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_string(),
                i.state()
                    .and_then(|s| s.name())
                    .map(|n| n.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// Instances of `run` that are pending or running.
pub async fn live(c: &Ctx, run: &str) -> Vec<String> {
    instances_of(&c.aws, run)
        .await
        .into_iter()
        .filter(|(_, state)| state == "pending" || state == "running")
        .map(|(id, _)| id)
        .collect()
}

/// The most one attempt of `spec`'s worker can bill in `region`, as launch-worker counts it: at
/// its dearest candidate's On-Demand price (the front door's Price List answers the dated
/// table's price for the region).
pub fn attempt_worst_case(
    spec: &ephemera_core::RunSpec,
    region: &str,
) -> ephemera_core::budget::AttemptWorstCase {
    let (dearest, price) = spec
        .worker
        .instance_types
        .iter()
        .map(|t| {
            (
                t,
                ephemera_core::catalog::on_demand_hourly_bound(t, region).unwrap(),
            )
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    ephemera_core::budget::attempt_worst_case(spec, dearest, price, region)
}

/// Creates `name` in `region` (S3 wants the region named outside us-east-1), or finds it
/// already the account's: bucket names are the account's, not a region's, and the tests that
/// share one run side by side, the first creating it.
pub async fn bucket(s3: &aws_sdk_s3::Client, name: &str, region: &str) {
    let mut bucket = s3.create_bucket().bucket(name);
    if region != "us-east-1" {
        bucket = bucket.create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(region))
                .build(),
        );
    }
    if let Err(e) = bucket.send().await {
        let owned = e
            .as_service_error()
            .is_some_and(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists());
        assert!(owned, "CreateBucket {name}: {e:?}");
    }
}

/// AssumeRole of the run role through the front door, signed with `signer`'s key: the new
/// session's access key, or STS's error answer.
pub async fn assume_run_role(
    region: &str,
    signer: &str,
    run: Option<&str>,
    policy: Option<&serde_json::Value>,
) -> Result<String, String> {
    let mut form = vec![
        ("Action".to_string(), "AssumeRole".to_string()),
        ("Version".into(), "2011-06-15".into()),
        ("RoleArn".into(), crate::iam::run_role_arn()),
        ("RoleSessionName".into(), "i-1".into()),
    ];
    if let Some(run) = run {
        form.push(("Tags.member.1.Key".into(), "ephemera:run".into()));
        form.push(("Tags.member.1.Value".into(), run.into()));
        form.push(("TransitiveTagKeys.member.1".into(), "ephemera:run".into()));
    }
    if let Some(p) = policy {
        form.push(("Policy".into(), p.to_string()));
    }
    let body = form
        .iter()
        .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let answer = reqwest::Client::new()
        .post(&crate::harness().endpoint)
        .header(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential={signer}/20261206/{region}/sts/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("the front door answers");
    let ok = answer.status().is_success();
    let text = answer.text().await.unwrap_or_default();
    let key = text
        .split("<AccessKeyId>")
        .nth(1)
        .and_then(|s| s.split("</AccessKeyId>").next());
    match (ok, key) {
        (true, Some(k)) => Ok(k.to_string()),
        _ => Err(text),
    }
}

/// A session of the run role for `run_id` as launch-worker vends it (tagged with the run,
/// transitive), without a session policy: the role's own limits, the run's prefix and streams.
/// Its access key, for [`crate::sdk_config_as`].
pub async fn run_session(region: &str, run_id: &str) -> String {
    assume_run_role(region, "fn-launch-worker", Some(run_id), None)
        .await
        .expect("the door's STS vends a run session")
}

/// The run's instance carrying these tags too (filter name, value: `("tag:ephemera:attempt",
/// "1")`), once EC2 shows it.
pub async fn instance_tagged(region: &str, run_id: &str, tags: &[(&str, &str)]) -> String {
    let aws = crate::clients(region);
    crate::eventually(
        "the worker's instance",
        std::time::Duration::from_secs(60),
        || {
            let aws = aws.clone();
            async move {
                let mut describe = aws.ec2.describe_instances().filters(
                    aws_sdk_ec2::types::Filter::builder()
                        .name("tag:ephemera:run")
                        .values(run_id)
                        .build(),
                );
                for (name, value) in tags {
                    describe = describe.filters(
                        aws_sdk_ec2::types::Filter::builder()
                            .name(*name)
                            .values(*value)
                            .build(),
                    );
                }
                let r = describe.send().await.ok()?;
                r.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .find_map(|i| i.instance_id().map(str::to_string))
            }
        },
    )
    .await
}

/// The run's instance of `attempt` (its first worker's, or its only one's).
pub async fn instance_of(region: &str, run_id: &str, attempt: &str) -> String {
    instance_tagged(region, run_id, &[("tag:ephemera:attempt", attempt)]).await
}

/// A gzip'd tar of `entries` (name, bytes), as a job's inputs are shipped.
pub fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

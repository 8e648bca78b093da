//! What a request asks IAM for: its action and the resources (with their context keys) AWS
//! authorizes, read off the wire as each service's protocol puts them.
//!
//! Resource ARNs follow the Service Authorization Reference
//! (<https://docs.aws.amazon.com/service-authorization/latest/reference/reference_policies_actions-resources-contextkeys.html>);
//! an action without resource-level permissions is authorized against `*`.

use std::collections::{BTreeMap, HashMap};

use crate::iam::{Check, ACCOUNT, WORKER_PROFILE};

/// The parts of an HTTP request that name what it does.
pub struct Wire<'a> {
    pub region: &'a str,
    pub service: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// `X-Amz-Target` for JSON-protocol services.
    pub target: Option<&'a str>,
    pub body: &'a [u8],
}

/// The form of a query-protocol request (EC2, SNS): `Action=…&Key=Value…`.
pub fn url_form(bytes: &[u8]) -> HashMap<String, String> {
    let s = String::from_utf8_lossy(bytes);
    s.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let dec = |x: &str| {
                urlencoding::decode(&x.replace('+', " "))
                    .map(|c| c.into_owned())
                    .unwrap_or_default()
            };
            Some((dec(k), dec(v)))
        })
        .collect()
}

/// `prefix.N…` members of a query-protocol list, in order of N.
fn members<'f>(form: &'f HashMap<String, String>, prefix: &str) -> Vec<&'f String> {
    let mut found: Vec<(u32, &String)> = form
        .iter()
        .filter_map(|(k, v)| {
            let n = k.strip_prefix(prefix)?.strip_prefix('.')?;
            Some((n.parse().ok()?, v))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, v)| v).collect()
}

/// The tags a RunInstances request puts on each resource type (`TagSpecification.N`).
pub fn tag_specifications(
    form: &HashMap<String, String>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for n in 1..=20 {
        let Some(kind) = form.get(&format!("TagSpecification.{n}.ResourceType")) else {
            continue;
        };
        let tags = out.entry(kind.clone()).or_default();
        for m in 1..=60 {
            let (Some(k), Some(v)) = (
                form.get(&format!("TagSpecification.{n}.Tag.{m}.Key")),
                form.get(&format!("TagSpecification.{n}.Tag.{m}.Value")),
            ) else {
                continue;
            };
            tags.insert(k.clone(), v.clone());
        }
    }
    out
}

pub fn is_spot(form: &HashMap<String, String>) -> bool {
    form.get("InstanceMarketOptions.MarketType")
        .is_some_and(|m| m.eq_ignore_ascii_case("spot"))
}

/// The checks of an EC2 request. TerminateInstances' `ec2:ResourceTag/…` keys are added by the
/// caller, which can look the instances up.
fn ec2(region: &str, form: &HashMap<String, String>) -> (String, Vec<Check>) {
    let action = form.get("Action").cloned().unwrap_or_default();
    let arn = |kind: &str, id: &str| format!("arn:aws:ec2:{region}:{ACCOUNT}:{kind}/{id}");
    let full = format!("ec2:{action}");
    let checks = match action.as_str() {
        "RunInstances" => {
            let specs = tag_specifications(form);
            let tagged = |check: Check, kind: &str| {
                specs
                    .get(kind)
                    .into_iter()
                    .flatten()
                    .fold(check, |c, (k, v)| {
                        c.with(&format!("aws:RequestTag/{k}"), v.clone())
                    })
            };
            let mut checks = vec![
                tagged(Check::new(&full, arn("instance", "*")), "instance"),
                tagged(Check::new(&full, arn("volume", "*")), "volume"),
                Check::new(&full, arn("network-interface", "*")),
                Check::new(
                    &full,
                    format!(
                        "arn:aws:ec2:{region}::image/{}",
                        form.get("ImageId").cloned().unwrap_or_default()
                    ),
                ),
            ];
            if let Some(s) = form.get("SubnetId") {
                checks.push(Check::new(&full, arn("subnet", s)));
            }
            for g in members(form, "SecurityGroupId") {
                checks.push(Check::new(&full, arn("security-group", g)));
            }
            if is_spot(form) {
                checks.push(tagged(
                    Check::new(&full, arn("spot-instances-request", "*")),
                    "spot-instances-request",
                ));
            }
            // Tagging at launch is authorized as ec2:CreateTags with ec2:CreateAction
            // (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/supported-iam-actions-tagging.html).
            for (kind, tags) in &specs {
                let mut c = Check::new("ec2:CreateTags", arn(kind, "*"))
                    .with("ec2:CreateAction", "RunInstances");
                for (k, v) in tags {
                    c = c.with(&format!("aws:RequestTag/{k}"), v.clone());
                }
                checks.push(c);
            }
            let profile = form
                .get("IamInstanceProfile.Name")
                .or(form.get("IamInstanceProfile.Arn"));
            if let Some(p) = profile {
                // The harness deploys one instance profile, the template's, holding WorkerRole.
                let role = if p.ends_with(WORKER_PROFILE) {
                    format!("arn:aws:iam::{ACCOUNT}:role/ephemera-worker-role")
                } else {
                    format!("arn:aws:iam::{ACCOUNT}:role/{p}")
                };
                checks.push(
                    Check::new("iam:PassRole", role)
                        .with("iam:PassedToService", "ec2.amazonaws.com"),
                );
            }
            checks
        }
        "TerminateInstances" | "StopInstances" | "RebootInstances" => members(form, "InstanceId")
            .into_iter()
            .map(|id| Check::new(&full, arn("instance", id)))
            .collect(),
        "CreateTags" | "DeleteTags" => members(form, "ResourceId")
            .into_iter()
            .map(|id| {
                let kind = match id.split('-').next() {
                    Some("i") => "instance",
                    Some("vol") => "volume",
                    Some("sir") => "spot-instances-request",
                    _ => "*",
                };
                Check::new(&full, arn(kind, id))
            })
            .collect(),
        _ => vec![Check::new(&full, "*")],
    };
    (action, checks)
}

fn json_checks(region: &str, service: &str, op: &str, input: &serde_json::Value) -> Vec<Check> {
    // A transaction has no action of its own: each item is authorized as the call it makes
    // (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis-iam.html).
    if (service, op) == ("dynamodb", "TransactWriteItems") {
        return input["TransactItems"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| {
                let (kind, body) = item.as_object()?.iter().next()?;
                let action = match kind.as_str() {
                    "Update" => "UpdateItem",
                    "Put" => "PutItem",
                    "Delete" => "DeleteItem",
                    _ => "ConditionCheckItem",
                };
                Some(json_checks(region, service, action, body))
            })
            .flatten()
            .collect();
    }
    // As its reads: each item as the GetItem it makes (the same page).
    if (service, op) == ("dynamodb", "TransactGetItems") {
        return input["TransactItems"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| Some(json_checks(region, service, "GetItem", item.get("Get")?)))
            .flatten()
            .collect();
    }
    let action = format!("{service}:{op}");
    let s = |k: &str| input[k].as_str().unwrap_or_default().to_string();
    let param = |name: &str| {
        let name = if name.starts_with('/') {
            name.to_string()
        } else {
            format!("/{name}")
        };
        // Public parameters (AMI aliases) belong to no account.
        let account = if name.starts_with("/aws/") {
            ""
        } else {
            ACCOUNT
        };
        format!("arn:aws:ssm:{region}:{account}:parameter{name}")
    };
    let resources: Vec<String> = match (service, op) {
        ("ssm", "GetParameter" | "PutParameter" | "DeleteParameter" | "GetParameterHistory") => {
            vec![param(&s("Name"))]
        }
        // Authorized on the path as a parameter ARN (Service Authorization Reference, Systems
        // Manager, GetParametersByPath: resource type `parameter`).
        ("ssm", "GetParametersByPath") => vec![param(&s("Path"))],
        ("ssm", "GetParameters" | "DeleteParameters") => input["Names"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .map(param)
            .collect(),
        ("states", "StartExecution" | "StartSyncExecution") => vec![s("stateMachineArn")],
        ("states", "DescribeExecution" | "GetExecutionHistory" | "StopExecution") => {
            vec![s("executionArn")]
        }
        ("states", "ListExecutions" | "DescribeStateMachine") => vec![s("stateMachineArn")],
        // Only these Service Quotas actions take a quota ARN; the rest are authorized on *
        // (https://docs.aws.amazon.com/service-authorization/latest/reference/list_servicequotas.html).
        (
            "servicequotas",
            "GetServiceQuota"
            | "RequestServiceQuotaIncrease"
            | "ListRequestedServiceQuotaChangeHistoryByQuota",
        ) => vec![format!(
            "arn:aws:servicequotas:{region}:{ACCOUNT}:{}/{}",
            s("ServiceCode"),
            s("QuotaCode")
        )],
        // CloudWatch Logs: an action on a group is authorized against `log-group:NAME:*`, one
        // on a stream against the stream's ARN
        // (https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/iam-access-control-overview-cwl.html).
        (
            "logs",
            "CreateLogStream" | "DescribeLogStreams" | "FilterLogEvents" | "DeleteLogStream",
        ) => vec![format!(
            "arn:aws:logs:{region}:{ACCOUNT}:log-group:{}:*",
            s("logGroupName")
        )],
        ("logs", "PutLogEvents" | "GetLogEvents") => vec![format!(
            "arn:aws:logs:{region}:{ACCOUNT}:log-group:{}:log-stream:{}",
            s("logGroupName"),
            s("logStreamName")
        )],
        // DynamoDB: a table's ARN, or its index's for a Query or Scan of one
        // (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/specifying-conditions.html).
        ("dynamodb", _) if input["TableName"].is_string() => {
            let table = format!(
                "arn:aws:dynamodb:{region}:{ACCOUNT}:table/{}",
                s("TableName")
            );
            vec![match input["IndexName"].as_str() {
                Some(index) if matches!(op, "Query" | "Scan") => format!("{table}/index/{index}"),
                _ => table,
            }]
        }
        ("secretsmanager", "GetSecretValue" | "DescribeSecret") => {
            let id = s("SecretId");
            vec![if id.starts_with("arn:") {
                id
            } else {
                // Secrets Manager appends six random characters to every secret's ARN.
                format!("arn:aws:secretsmanager:{region}:{ACCOUNT}:secret:{id}-AbCdEf")
            }]
        }
        _ => vec!["*".into()],
    };
    let mut checks: Vec<Check> = resources
        .into_iter()
        .map(|r| Check::new(&action, r))
        .collect();
    // An item's partition key: `dynamodb:LeadingKeys`
    // (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/specifying-conditions.html).
    if service == "dynamodb" {
        if let Some(key) = input["Key"]["execution"]["S"].as_str() {
            checks = checks
                .into_iter()
                .map(|c| c.with("dynamodb:LeadingKeys", key))
                .collect();
        }
    }
    // Tags given to PutParameter are added as AddTagsToResource would add them, and authorized
    // so (https://docs.aws.amazon.com/systems-manager/latest/userguide/sysman-paramstore-su-tag.html).
    if (service, op) == ("ssm", "PutParameter") {
        if let Some(tags) = input["Tags"].as_array().filter(|t| !t.is_empty()) {
            let mut tagging = Check::new("ssm:AddTagsToResource", param(&s("Name")));
            for t in tags {
                if let (Some(k), Some(v)) = (t["Key"].as_str(), t["Value"].as_str()) {
                    tagging = tagging.with(&format!("aws:RequestTag/{k}"), v);
                }
            }
            checks.push(tagging);
        }
    }
    checks
}

fn s3(w: &Wire) -> (String, Vec<Check>) {
    let path = w.path.trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let q = w.query;
    let has = |k: &str| {
        q.split('&')
            .any(|p| p == k || p.starts_with(&format!("{k}=")))
    };
    let (action, resource) = match (w.method, key.is_empty()) {
        ("GET" | "HEAD", false) => ("GetObject", format!("arn:aws:s3:::{bucket}/{key}")),
        ("PUT" | "POST", false) => ("PutObject", format!("arn:aws:s3:::{bucket}/{key}")),
        ("DELETE", false) if has("uploadId") => (
            "AbortMultipartUpload",
            format!("arn:aws:s3:::{bucket}/{key}"),
        ),
        ("DELETE", false) => ("DeleteObject", format!("arn:aws:s3:::{bucket}/{key}")),
        ("GET", true) if has("location") => ("GetBucketLocation", format!("arn:aws:s3:::{bucket}")),
        // ListMultipartUploads (GET /bucket?uploads) is its own action, on the bucket
        // (https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListMultipartUploads.html).
        ("GET", true) if has("uploads") => (
            "ListBucketMultipartUploads",
            format!("arn:aws:s3:::{bucket}"),
        ),
        ("GET", true) => ("ListBucket", format!("arn:aws:s3:::{bucket}")),
        ("HEAD", true) => ("ListBucket", format!("arn:aws:s3:::{bucket}")),
        ("PUT", true) => ("CreateBucket", format!("arn:aws:s3:::{bucket}")),
        ("DELETE", true) => ("DeleteBucket", format!("arn:aws:s3:::{bucket}")),
        _ => ("Unknown", "*".into()),
    };
    let action = format!("s3:{action}");
    let mut check = Check::new(&action, resource);
    // ListObjects(V2) is authorized as s3:ListBucket with its `prefix` parameter as the
    // `s3:prefix` key, absent when the request has none, so that a condition on it fails
    // (Amazon S3 user guide, "Condition key examples", s3:prefix:
    // https://docs.aws.amazon.com/AmazonS3/latest/userguide/amazon-s3-policy-keys.html).
    if action == "s3:ListBucket" {
        if let Some(prefix) = q.split('&').find_map(|p| p.strip_prefix("prefix=")) {
            let prefix = urlencoding::decode(prefix)
                .map(|c| c.into_owned())
                .unwrap_or_default();
            check = check.with("s3:prefix", prefix);
        }
    }
    (action.clone(), vec![check])
}

/// RDS (query protocol): a snapshot's create and describe name their source and the snapshot
/// (the Service Authorization Reference's resource types for each action), and tags given on
/// create are authorized as rds:AddTagsToResource on the new snapshot.
fn rds(region: &str, form: &HashMap<String, String>) -> (String, Vec<Check>) {
    let op = form.get("Action").cloned().unwrap_or_default();
    let a = format!("rds:{op}");
    let arn = |kind: &str, key: &str| {
        form.get(key)
            .map(|id| format!("arn:aws:rds:{region}:{ACCOUNT}:{kind}:{id}"))
    };
    let tagged = form.keys().any(|k| k.starts_with("Tags."));
    let (source, target) = match op.as_str() {
        "CreateDBSnapshot" => (
            arn("db", "DBInstanceIdentifier"),
            arn("snapshot", "DBSnapshotIdentifier"),
        ),
        "CreateDBClusterSnapshot" => (
            arn("cluster", "DBClusterIdentifier"),
            arn("cluster-snapshot", "DBClusterSnapshotIdentifier"),
        ),
        // Listing a source's snapshots is authorized on the source.
        "DescribeDBSnapshots" => (
            arn("db", "DBInstanceIdentifier"),
            arn("snapshot", "DBSnapshotIdentifier"),
        ),
        "DescribeDBClusterSnapshots" => (
            arn("cluster", "DBClusterIdentifier"),
            arn("cluster-snapshot", "DBClusterSnapshotIdentifier"),
        ),
        "DeleteDBSnapshot" => (None, arn("snapshot", "DBSnapshotIdentifier")),
        "DeleteDBClusterSnapshot" => (None, arn("cluster-snapshot", "DBClusterSnapshotIdentifier")),
        _ => (None, None),
    };
    let mut checks: Vec<Check> = [&source, &target]
        .into_iter()
        .flatten()
        .map(|r| Check::new(&a, r.clone()))
        .collect();
    if checks.is_empty() {
        checks.push(Check::new(&a, "*"));
    }
    if let (true, Some(t), true) = (op.starts_with("Create"), &target, tagged) {
        let mut c = Check::new("rds:AddTagsToResource", t.clone());
        for (k, v) in form {
            // Tags.Tag.N.Key / Tags.Tag.N.Value (or Tags.member.N.*).
            if let Some(n) = k.strip_suffix(".Key").filter(|p| p.starts_with("Tags.")) {
                if let Some(value) = form.get(&format!("{n}.Value")) {
                    c = c.with(&format!("aws:RequestTag/{v}"), value.clone());
                }
            }
        }
        checks.push(c);
    }
    (a, checks)
}

/// (action, checks) of any request the front door sees.
pub fn checks(w: &Wire) -> (String, Vec<Check>) {
    match w.service {
        "ec2" => {
            let (a, c) = ec2(w.region, &url_form(w.body));
            (format!("ec2:{a}"), c)
        }
        "s3" => s3(w),
        "rds" => rds(w.region, &url_form(w.body)),
        "lambda" if w.path.ends_with("/invocations") => {
            let target = w
                .path
                .trim_start_matches("/2015-03-31/functions/")
                .trim_end_matches("/invocations");
            let target = urlencoding::decode(target)
                .map(|c| c.into_owned())
                .unwrap_or_default();
            let arn = if target.starts_with("arn:") {
                target
            } else {
                format!("arn:aws:lambda:{}:{ACCOUNT}:function:{target}", w.region)
            };
            let a = "lambda:InvokeFunction".to_string();
            (a.clone(), vec![Check::new(&a, arn)])
        }
        service => {
            if let Some(t) = w.target {
                let op = t.rsplit('.').next().unwrap_or_default();
                let input: serde_json::Value = serde_json::from_slice(w.body).unwrap_or_default();
                let c = json_checks(w.region, service, op, &input);
                return (format!("{service}:{op}"), c);
            }
            // Query protocol (SNS, SQS's old form, STS, IAM).
            let form = url_form(w.body);
            let op = form.get("Action").cloned().unwrap_or_default();
            let a = format!("{service}:{op}");
            let resource = form
                .get("TopicArn")
                .or(form.get("TargetArn"))
                .cloned()
                .unwrap_or_else(|| "*".into());
            (a.clone(), vec![Check::new(&a, resource)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_instances_asks_for_every_resource_it_touches() {
        let body = "Action=RunInstances&ImageId=ami-1&SubnetId=subnet-1&SecurityGroupId.1=sg-1\
            &InstanceMarketOptions.MarketType=spot&IamInstanceProfile.Name=ephemera-worker\
            &TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key=ephemera%3Amanaged\
            &TagSpecification.1.Tag.1.Value=true";
        let w = Wire {
            region: "eu-west-1",
            service: "ec2",
            method: "POST",
            path: "/",
            query: "",
            target: None,
            body: body.as_bytes(),
        };
        let (action, c) = checks(&w);
        assert_eq!(action, "ec2:RunInstances");
        let resources: Vec<&str> = c.iter().map(|c| c.resource.as_str()).collect();
        assert!(resources.contains(&"arn:aws:ec2:eu-west-1::image/ami-1"));
        assert!(resources.contains(&"arn:aws:ec2:eu-west-1:123456789012:subnet/subnet-1"));
        assert!(resources.contains(&"arn:aws:ec2:eu-west-1:123456789012:spot-instances-request/*"));
        let instance = &c[0];
        assert_eq!(instance.context["aws:RequestTag/ephemera:managed"], "true");
        let tag = c.iter().find(|c| c.action == "ec2:CreateTags").unwrap();
        assert_eq!(tag.context["ec2:CreateAction"], "RunInstances");
        let pass = c.iter().find(|c| c.action == "iam:PassRole").unwrap();
        assert_eq!(
            pass.resource,
            "arn:aws:iam::123456789012:role/ephemera-worker-role"
        );
    }

    #[test]
    fn a_listing_carries_its_prefix_as_s3_prefix() {
        let list = |query: &str| {
            let w = Wire {
                region: "us-east-1",
                service: "s3",
                method: "GET",
                path: "/b",
                query,
                target: None,
                body: b"",
            };
            checks(&w).1.remove(0)
        };
        let c = list("list-type=2&prefix=runs%2Fr1%2Fworker-1%2F");
        assert_eq!(c.action, "s3:ListBucket");
        assert_eq!(c.context["s3:prefix"], "runs/r1/worker-1/");
        assert!(!list("list-type=2").context.contains_key("s3:prefix"));
        assert!(!list("uploads").context.contains_key("s3:prefix"));
    }

    #[test]
    fn json_services_name_their_resources() {
        let body = br#"{"Name":"/ephemera/runs/r/started"}"#;
        let w = Wire {
            region: "us-east-2",
            service: "ssm",
            method: "POST",
            path: "/",
            query: "",
            target: Some("AmazonSSM.GetParameter"),
            body,
        };
        let (a, c) = checks(&w);
        assert_eq!(a, "ssm:GetParameter");
        assert_eq!(
            c[0].resource,
            "arn:aws:ssm:us-east-2:123456789012:parameter/ephemera/runs/r/started"
        );
        let body = br#"{"ServiceCode":"ec2","QuotaCode":"L-1"}"#;
        let w = Wire {
            target: Some("ServiceQuotasV20190624.GetAWSDefaultServiceQuota"),
            service: "servicequotas",
            body,
            ..w
        };
        assert_eq!(checks(&w).1[0].resource, "*");
        let body =
            br#"{"logGroupName":"/ephemera/workers","logStreamName":"fx/1/i-0abc","logEvents":[]}"#;
        let w = Wire {
            target: Some("Logs_20140328.PutLogEvents"),
            service: "logs",
            body,
            ..w
        };
        let (a, c) = checks(&w);
        assert_eq!(a, "logs:PutLogEvents");
        assert_eq!(
            c[0].resource,
            "arn:aws:logs:us-east-2:123456789012:log-group:/ephemera/workers:log-stream:fx/1/i-0abc"
        );
        let w = Wire {
            target: Some("Logs_20140328.CreateLogStream"),
            ..w
        };
        assert_eq!(
            checks(&w).1[0].resource,
            "arn:aws:logs:us-east-2:123456789012:log-group:/ephemera/workers:*"
        );
    }
}

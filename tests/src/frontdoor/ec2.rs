//! EC2 as a new account on real AWS answers where moto is lenient: an instance not found by id
//! right after its launch
//! (https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html); a type the
//! region does not offer failing DescribeInstanceTypes
//! (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstanceTypes.html);
//! RunInstances idempotent by ClientToken
//! (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html), with its
//! `resolve:ssm:` ImageId resolved, a root volume no smaller than the image's snapshot
//! (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/block-device-mapping-concepts.html),
//! the vCPU quotas (`crate::vcpu_limits`), and an instance terminated at launch when the launching
//! principal may not use the EBS key
//! (https://docs.aws.amazon.com/ebs/latest/userguide/ebs-encryption-requirements.html,
//! https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/troubleshooting-launch.html);
//! GetEbsDefaultKmsKeyId
//! (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetEbsDefaultKmsKeyId.html);
//! state reasons dated in GMT
//! (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstances.html); and
//! EC2's request-rate buckets (`crate::throttle`). Spot's own behaviours are in `spot`.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::Response;

use super::spot::spot_price_history;
use super::{proxy_raw, rebuild, xml_escape, FrontDoor, ADMIN_KEY};
use crate::iam::{Check, Principal, ACCOUNT};
use crate::requests;
use crate::throttle::{self, Throttles};
use crate::vcpu_limits::{self, Judged};

/// An image's root snapshot: its size in GiB and its id.
pub(super) type RootSnapshot = (u32, String);

/// EC2 as a new account on real AWS answers where moto is lenient.
pub(super) async fn fresh_account_ec2(
    door: &FrontDoor,
    principal: Option<&Principal>,
    region: &str,
    action: &str,
    form: &HashMap<String, String>,
    parts: &axum::http::request::Parts,
    bytes: &axum::body::Bytes,
) -> Option<Response<Body>> {
    let ids: Vec<String> = (1..=100)
        .map_while(|n| form.get(&format!("InstanceId.{n}")).cloned())
        .collect();
    match action {
        // Right after RunInstances an instance may not be found by id for a while
        // (https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html).
        "DescribeInstances" | "DescribeInstanceStatus" => {
            let hidden = {
                let mut unseen = door.not_visible_yet.lock().unwrap();
                let id = ids.iter().find(|id| {
                    unseen
                        .get(&(region.to_string(), id.to_string()))
                        .is_some_and(|(n, at)| *n > 0 && at.elapsed() < NOT_VISIBLE_FOR)
                });
                id.cloned().inspect(|id| {
                    if let Some((n, _)) = unseen.get_mut(&(region.to_string(), id.clone())) {
                        *n -= 1;
                    }
                })
            };
            if let Some(id) = hidden {
                return Some(ec2_error(
                    400,
                    "InvalidInstanceID.NotFound",
                    &format!("The instance ID '{id}' does not exist"),
                ));
            }
            if action != "DescribeInstances" {
                return None;
            }
            let mut resp = proxy_raw(door, parts, bytes.clone()).await?;
            // EC2 dates a transition in GMT ("User initiated (2019-12-23 00:07:23 GMT)",
            // https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstances.html
            // examples); moto writes UTC, which the cost report would not read as a time.
            resp.2 = door
                .with_spot_reasons(region, resp.2)
                .replace(" UTC)</reason>", " GMT)</reason>");
            let gone = door.without_vanished(region, &mut resp.2);
            if let Some(id) = ids.iter().find(|id| gone.contains(id)) {
                return Some(ec2_error(
                    400,
                    "InvalidInstanceID.NotFound",
                    &format!("The instance ID '{id}' does not exist"),
                ));
            }
            Some(rebuild(resp))
        }
        // A type the region does not offer fails the whole call
        // (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstanceTypes.html).
        "DescribeInstanceTypes" => {
            let asked: Vec<String> = (1..=100)
                .map_while(|n| form.get(&format!("InstanceType.{n}")).cloned())
                .collect();
            if asked.is_empty() {
                return None;
            }
            let resp = proxy_raw(door, parts, bytes.clone()).await?;
            let known: Vec<&str> = resp
                .2
                .split("<instanceType>")
                .skip(1)
                .filter_map(|s| s.split("</instanceType>").next())
                .collect();
            let unoffered = door.unoffered.lock().unwrap();
            let missing: Vec<&String> = asked
                .iter()
                .filter(|t| {
                    !known.contains(&t.as_str())
                        || unoffered.contains(&(region.to_string(), t.to_string()))
                })
                .collect();
            if missing.is_empty() {
                return Some(rebuild(resp));
            }
            Some(ec2_error(
                400,
                "InvalidInstanceType",
                &format!(
                    "The following supplied instance types do not exist: [{}]",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
        // moto prices every Spot hour at $0.00001 dated 2006; AWS answers with the price in force
        // at StartTime (dated earlier) and each change within the window, per zone
        // (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSpotPriceHistory.html).
        "DescribeSpotPriceHistory" => Some(spot_price_history(form)),
        // moto does not serve it: the scores of the staged table, with its own limits
        // (`spot_placement`, which cites AWS's reference and user guide).
        "GetSpotPlacementScores" => Some(door.spot_placement_scores(region, form).await),
        // moto does not serve it; AWS answers the key's ARN, AWS's own `alias/aws/ebs` until the
        // account sets another
        // (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetEbsDefaultKmsKeyId.html).
        "GetEbsDefaultKmsKeyId" => Some(
            Response::builder()
                .status(200)
                .header("content-type", "text/xml")
                .body(Body::from(format!(
                    "<GetEbsDefaultKmsKeyIdResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                     <requestId>ebs-default-key</requestId><kmsKeyId>{}</kmsKeyId>\
                     </GetEbsDefaultKmsKeyIdResponse>",
                    door.ebs_default_key(region)
                )))
                .expect("a response"),
        ),
        // ClientToken makes RunInstances idempotent: the same token with the same parameters
        // returns the first call's instance, with other parameters IdempotentParameterMismatch
        // (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html).
        "RunInstances" => {
            // EC2 resolves an ImageId of `resolve:ssm:<parameter>` to the AMI id the parameter
            // holds, and the instance shows that id (EC2 User Guide, "Use a Systems Manager
            // parameter instead of an AMI ID"); moto keeps the literal. Resolved here, before
            // the rest reads the image.
            let resolved = door.resolve_ssm_image(region, form).await;
            let (form, bytes) = match &resolved {
                Some((f, b)) => (f, b),
                None => (form, bytes),
            };
            // The SDKs fill ClientToken in (an idempotency token); a request without one is
            // no retry of anything.
            let token = form.get("ClientToken").cloned();
            let mut params: Vec<(&String, &String)> = form
                .iter()
                .filter(|(k, _)| *k != "ClientToken" && *k != "Version")
                .collect();
            params.sort();
            let digest = format!("{params:?}");
            let key = token.map(|t| (region.to_string(), t));
            let seen = key
                .as_ref()
                .and_then(|k| door.client_tokens.lock().unwrap().get(k).cloned());
            if let Some((seen, answer)) = seen {
                return Some(if seen == digest {
                    rebuild(answer)
                } else {
                    ec2_error(
                        400,
                        "IdempotentParameterMismatch",
                        "The client token you have provided is associated with a resource that is already deleted or has different parameters. Please use a different client token.",
                    )
                });
            }
            if let Some(refused) = door.smaller_than_snapshot(region, form).await {
                return Some(refused);
            }
            // The vCPU quota, counted and launched against one launch at a time.
            let lock = door.vcpu_limits.region_lock(region);
            let _one_at_a_time = lock.lock().await;
            let judged = door.judge_vcpus(region, form).await;
            if let Judged::Refused(r) = &judged {
                door.vcpu_limits.record(region, &judged);
                let (code, message) = vcpu_limits::refusal_error(r);
                return Some(ec2_error(400, code, &message));
            }
            let resp = proxy_raw(door, parts, bytes.clone()).await?;
            if resp.0 == 200 {
                door.vcpu_limits.record(region, &judged);
                let ids: Vec<String> = resp
                    .2
                    .split("<instanceId>")
                    .skip(1)
                    .filter_map(|id| id.split("</instanceId>").next())
                    .map(str::to_string)
                    .collect();
                if door.kms_key_refused(principal, region, form) {
                    door.terminate_at_launch(region, &ids).await;
                }
                let mut unseen = door.not_visible_yet.lock().unwrap();
                for id in &ids {
                    unseen.insert(
                        (region.to_string(), id.clone()),
                        (NOT_VISIBLE_CALLS, std::time::Instant::now()),
                    );
                }
                if let Some(key) = key {
                    door.client_tokens
                        .lock()
                        .unwrap()
                        .insert(key, (digest, resp.clone()));
                }
            }
            Some(rebuild(resp))
        }
        _ => None,
    }
}

/// How many by-id Describe calls a new instance stays invisible to, within how long of its
/// launch: propagation takes seconds from the launch, not a number of calls, so a first look
/// minutes later (a health check queued behind throttled invocations) finds it; `make scale`
/// failed 23 of 200 runs at their boot deadline when the hiding had no end in time.
const NOT_VISIBLE_CALLS: u32 = 2;
const NOT_VISIBLE_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// EC2's buckets for one request (`throttle::ec2_request_bucket`, and the resource bucket of
/// calls that start or end instances, one token an instance); false when EC2 would answer
/// RequestLimitExceeded. Throttling comes before any other answer, as in EC2.
pub(super) fn ec2_buckets(
    throttles: &Throttles,
    region: &str,
    action: &str,
    form: &HashMap<String, String>,
) -> bool {
    let what = format!("ec2:{action}");
    if !throttles.take_from(region, action, throttle::ec2_request_bucket(action), &what) {
        return false;
    }
    let Some(bucket) = throttle::ec2_resource_bucket(action) else {
        return true;
    };
    let instances = match action {
        "RunInstances" => form
            .get("MaxCount")
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(1.0),
        _ => form.keys().filter(|k| k.starts_with("InstanceId.")).count() as f64,
    };
    throttles.take_n(
        region,
        &format!("{action} instances"),
        bucket,
        instances,
        &format!("{what} (instances)"),
    )
}

impl FrontDoor {
    /// An EC2 client straight to moto in `region`, as the administrator.
    pub(super) fn moto_ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        self.moto_ec2
            .lock()
            .unwrap()
            .entry(region.to_string())
            .or_insert_with(|| {
                let conf = aws_config::SdkConfig::builder()
                    .behavior_version(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region.to_string()))
                    .endpoint_url(&self.moto)
                    .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
                        aws_sdk_ec2::config::Credentials::new(
                            ADMIN_KEY, "testing", None, None, "harness",
                        ),
                    ))
                    .build();
                aws_sdk_ec2::Client::new(&conf)
            })
            .clone()
    }

    /// The launch asked for in `form` judged against its vCPU quota (`vcpu_limits`).
    async fn judge_vcpus(&self, region: &str, form: &HashMap<String, String>) -> Judged {
        let Some(instance_type) = form.get("InstanceType") else {
            return Judged::Unknown;
        };
        let market = if requests::is_spot(form) {
            ephemera_core::Market::Spot
        } else {
            ephemera_core::Market::OnDemand
        };
        let count = form
            .get("MaxCount")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let applied = |code: &str| {
            self.with_quotas(region, |q| {
                q.applied.get(code).copied().unwrap_or(q.default_value)
            })
        };
        self.vcpu_limits
            .judge(
                &self.moto_ec2(region),
                instance_type,
                market,
                count,
                applied,
            )
            .await
    }

    /// The account's default EBS key in `region`.
    pub fn ebs_default_key(&self, region: &str) -> String {
        self.ebs_default_key
            .lock()
            .unwrap()
            .get(region)
            .cloned()
            .unwrap_or_else(|| format!("arn:aws:kms:{region}:{ACCOUNT}:alias/aws/ebs"))
    }

    /// Whether EC2 would find the launching principal unable to use the root volume's
    /// customer managed key (the request's KmsKeyId, else the account's default): it needs
    /// kms:CreateGrant and the data-key actions through EC2
    /// (https://docs.aws.amazon.com/ebs/latest/userguide/ebs-encryption-requirements.html).
    fn kms_key_refused(
        &self,
        principal: Option<&Principal>,
        region: &str,
        form: &HashMap<String, String>,
    ) -> bool {
        let Some(principal) = principal else {
            return false; // the administrator
        };
        let key = form
            .get("BlockDeviceMapping.1.Ebs.KmsKeyId")
            .cloned()
            .unwrap_or_else(|| self.ebs_default_key(region));
        if key.ends_with("alias/aws/ebs") {
            return false; // AWS's own key: no grant to make
        }
        [
            "kms:CreateGrant",
            "kms:GenerateDataKeyWithoutPlaintext",
            "kms:Decrypt",
        ]
        .iter()
        .any(|action| {
            let check = Check::new(action, key.clone())
                .with("kms:ViaService", format!("ec2.{region}.amazonaws.com"));
            self.authorize(principal, region, &check).is_err()
        })
    }

    /// EC2 accepts the launch, then the instance goes from pending to terminated with
    /// `Client.InternalError` (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/troubleshooting-launch.html).
    async fn terminate_at_launch(&self, region: &str, ids: &[String]) {
        for id in ids {
            self.kms_refused
                .lock()
                .unwrap()
                .insert((region.to_string(), id.clone()));
            let _ = self
                .moto_query(
                    region,
                    "ec2",
                    &format!("Action=TerminateInstances&Version=2016-11-15&InstanceId.1={id}"),
                )
                .await;
        }
    }

    /// Terminated instances in `region` vanish from DescribeInstances `after` their termination,
    /// as on AWS ("Recently terminated instances might appear in the returned results. This
    /// interval is usually less than one hour":
    /// https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstances.html), where
    /// moto keeps them for good; asked by id, one is `InvalidInstanceID.NotFound`. Tests that
    /// cannot wait an hour set a shorter one.
    pub fn terminated_vanish_after(&self, region: &str, after: std::time::Duration) {
        self.vanish_after
            .lock()
            .unwrap()
            .insert(region.to_string(), after);
    }

    /// `xml` (a DescribeInstances answer) without the instances terminated longer ago than the
    /// region's window (by the time in their transition reason); their ids.
    fn without_vanished(&self, region: &str, xml: &mut String) -> Vec<String> {
        let Some(after) = self.vanish_after.lock().unwrap().get(region).copied() else {
            return vec![];
        };
        let mut ids: Vec<String> = xml
            .split("<instanceId>")
            .skip(1)
            .filter_map(|s| s.split("</instanceId>").next())
            .map(str::to_string)
            .collect();
        ids.dedup();
        let mut gone = vec![];
        for id in ids {
            let Some((from, to)) = instance_span(xml, &id) else {
                continue;
            };
            let block = &xml[from..to];
            let ended = block
                .split("<reason>")
                .nth(1)
                .and_then(|r| r.split("</reason>").next())
                .and_then(ephemera_functions::handlers::terminate_report::parse_transition_time);
            let vanished = block.contains("<name>terminated</name>")
                && ended.is_some_and(|t| {
                    (chrono::Utc::now() - t).to_std().unwrap_or_default() >= after
                });
            if vanished {
                xml.replace_range(from..to, "");
                gone.push(id);
            }
        }
        gone
    }

    /// moto's DescribeInstances answer with Spot's state reason on the instances Spot took, and
    /// EC2's on those it terminated at launch.
    fn with_spot_reasons(&self, region: &str, mut xml: String) -> String {
        let refused: Vec<String> = self
            .kms_refused
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == region)
            .map(|(_, i)| i.clone())
            .collect();
        for id in refused {
            replace_state_reason(
                &mut xml,
                &id,
                "<stateReason><code>Client.InternalError</code><message>Client.InternalError: Client error on launch</message></stateReason>",
            );
        }
        let reclaimed: Vec<String> = self
            .spot_reclaimed
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == region)
            .map(|(_, i)| i.clone())
            .collect();
        for id in reclaimed {
            replace_state_reason(
                &mut xml,
                &id,
                "<stateReason><code>Server.SpotInstanceTermination</code><message>Server.SpotInstanceTermination: Spot instance termination</message></stateReason>",
            );
        }
        xml
    }

    /// `form` with its `ImageId=resolve:ssm:<name>` replaced by the parameter's value, and the
    /// request's body so rewritten; None when the image is an id, or the parameter does not
    /// exist (left to moto).
    async fn resolve_ssm_image(
        &self,
        region: &str,
        form: &HashMap<String, String>,
    ) -> Option<(HashMap<String, String>, axum::body::Bytes)> {
        let name = form.get("ImageId")?.strip_prefix("resolve:ssm:")?;
        let answer = self
            .moto_json(
                region,
                "ssm",
                "AmazonSSM.GetParameter",
                serde_json::json!({ "Name": name }),
            )
            .await?;
        let ami = answer["Parameter"]["Value"].as_str()?.to_string();
        let mut resolved = form.clone();
        resolved.insert("ImageId".into(), ami);
        let body = resolved
            .iter()
            .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        Some((resolved, axum::body::Bytes::from(body)))
    }

    /// moto launches a root volume of any size; EC2 refuses one smaller than the image's root
    /// snapshot ("The specified size must be greater than or equal to the size of the specified
    /// snapshot", https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/block-device-mapping-concepts.html)
    /// at once, as `InvalidBlockDeviceMapping` with this message (as users report it, e.g.
    /// https://github.com/aws/karpenter-provider-aws/issues/3302).
    async fn smaller_than_snapshot(
        &self,
        region: &str,
        form: &HashMap<String, String>,
    ) -> Option<Response<Body>> {
        let image = form.get("ImageId")?;
        let asked: u32 = form
            .get("BlockDeviceMapping.1.Ebs.VolumeSize")?
            .parse()
            .ok()?;
        let key = (region.to_string(), image.clone());
        let cached = self.image_snapshot_gib.lock().unwrap().get(&key).cloned();
        let least = match cached {
            Some(v) => v,
            None => {
                let body = format!("Action=DescribeImages&Version=2016-11-15&ImageId.1={image}");
                let xml = self
                    .moto_query(region, "ec2", &body)
                    .await
                    .ok()?
                    .text()
                    .await
                    .ok()?;
                let field = |name: &str| {
                    xml.split(&format!("<{name}>"))
                        .nth(1)
                        .and_then(|r| r.split(&format!("</{name}>")).next())
                        .map(|v| v.trim().to_string())
                };
                let size = field("volumeSize")
                    .and_then(|v| v.parse().ok())
                    .map(|gib| (gib, field("snapshotId").unwrap_or_default()));
                self.image_snapshot_gib
                    .lock()
                    .unwrap()
                    .insert(key, size.clone());
                size
            }
        }?;
        let (least, snapshot) = least;
        (asked < least).then(|| {
            ec2_error(
                400,
                "InvalidBlockDeviceMapping",
                &format!(
                    "Volume of size {asked}GB is smaller than  snapshot '{snapshot}', expect size >= {least}GB"
                ),
            )
        })
    }

    /// An instance's tags and its instance profile's ARN, as moto holds them (for
    /// TerminateInstances' `ec2:ResourceTag/…` and `ec2:InstanceProfile` conditions).
    pub(super) async fn instance_keys(
        &self,
        region: &str,
        id: &str,
    ) -> (Vec<(String, String)>, Option<String>) {
        let body = format!("Action=DescribeInstances&Version=2016-11-15&InstanceId.1={id}");
        let Ok(resp) = self.moto_query(region, "ec2", &body).await else {
            return (vec![], None);
        };
        let text = resp.text().await.unwrap_or_default();
        let profile = text
            .split("<iamInstanceProfile>")
            .nth(1)
            .and_then(|p| p.split("</iamInstanceProfile>").next())
            .and_then(|p| p.split("<arn>").nth(1))
            .and_then(|a| a.split("</arn>").next())
            .map(str::to_string);
        let Some(set) = text.split("<tagSet>").nth(1) else {
            return (vec![], profile);
        };
        let set = set.split("</tagSet>").next().unwrap_or_default();
        let tags = set
            .split("<item>")
            .filter_map(|item| {
                let key = item.split("<key>").nth(1)?.split("</key>").next()?;
                let value = item.split("<value>").nth(1)?.split("</value>").next()?;
                Some((key.to_string(), value.to_string()))
            })
            .collect();
        (tags, profile)
    }
}

/// Sets instance `id`'s state reason in a DescribeInstances answer.
fn replace_state_reason(xml: &mut String, id: &str, reason: &str) {
    let Some((from, to)) = instance_span(xml, id) else {
        return;
    };
    let block = &xml[from..to];
    if let (Some(open), Some(close)) = (block.find("<stateReason>"), block.find("</stateReason>")) {
        xml.replace_range(from + open..from + close + "</stateReason>".len(), reason);
    }
}

/// The span of the `<instancesSet>` item that holds `<instanceId>id</instanceId>` (items nest:
/// tags, volumes and interfaces are items too, so depth is counted).
fn instance_span(xml: &str, id: &str) -> Option<(usize, usize)> {
    let needle = format!("<instanceId>{id}</instanceId>");
    let mut search = 0;
    while let Some(set) = xml[search..].find("<instancesSet>").map(|i| i + search) {
        let mut pos = set;
        let mut depth = 0usize;
        let mut start = 0;
        loop {
            let open = xml[pos..].find("<item>").map(|i| i + pos);
            let close = xml[pos..].find("</item>").map(|i| i + pos);
            let end_set = xml[pos..].find("</instancesSet>").map(|i| i + pos);
            match (open, close) {
                (Some(o), Some(c)) if o < c && end_set.is_none_or(|e| o < e) => {
                    if depth == 0 {
                        start = o;
                    }
                    depth += 1;
                    pos = o + "<item>".len();
                }
                (_, Some(c)) if depth > 0 => {
                    depth -= 1;
                    pos = c + "</item>".len();
                    if depth == 0 && xml[start..pos].contains(&needle) {
                        return Some((start, pos));
                    }
                }
                _ => break,
            }
        }
        search = pos.max(set + 1);
    }
    None
}

pub(crate) fn ec2_error(status: u16, code: &str, message: &str) -> Response<Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{}</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>",
        xml_escape(message)
    );
    Response::builder()
        .status(status)
        .header("content-type", "text/xml;charset=UTF-8")
        .body(Body::from(xml))
        .unwrap()
}

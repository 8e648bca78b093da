//! EC2: instance types, instances by tag, launch, status checks, termination, Spot prices.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    Instance, InstanceInterruptionBehavior, InstanceMarketOptionsRequest,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceMetadataTagsState,
    InstanceType, MarketType, ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions,
    Tag, TagSpecification, TargetCapacityUnitType, VolumeType,
};
use chrono::{DateTime, Utc};
use ephemera_core::cost::PricePoint;
use ephemera_core::instance_state::InstanceState;
use ephemera_core::plan::Zone;
use ephemera_core::Market;

use super::{to_chrono, to_smithy};
use crate::error::AwsError;

/// The parts of an instance ephemera looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    pub id: String,
    pub instance_type: String,
    /// None when EC2 names a state this code does not know.
    pub state: Option<InstanceState>,
    pub state_reason: Option<String>,
    pub state_transition_reason: Option<String>,
    pub launch_time: Option<DateTime<Utc>>,
    pub availability_zone: Option<String>,
    pub subnet: Option<String>,
    pub market: Market,
    pub tags: BTreeMap<String, String>,
    pub http_tokens: Option<String>,
    pub client_token: Option<String>,
    /// The ARN of the instance profile it was launched with (`ec2:InstanceProfile`).
    pub profile: Option<String>,
}

/// A RunInstances error as EC2 answered it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub market: Market,
    pub instance_type: String,
    pub subnet: String,
    pub security_groups: Vec<String>,
    pub image: String,
    pub volume_gib: u32,
    /// The image's root device name (DescribeImages).
    pub root_device: String,
    pub instance_profile: Option<String>,
    /// The root volume's KMS key; None: the account's default EBS key.
    pub kms_key: Option<String>,
    pub client_token: String,
    pub user_data_base64: String,
    pub tags: BTreeMap<String, String>,
}

/// An image's root device and the size of the snapshot it is made from: the root volume may
/// not be smaller (RunInstances: InvalidBlockDeviceMapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootVolume {
    pub device: String,
    pub snapshot_gib: Option<u32>,
}

/// DescribeInstanceStatus's two checks (`ok`, `impaired`, `initializing`, …); None before EC2
/// reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusChecks {
    pub instance: Option<String>,
    pub system: Option<String>,
}

pub trait Compute: Send + Sync {
    fn vcpus(
        &self,
        types: &[String],
    ) -> impl Future<Output = Result<HashMap<String, u32>, AwsError>> + Send;
    /// Instances in `states` carrying every tag in `tags` (all instances when `tags` is empty).
    fn instances(
        &self,
        tags: &[(&str, &str)],
        states: &[InstanceState],
    ) -> impl Future<Output = Result<Vec<InstanceView>, AwsError>> + Send;
    fn describe(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<InstanceView>, AwsError>> + Send;
    fn run(
        &self,
        req: &LaunchRequest,
    ) -> impl Future<Output = Result<InstanceView, RunError>> + Send;
    /// The instance's status checks from DescribeInstanceStatus.
    fn status_checks(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<StatusChecks, AwsError>> + Send;
    fn terminate(&self, ids: &[String]) -> impl Future<Output = Result<(), AwsError>> + Send;
    /// The image's root device name (/dev/xvda, /dev/sda1) and its snapshot's size.
    /// The account's default EBS key in this region (GetEbsDefaultKmsKeyId).
    fn ebs_default_key(&self) -> impl Future<Output = Result<String, AwsError>> + Send;
    fn root_volume(&self, image: &str)
        -> impl Future<Output = Result<RootVolume, AwsError>> + Send;
    fn spot_prices(
        &self,
        instance_type: &str,
        availability_zone: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<PricePoint>, AwsError>> + Send;
}

/// What GetSpotPlacementScores answered instead of scores: its code and message, kept for the
/// plan to show ("score unknown: MaxConfigLimitExceeded: …"); a plan never fails for a score.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ScoreRefusal {
    pub code: String,
    pub message: String,
}

/// What `ephemera plan` reads of EC2 beyond [`Compute`]: each subnet's zone and the Spot
/// placement scores, both read-only.
pub trait SpotPlacement: Send + Sync {
    /// Each subnet that exists, with its zone's name and id; a missing one is left out
    /// (DescribeSubnets by filter, which, unlike by id, does not fail the whole call).
    fn subnet_zones(
        &self,
        subnets: &[String],
    ) -> impl Future<Output = Result<BTreeMap<String, Zone>, AwsError>> + Send;
    /// GetSpotPlacementScores for `instance_types` at `target_vcpus` in each zone of `region`
    /// (SingleAvailabilityZone): the score (1–10) by zone id. AWS scores a configuration; a
    /// score of a single type is the score of that type alone
    /// (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-placement-score.html>).
    fn placement_scores(
        &self,
        instance_types: &[String],
        target_vcpus: u32,
        region: &str,
    ) -> impl Future<Output = Result<BTreeMap<String, u8>, ScoreRefusal>> + Send;
}

impl SpotPlacement for aws_sdk_ec2::Client {
    async fn subnet_zones(&self, subnets: &[String]) -> Result<BTreeMap<String, Zone>, AwsError> {
        let mut out = BTreeMap::new();
        if subnets.is_empty() {
            return Ok(out);
        }
        let found = self
            .describe_subnets()
            .filters(
                Filter::builder()
                    .name("subnet-id")
                    .set_values(Some(subnets.to_vec()))
                    .build(),
            )
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| AwsError::sdk("ec2", "DescribeSubnets", e))?;
        for s in found {
            if let (Some(id), Some(name), Some(zone_id)) = (
                s.subnet_id(),
                s.availability_zone(),
                s.availability_zone_id(),
            ) {
                out.insert(
                    id.to_string(),
                    Zone {
                        name: name.to_string(),
                        id: zone_id.to_string(),
                    },
                );
            }
        }
        Ok(out)
    }

    async fn placement_scores(
        &self,
        instance_types: &[String],
        target_vcpus: u32,
        region: &str,
    ) -> Result<BTreeMap<String, u8>, ScoreRefusal> {
        let scores = self
            .get_spot_placement_scores()
            .set_instance_types(Some(instance_types.to_vec()))
            .target_capacity(target_vcpus.min(i32::MAX as u32) as i32)
            .target_capacity_unit_type(TargetCapacityUnitType::Vcpu)
            .single_availability_zone(true)
            .region_names(region)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| ScoreRefusal {
                code: e.code().unwrap_or("Unknown").to_string(),
                message: e.message().map(str::to_string).unwrap_or_else(|| {
                    aws_smithy_types::error::display::DisplayErrorContext(&e).to_string()
                }),
            })?;
        Ok(scores
            .iter()
            .filter_map(|s| {
                let zone = s.availability_zone_id()?;
                let score = u8::try_from(s.score()?).ok()?;
                Some((zone.to_string(), score))
            })
            .collect())
    }
}

type DescribeTypesError = aws_sdk_ec2::error::SdkError<
    aws_sdk_ec2::operation::describe_instance_types::DescribeInstanceTypesError,
>;

/// vCPUs of each type, one DescribeInstanceTypes call (and its pages).
async fn describe_types(
    ec2: &aws_sdk_ec2::Client,
    types: &[String],
) -> Result<HashMap<String, u32>, DescribeTypesError> {
    let mut out = HashMap::new();
    if types.is_empty() {
        return Ok(out);
    }
    let mut pages = ec2
        .describe_instance_types()
        .set_instance_types(Some(
            types
                .iter()
                .map(|t| InstanceType::from(t.as_str()))
                .collect(),
        ))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for it in page?.instance_types() {
            if let (Some(t), Some(v)) = (
                it.instance_type(),
                it.v_cpu_info().and_then(|v| v.default_v_cpus()),
            ) {
                out.insert(t.as_str().to_string(), v.max(0) as u32);
            }
        }
    }
    Ok(out)
}

pub fn view(i: &Instance) -> InstanceView {
    InstanceView {
        id: i.instance_id().unwrap_or_default().to_string(),
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        state: i
            .state()
            .and_then(|s| s.name())
            .and_then(|n| InstanceState::from_name(n.as_str())),
        state_reason: i.state_reason().and_then(|r| r.code()).map(str::to_string),
        state_transition_reason: i
            .state_transition_reason()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        launch_time: i.launch_time().map(to_chrono),
        availability_zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .map(str::to_string),
        subnet: i.subnet_id().map(str::to_string),
        market: match i.instance_lifecycle().map(|l| l.as_str()) {
            Some("spot") => Market::Spot,
            _ => Market::OnDemand,
        },
        tags: i
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect(),
        profile: i
            .iam_instance_profile()
            .and_then(|p| p.arn())
            .map(str::to_string),
        http_tokens: i
            .metadata_options()
            .and_then(|m| m.http_tokens())
            .map(|t| t.as_str().to_string()),
        client_token: i
            .client_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string),
    }
}

fn tag_spec(kind: ResourceType, tags: &BTreeMap<String, String>) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect(),
        ))
        .build()
}

impl Compute for aws_sdk_ec2::Client {
    async fn vcpus(&self, types: &[String]) -> Result<HashMap<String, u32>, AwsError> {
        let invalid = |e: &DescribeTypesError| e.code() == Some("InvalidInstanceType");
        match describe_types(self, types).await {
            Ok(found) => Ok(found),
            // A type the region does not offer fails the whole call with InvalidInstanceType:
            // ask for each type alone, so the offered ones are known and the others left out
            // (callers name them).
            Err(e) if invalid(&e) => {
                let mut out = HashMap::new();
                for t in types {
                    match describe_types(self, std::slice::from_ref(t)).await {
                        Ok(found) => out.extend(found),
                        Err(e) if invalid(&e) => {}
                        Err(e) => return Err(AwsError::sdk("ec2", "DescribeInstanceTypes", e)),
                    }
                }
                Ok(out)
            }
            Err(e) => Err(AwsError::sdk("ec2", "DescribeInstanceTypes", e)),
        }
    }

    async fn instances(
        &self,
        tags: &[(&str, &str)],
        states: &[InstanceState],
    ) -> Result<Vec<InstanceView>, AwsError> {
        let mut filters: Vec<Filter> = tags
            .iter()
            .map(|(k, v)| {
                Filter::builder()
                    .name(format!("tag:{k}"))
                    .values(*v)
                    .build()
            })
            .collect();
        if !states.is_empty() {
            filters.push(
                Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(states.iter().map(|s| s.name().to_string()).collect()))
                    .build(),
            );
        }
        let reservations = self
            .describe_instances()
            .set_filters(Some(filters))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| AwsError::sdk("ec2", "DescribeInstances", e))?;
        Ok(reservations
            .iter()
            .flat_map(|r| r.instances().iter().map(view))
            .collect())
    }

    async fn describe(&self, ids: &[String]) -> Result<Vec<InstanceView>, AwsError> {
        // Instances terminated long ago vanish from DescribeInstances, and one id it does not
        // find fails the whole call: then each id is asked alone, so the others are found.
        match described(self, ids).await? {
            Some(found) => Ok(found),
            None if ids.len() == 1 => Ok(vec![]),
            None => {
                let mut found = vec![];
                for id in ids {
                    found.extend(
                        described(self, std::slice::from_ref(id))
                            .await?
                            .unwrap_or_default(),
                    );
                }
                Ok(found)
            }
        }
    }

    async fn run(&self, req: &LaunchRequest) -> Result<InstanceView, RunError> {
        let profile = req.instance_profile.as_ref().map(|p| {
            let b = IamInstanceProfileSpecification::builder();
            if p.starts_with("arn:") {
                b.arn(p).build()
            } else {
                b.name(p).build()
            }
        });
        let market = (req.market == Market::Spot).then(|| {
            InstanceMarketOptionsRequest::builder()
                .market_type(MarketType::Spot)
                .spot_options(
                    SpotMarketOptions::builder()
                        .spot_instance_type(SpotInstanceType::OneTime)
                        .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                        .build(),
                )
                .build()
        });
        let mut tag_specs = vec![
            tag_spec(ResourceType::Instance, &req.tags),
            tag_spec(ResourceType::Volume, &req.tags),
        ];
        if req.market == Market::Spot {
            tag_specs.push(tag_spec(ResourceType::SpotInstancesRequest, &req.tags));
        }
        let resp = self
            .run_instances()
            .image_id(&req.image)
            .instance_type(InstanceType::from(req.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .subnet_id(&req.subnet)
            .set_security_group_ids(
                (!req.security_groups.is_empty()).then(|| req.security_groups.clone()),
            )
            .client_token(&req.client_token)
            .set_iam_instance_profile(profile)
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .http_put_response_hop_limit(1)
                    .instance_metadata_tags(InstanceMetadataTagsState::Enabled)
                    .build(),
            )
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(&req.root_device)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(req.volume_gib as i32)
                            .volume_type(VolumeType::Gp3)
                            .encrypted(true)
                            .set_kms_key_id(req.kms_key.clone())
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .set_instance_market_options(market)
            .set_tag_specifications(Some(tag_specs))
            .user_data(&req.user_data_base64)
            .send()
            .await
            .map_err(|e| RunError {
                code: e.code().unwrap_or("Unknown").to_string(),
                message: e.message().map(str::to_string).unwrap_or_else(|| {
                    aws_smithy_types::error::display::DisplayErrorContext(&e).to_string()
                }),
            })?;
        resp.instances().first().map(view).ok_or_else(|| RunError {
            code: "NoInstance".into(),
            message: "RunInstances answered without an instance".into(),
        })
    }

    async fn ebs_default_key(&self) -> Result<String, AwsError> {
        let resp = self
            .get_ebs_default_kms_key_id()
            .send()
            .await
            .map_err(|e| AwsError::sdk("ec2", "GetEbsDefaultKmsKeyId", e))?;
        Ok(resp.kms_key_id().unwrap_or_default().to_string())
    }

    async fn root_volume(&self, image: &str) -> Result<RootVolume, AwsError> {
        let resp = self
            .describe_images()
            .image_ids(image)
            .send()
            .await
            .map_err(|e| AwsError::sdk("ec2", "DescribeImages", e))?;
        let found = resp.images().first();
        let device = found
            .and_then(|i| i.root_device_name())
            .ok_or_else(|| AwsError::Call {
                service: "ec2",
                operation: "DescribeImages",
                code: "InvalidAMIID.NotFound".into(),
                message: format!("image {image} not found or without a root device"),
            })?;
        let snapshot_gib = found
            .map(|i| i.block_device_mappings())
            .unwrap_or_default()
            .iter()
            .find(|m| m.device_name() == Some(device))
            .and_then(|m| m.ebs())
            .and_then(|e| e.volume_size())
            .and_then(|g| u32::try_from(g).ok());
        Ok(RootVolume {
            device: device.to_string(),
            snapshot_gib,
        })
    }

    async fn status_checks(&self, id: &str) -> Result<StatusChecks, AwsError> {
        let resp = self
            .describe_instance_status()
            .instance_ids(id)
            .include_all_instances(true)
            .send()
            .await
            .map_err(|e| AwsError::sdk("ec2", "DescribeInstanceStatus", e))?;
        Ok(resp
            .instance_statuses()
            .first()
            .map(|s| StatusChecks {
                instance: s
                    .instance_status()
                    .and_then(|x| x.status())
                    .map(|x| x.as_str().to_string()),
                system: s
                    .system_status()
                    .and_then(|x| x.status())
                    .map(|x| x.as_str().to_string()),
            })
            .unwrap_or_default())
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), AwsError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await
            .map_err(|e| AwsError::sdk("ec2", "TerminateInstances", e))?;
        Ok(())
    }

    async fn spot_prices(
        &self,
        instance_type: &str,
        availability_zone: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<PricePoint>, AwsError> {
        // EC2 ends the pages with an empty NextToken, which the paginator reads as the end.
        let prices = self
            .describe_spot_price_history()
            .instance_types(InstanceType::from(instance_type))
            .availability_zone(availability_zone)
            .product_descriptions("Linux/UNIX")
            .start_time(to_smithy(start))
            .end_time(to_smithy(end))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| AwsError::sdk("ec2", "DescribeSpotPriceHistory", e))?;
        Ok(prices
            .iter()
            .filter_map(|p| {
                Some(PricePoint {
                    usd_per_hour: p.spot_price()?.parse::<f64>().ok()?,
                    at: to_chrono(p.timestamp()?),
                })
            })
            .collect())
    }
}

/// The instances `ids` names; None when EC2 found one of them not (`InvalidInstanceID.NotFound`).
async fn described(
    ec2: &aws_sdk_ec2::Client,
    ids: &[String],
) -> Result<Option<Vec<InstanceView>>, AwsError> {
    if ids.is_empty() {
        return Ok(Some(vec![]));
    }
    match ec2
        .describe_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .send()
        .await
    {
        Ok(resp) => Ok(Some(
            resp.reservations()
                .iter()
                .flat_map(|r| r.instances().iter().map(view))
                .collect(),
        )),
        Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => Ok(None),
        Err(e) => Err(AwsError::sdk("ec2", "DescribeInstances", e)),
    }
}

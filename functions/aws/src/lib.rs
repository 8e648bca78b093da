//! Small traits over the AWS calls each handler needs, implemented for the SDK clients, so the
//! handlers hold decisions and the adapters hold wire details. A crate of its own so that the
//! CLI, which reads the same ledger and executions, links no handler. The adapters return their
//! own error, [`AwsError`] (what AWS answered); the handlers name the Step Functions error it
//! becomes.

pub mod error;

pub mod ec2;
pub mod executions;
pub mod history;
pub mod ledger;
pub mod objects;
pub mod params;
pub mod pricing;
pub mod quotas;
pub mod sessions;
pub mod snapshots;
pub mod topic;
pub mod vcpus;

use aws_config::SdkConfig;
use chrono::{DateTime, TimeZone, Utc};

pub use ec2::{
    Compute, InstanceView, LaunchRequest, RootVolume, RunError, ScoreRefusal, SpotPlacement,
    StatusChecks,
};
pub use executions::{Executions, TaskTokens};
pub use history::{ExecutionStats, History};
pub use ledger::{Ledger, LedgerTable, Reserved};
pub use objects::{ObjectWriter, Objects};
pub use params::{ParamHousekeeping, Params, SealedParams};
pub use pricing::{PriceList, Quote, Unpriced};
pub use quotas::{Applied, QuotaService};
pub use sessions::{RunSessions, Vend};
pub use snapshots::Snapshots;
pub use topic::Notifier;
pub use vcpus::VcpuReservations;

pub use error::AwsError;

/// Every client the Lambdas use, built once per cold start.
#[derive(Clone, Debug)]
pub struct Aws {
    pub region: String,
    pub ec2: aws_sdk_ec2::Client,
    pub quotas: aws_sdk_servicequotas::Client,
    pub sns: aws_sdk_sns::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub s3: aws_sdk_s3::Client,
    pub sfn: aws_sdk_sfn::Client,
    pub pricing: pricing::PriceListApi,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub rds: aws_sdk_rds::Client,
    pub sts: aws_sdk_sts::Client,
}

impl Aws {
    pub fn from_conf(conf: &SdkConfig) -> Aws {
        Aws {
            region: region(conf),
            ec2: aws_sdk_ec2::Client::new(conf),
            quotas: aws_sdk_servicequotas::Client::new(conf),
            sns: aws_sdk_sns::Client::new(conf),
            ssm: aws_sdk_ssm::Client::new(conf),
            s3: s3_client(conf),
            sfn: aws_sdk_sfn::Client::new(conf),
            pricing: pricing::PriceListApi::new(conf),
            dynamodb: aws_sdk_dynamodb::Client::new(conf),
            rds: aws_sdk_rds::Client::new(conf),
            sts: aws_sdk_sts::Client::new(conf),
        }
    }
}

/// The function's region (Lambda sets AWS_REGION).
pub fn region(conf: &SdkConfig) -> String {
    conf.region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "us-east-1".to_string())
}

/// The S3 client; against an emulator (a custom endpoint) buckets cannot be virtual hosts.
pub fn s3_client(conf: &SdkConfig) -> aws_sdk_s3::Client {
    let s3 = aws_sdk_s3::config::Builder::from(conf)
        .force_path_style(conf.endpoint_url().is_some())
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

pub(crate) fn to_chrono(d: &aws_smithy_types::DateTime) -> DateTime<Utc> {
    Utc.timestamp_opt(d.secs(), d.subsec_nanos())
        .single()
        .unwrap_or_default()
}

pub(crate) fn to_smithy(d: DateTime<Utc>) -> aws_smithy_types::DateTime {
    aws_smithy_types::DateTime::from_secs(d.timestamp())
}

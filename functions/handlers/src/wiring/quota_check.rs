//! quota-check's wiring: EC2, Service Quotas, the Price List and the ledger's vCPU reservations
//! (the handler: `handlers::quota_check`).

use aws_config::SdkConfig;
use chrono::{DateTime, Utc};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

use super::{out, sdk_config};
use crate::aws::pricing::PriceListApi;
use crate::aws::{region, Aws, LedgerTable};
use crate::error::Error;
use crate::function::Function;
use crate::handlers::{parse_input, quota_check};
use crate::settings::Settings;

/// quota-check's clients and settings.
pub struct QuotaCheck {
    ec2: aws_sdk_ec2::Client,
    quotas: aws_sdk_servicequotas::Client,
    prices: PriceListApi,
    /// The vCPUs the stack's runs reserve, in the ledger table.
    ledger: Option<LedgerTable>,
    region: String,
    settings: Settings,
}

impl QuotaCheck {
    pub fn new(conf: &SdkConfig, settings: Settings) -> QuotaCheck {
        QuotaCheck {
            ec2: aws_sdk_ec2::Client::new(conf),
            quotas: aws_sdk_servicequotas::Client::new(conf),
            prices: PriceListApi::new(conf),
            ledger: settings.ledger(&aws_sdk_dynamodb::Client::new(conf)),
            region: region(conf),
            settings,
        }
    }

    /// Its clients out of the harness's whole set.
    pub fn of(aws: &Aws, settings: &Settings) -> QuotaCheck {
        QuotaCheck {
            ec2: aws.ec2.clone(),
            quotas: aws.quotas.clone(),
            prices: aws.pricing.clone(),
            ledger: settings.ledger(&aws.dynamodb),
            region: aws.region.clone(),
            settings: settings.clone(),
        }
    }

    pub async fn call(&self, payload: Value, now: DateTime<Utc>) -> Result<Value, Error> {
        let (region, settings) = (self.region.as_str(), &self.settings);
        let config = quota_check::Config {
            region: region.into(),
            deployment: ephemera_core::admission::Deployment {
                allowed_topics: settings.allowed_topics.clone(),
                artifact_bucket: settings.artifact_bucket.clone(),
                export_bucket: settings.export_bucket.clone(),
                worker_profile: settings.worker_instance_profile.clone(),
                region: Some(region.into()),
                secret_prefix: settings.secret_prefix.clone(),
            },
            requests: quota_bounds(settings),
            ..Default::default()
        };
        let clients = quota_check::Clients {
            ec2: &self.ec2,
            quotas: &self.quotas,
            prices: &self.prices,
            reservations: self.ledger.as_ref(),
        };
        let input = parse_input(Function::QuotaCheck.name(), payload)?;
        out(quota_check::handle(clients, &config, input, now).await?)
    }
}

/// The stack's bounds on quota increase requests, each parameter's default where unset.
fn quota_bounds(settings: &Settings) -> ephemera_core::quota_request::Bounds {
    let d = ephemera_core::quota_request::Bounds::default();
    ephemera_core::quota_request::Bounds {
        cooloff_hours: settings
            .quota_denial_cooloff_hours
            .unwrap_or(d.cooloff_hours),
        max_desired_vcpus: settings
            .max_quota_request_vcpus
            .unwrap_or(d.max_desired_vcpus),
    }
}

/// The bootstrap's body (`src/bin/quota-check.rs`).
pub async fn serve() -> Result<(), lambda_runtime::Error> {
    let f = QuotaCheck::new(&sdk_config().await, Settings::from_env());
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        f.call(event.payload, Utc::now())
    }))
    .await
}

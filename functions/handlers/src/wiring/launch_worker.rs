//! launch-worker's wiring: it prices, launches, signs the token over, and books the run: EC2,
//! the Price List, SSM, STS, SNS and the ledger (the handler: `handlers::launch_worker`).

use aws_config::SdkConfig;
use chrono::{DateTime, Utc};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

use super::{out, sdk_config};
use crate::aws::pricing::PriceListApi;
use crate::aws::{region, Aws, LedgerTable};
use crate::error::Error;
use crate::function::Function;
use crate::handlers::{launch_worker, parse_input};
use crate::settings::Settings;

/// launch-worker's clients and settings.
pub struct LaunchWorker {
    ec2: aws_sdk_ec2::Client,
    prices: PriceListApi,
    ssm: aws_sdk_ssm::Client,
    sts: aws_sdk_sts::Client,
    sns: aws_sdk_sns::Client,
    ledger: Option<LedgerTable>,
    region: String,
    settings: Settings,
}

impl LaunchWorker {
    pub fn new(conf: &SdkConfig, settings: Settings) -> LaunchWorker {
        LaunchWorker {
            ec2: aws_sdk_ec2::Client::new(conf),
            prices: PriceListApi::new(conf),
            ssm: aws_sdk_ssm::Client::new(conf),
            sts: aws_sdk_sts::Client::new(conf),
            sns: aws_sdk_sns::Client::new(conf),
            ledger: settings.ledger(&aws_sdk_dynamodb::Client::new(conf)),
            region: region(conf),
            settings,
        }
    }

    /// Its clients out of the harness's whole set.
    pub fn of(aws: &Aws, settings: &Settings) -> LaunchWorker {
        LaunchWorker {
            ec2: aws.ec2.clone(),
            prices: aws.pricing.clone(),
            ssm: aws.ssm.clone(),
            sts: aws.sts.clone(),
            sns: aws.sns.clone(),
            ledger: settings.ledger(&aws.dynamodb),
            region: aws.region.clone(),
            settings: settings.clone(),
        }
    }

    pub async fn call(&self, payload: Value, now: DateTime<Utc>) -> Result<Value, Error> {
        let settings = &self.settings;
        let config = launch_worker::Config {
            region: self.region.clone(),
            instance_profile: settings.worker_instance_profile.clone(),
            worker_role_id: settings.worker_role_id.clone(),
            monthly_budget_usd: settings.monthly_budget_usd,
            alert_topic: settings.default_topic.clone(),
            worker_log_group: settings.worker_log_group.clone(),
            ebs_kms_key: settings.ebs_kms_key.clone(),
            run_role_arn: settings.run_role_arn.clone(),
            sealing_key: settings.task_token_key.clone(),
            artifact_bucket: settings.artifact_bucket.clone(),
            export_bucket: settings.export_bucket.clone(),
        };
        let input = parse_input(Function::LaunchWorker.name(), payload)?;
        let books = launch_worker::Books {
            ledger: self.ledger.as_ref(),
            alerts: &self.sns,
        };
        let clients = launch_worker::Clients {
            ec2: &self.ec2,
            prices: &self.prices,
            params: &self.ssm,
            sessions: &self.sts,
            books,
        };
        out(launch_worker::handle(clients, &config, input, now).await?)
    }
}

/// The bootstrap's body (`src/bin/launch-worker.rs`).
pub async fn serve() -> Result<(), lambda_runtime::Error> {
    let f = LaunchWorker::new(&sdk_config().await, Settings::from_env());
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        f.call(event.payload, Utc::now())
    }))
    .await
}

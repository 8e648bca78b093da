//! sweeper's wiring (scheduled): it terminates instances that outlived their run, gives back their
//! vCPU reservations and deletes stale signals: EC2, Step Functions, SNS, the ledger and SSM
//! (the handler: `handlers::sweeper`).

use aws_config::SdkConfig;
use chrono::{DateTime, Utc};
use ephemera_core::metrics;
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

use super::{emit, out, sdk_config};
use crate::aws::{region, Aws, LedgerTable};
use crate::error::Error;
use crate::handlers::sweeper;
use crate::settings::Settings;

/// sweeper's clients and settings.
pub struct Sweeper {
    ec2: aws_sdk_ec2::Client,
    sfn: aws_sdk_sfn::Client,
    sns: aws_sdk_sns::Client,
    ssm: aws_sdk_ssm::Client,
    ledger: Option<LedgerTable>,
    region: String,
    settings: Settings,
}

impl Sweeper {
    pub fn new(conf: &SdkConfig, settings: Settings) -> Sweeper {
        Sweeper {
            ec2: aws_sdk_ec2::Client::new(conf),
            sfn: aws_sdk_sfn::Client::new(conf),
            sns: aws_sdk_sns::Client::new(conf),
            ssm: aws_sdk_ssm::Client::new(conf),
            ledger: settings.ledger(&aws_sdk_dynamodb::Client::new(conf)),
            region: region(conf),
            settings,
        }
    }

    /// Its clients out of the harness's whole set.
    pub fn of(aws: &Aws, settings: &Settings) -> Sweeper {
        Sweeper {
            ec2: aws.ec2.clone(),
            sfn: aws.sfn.clone(),
            sns: aws.sns.clone(),
            ssm: aws.ssm.clone(),
            ledger: settings.ledger(&aws.dynamodb),
            region: aws.region.clone(),
            settings: settings.clone(),
        }
    }

    /// One sweep; the schedule's event says nothing the sweep needs.
    pub async fn call(&self, now: DateTime<Utc>) -> Result<Value, Error> {
        let services = sweeper::Services {
            ec2: &self.ec2,
            executions: &self.sfn,
            sns: &self.sns,
            ledger: self.ledger.as_ref(),
            params: &self.ssm,
        };
        let topic = self.settings.default_topic.as_deref();
        let profile = self.settings.worker_instance_profile.as_deref();
        let report = sweeper::handle(services, topic, profile, &self.region, now).await?;
        emit(|stack| {
            metrics::of_sweep(
                stack,
                report.checked,
                report.terminated.len(),
                report.signals_deleted,
                report.swept_at,
            )
        });
        out(report)
    }
}

/// The bootstrap's body (`src/bin/sweeper.rs`).
pub async fn serve() -> Result<(), lambda_runtime::Error> {
    let f = Sweeper::new(&sdk_config().await, Settings::from_env());
    lambda_runtime::run(service_fn(|_: LambdaEvent<Value>| f.call(Utc::now()))).await
}

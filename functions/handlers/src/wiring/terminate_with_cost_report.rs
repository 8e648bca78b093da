//! terminate-with-cost-report's wiring: the teardown, the refusal's email, a worker's release
//! and the stop rule's event, over EC2, the Price List, SNS, Step Functions, S3, the ledger and
//! SSM (the handler: `handlers::terminate_report`).

use aws_config::SdkConfig;
use chrono::{DateTime, Utc};
use ephemera_core::metrics;
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

use super::{emit, out, sdk_config};
use crate::aws::pricing::PriceListApi;
use crate::aws::{region, s3_client, Aws, LedgerTable};
use crate::error::Error;
use crate::function::Function;
use crate::handlers::{parse_input, terminate_report};
use crate::settings::Settings;

/// terminate-with-cost-report's clients and settings.
pub struct TerminateWithCostReport {
    ec2: aws_sdk_ec2::Client,
    prices: PriceListApi,
    sns: aws_sdk_sns::Client,
    history: aws_sdk_sfn::Client,
    objects: aws_sdk_s3::Client,
    ledger: Option<LedgerTable>,
    signals: aws_sdk_ssm::Client,
    region: String,
    settings: Settings,
}

impl TerminateWithCostReport {
    pub fn new(conf: &SdkConfig, settings: Settings) -> TerminateWithCostReport {
        TerminateWithCostReport {
            ec2: aws_sdk_ec2::Client::new(conf),
            prices: PriceListApi::new(conf),
            sns: aws_sdk_sns::Client::new(conf),
            history: aws_sdk_sfn::Client::new(conf),
            objects: s3_client(conf),
            ledger: settings.ledger(&aws_sdk_dynamodb::Client::new(conf)),
            signals: aws_sdk_ssm::Client::new(conf),
            region: region(conf),
            settings,
        }
    }

    /// Its clients out of the harness's whole set.
    pub fn of(aws: &Aws, settings: &Settings) -> TerminateWithCostReport {
        TerminateWithCostReport {
            ec2: aws.ec2.clone(),
            prices: aws.pricing.clone(),
            sns: aws.sns.clone(),
            history: aws.sfn.clone(),
            objects: aws.s3.clone(),
            ledger: settings.ledger(&aws.dynamodb),
            signals: aws.ssm.clone(),
            region: aws.region.clone(),
            settings: settings.clone(),
        }
    }

    pub async fn call(&self, payload: Value, now: DateTime<Utc>) -> Result<Value, Error> {
        let settings = &self.settings;
        let config = terminate_report::Config {
            region: self.region.clone(),
            default_topic: settings.default_topic.clone(),
            lambda_memory_mb: settings.lambda_memory_mb,
            artifact_bucket: settings.artifact_bucket.clone(),
            monthly_budget_usd: settings.monthly_budget_usd,
        };
        let name = Function::TerminateWithCostReport.name();
        // A run refused before it started: told, nothing to terminate.
        if payload.get("refused").is_some() {
            let input = parse_input(name, payload)?;
            return out(terminate_report::tell_refusal(&self.sns, &config, input).await?);
        }
        // The Map state's per-worker cleanup calls this function with `release`.
        if payload.get("release").is_some() {
            let input = parse_input(name, payload)?;
            return out(terminate_report::release(&self.ec2, input).await?);
        }
        // The stack's rule on an execution stopped or timed out: the same teardown and report,
        // with the run and the error read from the execution.
        let input = if payload["detail-type"] == ephemera_core::stopped::DETAIL_TYPE {
            match terminate_report::input_of_stop(&self.history, &payload).await? {
                Some(input) => input,
                None => return out(serde_json::json!({"ignored": payload["detail"]["status"]})),
            }
        } else {
            parse_input(name, payload)?
        };
        let services = terminate_report::Services {
            ec2: &self.ec2,
            prices: &self.prices,
            sns: &self.sns,
            history: &self.history,
            objects: &self.objects,
            ledger: self.ledger.as_ref(),
            signals: Some(&self.signals),
        };
        match terminate_report::handle(services, &config, input, now).await {
            Ok(report) => {
                emit(|stack| metrics::of_run(&report, stack));
                out(report)
            }
            Err(e) => {
                emit(|stack| metrics::of_cleanup_failure(stack, Utc::now()));
                Err(e)
            }
        }
    }
}

/// The bootstrap's body (`src/bin/terminate-with-cost-report.rs`).
pub async fn serve() -> Result<(), lambda_runtime::Error> {
    let f = TerminateWithCostReport::new(&sdk_config().await, Settings::from_env());
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        f.call(event.payload, Utc::now())
    }))
    .await
}

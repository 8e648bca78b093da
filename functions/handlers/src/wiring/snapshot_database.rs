//! snapshot-database's wiring: RDS (the handler: `handlers::snapshot_database`).

use aws_config::SdkConfig;
use chrono::{DateTime, Utc};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;

use super::{out, sdk_config};
use crate::aws::Aws;
use crate::error::Error;
use crate::function::Function;
use crate::handlers::{parse_input, snapshot_database};
use crate::settings::Settings;

/// snapshot-database's client and settings (the stack it tags its snapshots with).
pub struct SnapshotDatabase {
    rds: aws_sdk_rds::Client,
    settings: Settings,
}

impl SnapshotDatabase {
    pub fn new(conf: &SdkConfig, settings: Settings) -> SnapshotDatabase {
        SnapshotDatabase {
            rds: aws_sdk_rds::Client::new(conf),
            settings,
        }
    }

    /// Its client out of the harness's whole set.
    pub fn of(aws: &Aws, settings: &Settings) -> SnapshotDatabase {
        SnapshotDatabase {
            rds: aws.rds.clone(),
            settings: settings.clone(),
        }
    }

    pub async fn call(&self, payload: Value, now: DateTime<Utc>) -> Result<Value, Error> {
        let input: snapshot_database::Input =
            parse_input(Function::SnapshotDatabase.name(), payload)?;
        let stack = self.settings.stack.as_deref();
        if input.prune {
            return out(snapshot_database::prune(&self.rds, input, stack).await?);
        }
        out(snapshot_database::handle(&self.rds, input, stack, now).await?)
    }
}

/// The bootstrap's body (`src/bin/snapshot-database.rs`).
pub async fn serve() -> Result<(), lambda_runtime::Error> {
    let f = SnapshotDatabase::new(&sdk_config().await, Settings::from_env());
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        f.call(event.payload, Utc::now())
    }))
    .await
}

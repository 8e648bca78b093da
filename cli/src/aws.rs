//! The AWS configuration: the default credential chain, the region (the flag, else the state
//! machine's own, else the environment's), and an endpoint for a local emulator.

use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::errors::CliError;
use crate::Global;

/// `arn:aws:states:eu-west-1:123:stateMachine:x` → `eu-west-1`.
pub fn region_of_arn(arn: &str) -> Option<&str> {
    let mut parts = arn.split(':');
    (parts.next()? == "arn").then_some(())?;
    let region = parts.nth(2)?;
    (!region.is_empty()).then_some(region)
}

/// Loads the configuration; `arn` (a state machine or an execution) gives the region when no
/// `--region` does, since its calls can only succeed there.
pub async fn config(global: &Global, arn: Option<&str>) -> Result<SdkConfig, CliError> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    let region = global
        .region
        .as_deref()
        .or_else(|| arn.and_then(region_of_arn));
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_string()));
    }
    if let Some(url) = &global.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let conf = loader.load().await;
    if conf.region().is_none() {
        return Err(CliError::NoRegion);
    }
    Ok(conf)
}

pub fn region(conf: &SdkConfig) -> String {
    conf.region().map(|r| r.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_come_from_arns() {
        assert_eq!(
            region_of_arn("arn:aws:states:eu-west-1:123456789012:stateMachine:m"),
            Some("eu-west-1")
        );
        assert_eq!(
            region_of_arn("arn:aws:states:us-east-2:1:execution:m:run-1"),
            Some("us-east-2")
        );
        assert_eq!(region_of_arn("arn:aws:iam::1:role/x"), None);
        assert_eq!(region_of_arn("fx-2023"), None);
    }
}

//! On-Demand prices: the Price List API, falling back to the dated table in `catalog`.

use std::future::Future;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_pricing::types::{Filter, FilterType};
use ephemera_core::catalog;

/// An On-Demand price and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub usd_per_hour: f64,
    /// `price-list-api`, or the dated fallback table (an estimate outside its region).
    pub source: String,
}

pub trait PriceList: Send + Sync {
    /// The type's On-Demand price in the region, or None for a type no source knows.
    fn on_demand_hourly(
        &self,
        instance_type: &str,
        region: &str,
    ) -> impl Future<Output = Option<Quote>> + Send;
}

/// The Price List API lives in us-east-1; a price is optional (the table backs it), so the
/// client fails fast rather than retrying.
#[derive(Clone, Debug)]
pub struct PriceListApi {
    client: aws_sdk_pricing::Client,
}

impl PriceListApi {
    pub fn new(conf: &SdkConfig) -> PriceListApi {
        let c = aws_sdk_pricing::config::Builder::from(conf)
            .region(aws_sdk_pricing::config::Region::new("us-east-1"))
            .retry_config(aws_sdk_pricing::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_pricing::config::timeout::TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(5))
                    .build(),
            )
            .build();
        PriceListApi {
            client: aws_sdk_pricing::Client::from_conf(c),
        }
    }
}

/// The hourly USD price in one GetProducts PriceList document
/// (`terms.OnDemand.*.priceDimensions.*.pricePerUnit.USD`).
pub fn parse_price_document(doc: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(doc).ok()?;
    let on_demand = v.get("terms")?.get("OnDemand")?.as_object()?;
    on_demand.values().find_map(|term| {
        term.get("priceDimensions")?
            .as_object()?
            .values()
            .filter(|d| d.get("unit").and_then(|u| u.as_str()) == Some("Hrs"))
            .find_map(|d| {
                d.get("pricePerUnit")?
                    .get("USD")?
                    .as_str()?
                    .parse::<f64>()
                    .ok()
            })
            .filter(|p| *p > 0.0)
    })
}

pub use catalog::REGIONAL_UPLIFT_BOUND;

fn fallback(instance_type: &str, region: &str) -> Option<Quote> {
    let price = catalog::on_demand_hourly_bound(instance_type, region)?;
    let table = format!(
        "fallback table ({} prices as of {})",
        catalog::PRICES_REGION,
        catalog::PRICES_AS_OF
    );
    Some(Quote {
        usd_per_hour: price,
        source: if region == catalog::PRICES_REGION {
            table
        } else {
            format!("estimated: {table} x{REGIONAL_UPLIFT_BOUND} for {region}")
        },
    })
}

impl PriceList for PriceListApi {
    async fn on_demand_hourly(&self, instance_type: &str, region: &str) -> Option<Quote> {
        let term = |field: &str, value: &str| {
            Filter::builder()
                .r#type(FilterType::TermMatch)
                .field(field)
                .value(value)
                .build()
                .ok()
        };
        let filters: Option<Vec<Filter>> = [
            ("instanceType", instance_type),
            // Every region, new ones included, by its code (no name table to fall behind).
            ("regionCode", region),
            ("operatingSystem", "Linux"),
            ("tenancy", "Shared"),
            ("preInstalledSw", "NA"),
            ("capacitystatus", "Used"),
        ]
        .iter()
        .map(|(f, v)| term(f, v))
        .collect();
        let resp = self
            .client
            .get_products()
            .service_code("AmazonEC2")
            .set_filters(filters)
            .max_results(10)
            .send()
            .await;
        match resp {
            Ok(r) => r
                .price_list()
                .iter()
                .find_map(|doc| parse_price_document(doc))
                .map(|p| Quote {
                    usd_per_hour: p,
                    source: "price-list-api".to_string(),
                })
                .or_else(|| fallback(instance_type, region)),
            Err(e) => {
                tracing::info!(error = %aws_smithy_types::error::display::DisplayErrorContext(&e), "Price List API unavailable; using the fallback table");
                fallback(instance_type, region)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_pricing::operation::get_products::{GetProductsError, GetProductsOutput};
    use aws_smithy_mocks::{mock, mock_client, RuleMode};

    fn api(rule: &aws_smithy_mocks::Rule) -> PriceListApi {
        PriceListApi {
            client: mock_client!(aws_sdk_pricing, RuleMode::MatchAny, [rule]),
        }
    }

    #[tokio::test]
    async fn an_unavailable_price_list_api_falls_back_to_the_dated_table_and_says_so() {
        let denied = mock!(aws_sdk_pricing::Client::get_products).then_error(|| {
            GetProductsError::generic(
                aws_sdk_pricing::error::ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .build(),
            )
        });
        let Quote {
            usd_per_hour: price,
            source,
        } = api(&denied)
            .on_demand_hourly("c7g.4xlarge", "us-east-1")
            .await
            .unwrap();
        assert_eq!(denied.num_calls(), 1);
        assert_eq!(
            Some(price),
            catalog::on_demand_hourly_bound("c7g.4xlarge", "us-east-1")
        );
        assert_eq!(
            source,
            format!(
                "fallback table (us-east-1 prices as of {})",
                catalog::PRICES_AS_OF
            )
        );
        // Another region: the table's price raised by the bound, and called an estimate.
        let Quote { source, .. } = api(&denied)
            .on_demand_hourly("c7g.4xlarge", "ap-southeast-2")
            .await
            .unwrap();
        assert!(source.starts_with("estimated: fallback table"), "{source}");
        // A type neither knows has no price (launch-worker then refuses to guess).
        assert_eq!(
            api(&denied)
                .on_demand_hourly("x9.nonesuch", "us-east-1")
                .await,
            None
        );

        // The API answering is what the table stands in for.
        let answered = mock!(aws_sdk_pricing::Client::get_products).then_output(|| {
            GetProductsOutput::builder()
                .price_list(r#"{"terms":{"OnDemand":{"T":{"priceDimensions":{"D":{"unit":"Hrs","pricePerUnit":{"USD":"0.6000000000"}}}}}}}"#)
                .build()
        });
        assert_eq!(
            api(&answered)
                .on_demand_hourly("c7g.4xlarge", "us-east-1")
                .await,
            Some(Quote {
                usd_per_hour: 0.6,
                source: "price-list-api".to_string()
            })
        );
    }

    #[test]
    fn parses_a_get_products_document() {
        let doc = r#"{"product":{"attributes":{"instanceType":"c7g.4xlarge"}},
          "terms":{"OnDemand":{"ABC.JRTCKXETXF":{"priceDimensions":{"ABC.JRTCKXETXF.6YS6EN2CT7":
          {"unit":"Hrs","pricePerUnit":{"USD":"0.5800000000"},"description":"$0.58 per On Demand Linux c7g.4xlarge Instance Hour"}}}}}}"#;
        assert_eq!(parse_price_document(doc), Some(0.58));
        assert_eq!(parse_price_document("{}"), None);
    }

    #[test]
    fn the_fallback_never_under_prices_another_region() {
        let Quote {
            usd_per_hour: home,
            source: src,
        } = fallback("c7g.4xlarge", "us-east-1").unwrap();
        assert!(src.starts_with("fallback table (us-east-1"), "{src}");
        let Quote {
            usd_per_hour: away,
            source: src,
        } = fallback("c7g.4xlarge", "eu-south-2").unwrap();
        assert!((away - home * REGIONAL_UPLIFT_BOUND).abs() < 1e-12);
        assert!(
            src.starts_with("estimated:") && src.contains("eu-south-2"),
            "{src}"
        );
    }
}

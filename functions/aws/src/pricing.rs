//! On-Demand prices: the Price List API, falling back to the dated table in `catalog`.

use std::future::Future;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_pricing::types::{Filter, FilterType};
use ephemera_core::cost::TypePrice;
use ephemera_core::{caps, catalog};

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

/// The Price List API lives in us-east-1. Its GetProducts is throttled per account with a
/// bucket of 10 calls refilled at 5 a second
/// (<https://docs.aws.amazon.com/awsaccountbilling/latest/aboutv2/using-pelong.html>): a
/// throttled call is retried with the SDK's backoff (a run reads its prices once, so waiting is
/// cheap) before the dated table stands in.
#[derive(Clone, Debug)]
pub struct PriceListApi {
    client: aws_sdk_pricing::Client,
}

/// Calls a run's prices are read with at a time: half of GetProducts' bucket, so that another
/// reader in the account still finds tokens.
pub const AT_ONCE: usize = 5;

impl PriceListApi {
    pub fn new(conf: &SdkConfig) -> PriceListApi {
        let c = aws_sdk_pricing::config::Builder::from(conf)
            .region(aws_sdk_pricing::config::Region::new("us-east-1"))
            .retry_config(
                aws_sdk_pricing::config::retry::RetryConfig::standard()
                    .with_max_attempts(5)
                    .with_initial_backoff(Duration::from_millis(500)),
            )
            .timeout_config(
                aws_sdk_pricing::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(25))
                    .build(),
            )
            .build();
        PriceListApi {
            client: aws_sdk_pricing::Client::from_conf(c),
        }
    }
}

/// Every candidate's price, in `types`' order: from `known` (the run's prices, read once by
/// quota-check) when it has the type, else read, [`AT_ONCE`] at a time.
pub async fn quotes_for<P: PriceList>(
    prices: &P,
    known: &[TypePrice],
    types: &[String],
    region: &str,
) -> Vec<Option<Quote>> {
    quotes_until(prices, known, types, region, None).await
}

/// As [`quotes_for`], but what the Price List has not answered by `deadline` is priced from
/// the dated table and marked estimated ([`late`]): a throttled or slow API (each call may
/// retry for up to its operation timeout) cannot hold the caller past its own Lambda timeout.
pub async fn quotes_within<P: PriceList>(
    prices: &P,
    known: &[TypePrice],
    types: &[String],
    region: &str,
    deadline: tokio::time::Instant,
) -> Vec<Option<Quote>> {
    quotes_until(prices, known, types, region, Some(deadline)).await
}

async fn quotes_until<P: PriceList>(
    prices: &P,
    known: &[TypePrice],
    types: &[String],
    region: &str,
    deadline: Option<tokio::time::Instant>,
) -> Vec<Option<Quote>> {
    let mut quotes = Vec::with_capacity(types.len());
    // In groups, not as a stream: a stream of borrowing closures makes the handlers' futures
    // lose `Send` in the front door's router (a higher-ranked lifetime rustc cannot prove).
    for group in types.chunks(AT_ONCE) {
        let read = group.iter().map(|t| async move {
            if let Some(k) = known.iter().find(|k| &k.instance_type == t) {
                return Some(Quote {
                    usd_per_hour: k.usd_per_hour,
                    source: k.source.clone(),
                });
            }
            let Some(deadline) = deadline else {
                return prices.on_demand_hourly(t, region).await;
            };
            // Past the deadline no call is started at all.
            if tokio::time::Instant::now() >= deadline {
                return late(t, region);
            }
            match tokio::time::timeout_at(deadline, prices.on_demand_hourly(t, region)).await {
                Ok(q) => q,
                Err(_) => late(t, region),
            }
        });
        quotes.extend(futures_util::future::join_all(read).await);
    }
    quotes
}

/// A type the Price List did not price in time: the dated table's price (raised by the
/// regional bound outside the table's region), called an estimate in every region, since the
/// API was not heard.
fn late(instance_type: &str, region: &str) -> Option<Quote> {
    let q = fallback(instance_type, region)?;
    let source = match q.source.strip_prefix("estimated: ") {
        Some(rest) => rest.to_string(),
        None => q.source,
    };
    Some(Quote {
        usd_per_hour: q.usd_per_hour,
        source: format!("estimated: {source}, the Price List API did not answer in time"),
    })
}

/// The dearest candidate and its price, whose On-Demand price bounds what any candidate bills
/// in either market; a type no source prices is named (the budget cannot be kept without it).
pub fn dearest(
    types: &[String],
    quotes: &[Option<Quote>],
    region: &str,
) -> Result<(String, Quote), Unpriced> {
    let mut dearest: Option<(&String, &Quote)> = None;
    for (i, (t, quote)) in types.iter().zip(quotes).enumerate() {
        let quote = quote.as_ref().ok_or_else(|| Unpriced::Type {
            index: i,
            instance_type: t.clone(),
            region: region.to_string(),
        })?;
        if dearest.is_none_or(|(_, d)| quote.usd_per_hour > d.usd_per_hour) {
            dearest = Some((t, quote));
        }
    }
    dearest
        .map(|(t, q)| (t.clone(), q.clone()))
        .ok_or(Unpriced::NoTypes)
}

/// Why [`dearest`] names no candidate. Not an AWS failure: the handlers decide what the run
/// is told (a launch that cannot keep its budget, or a bug).
#[derive(Debug, thiserror::Error)]
pub enum Unpriced {
    #[error("worker.instance_types[{index}]: no On-Demand price is known for {instance_type} in {region} (Price List API or the dated table), so limits.budget_usd cannot be kept; choose a type either knows")]
    Type {
        index: usize,
        instance_type: String,
        region: String,
    },
    /// Validation admits no RunSpec without a type, so this is ephemera's own fault.
    #[error("worker.instance_types is empty after validation")]
    NoTypes,
}

/// The run's prices for its document: each candidate's quote, its source cut to the size the
/// payload bound counts; a type no source knows is left out (launch-worker names it).
pub fn type_prices(types: &[String], quotes: Vec<Option<Quote>>) -> Vec<TypePrice> {
    types
        .iter()
        .zip(quotes)
        .filter_map(|(t, q)| {
            q.map(|q| TypePrice {
                instance_type: t.clone(),
                usd_per_hour: q.usd_per_hour,
                source: caps::cap(&q.source, caps::DETAIL_KEPT),
            })
        })
        .collect()
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

    #[tokio::test]
    async fn the_runs_prices_are_used_and_only_a_missing_type_is_read() {
        let answered = mock!(aws_sdk_pricing::Client::get_products).then_output(|| {
            GetProductsOutput::builder()
                .price_list(r#"{"terms":{"OnDemand":{"T":{"priceDimensions":{"D":{"unit":"Hrs","pricePerUnit":{"USD":"0.4"}}}}}}}"#)
                .build()
        });
        let known = vec![TypePrice {
            instance_type: "c7g.4xlarge".into(),
            usd_per_hour: 0.58,
            source: "price-list-api".into(),
        }];
        let types: Vec<String> = ["c7g.4xlarge", "m7g.2xlarge", "c7g.4xlarge"]
            .map(String::from)
            .to_vec();
        let quotes = quotes_for(&api(&answered), &known, &types, "us-east-1").await;
        let prices: Vec<f64> = quotes
            .iter()
            .map(|q| q.as_ref().unwrap().usd_per_hour)
            .collect();
        assert_eq!(prices, vec![0.58, 0.4, 0.58]);
        assert_eq!(
            answered.num_calls(),
            1,
            "only the type the run had not priced"
        );
        // For the document: in order, each source cut to what the payload bound counts.
        let long = Some(Quote {
            usd_per_hour: 1.0,
            source: "s".repeat(5_000),
        });
        let doc = type_prices(&types[..2], vec![long, None]);
        assert_eq!(
            doc.len(),
            1,
            "a type no source prices is left for launch to name"
        );
        assert!(caps::json_len(&doc[0].source) <= caps::DETAIL_KEPT);
    }

    /// A Price List that answers one type at once and never answers the others.
    struct Stuck;
    impl PriceList for Stuck {
        async fn on_demand_hourly(&self, t: &str, _: &str) -> Option<Quote> {
            if t == "c7g.4xlarge" {
                return Some(Quote {
                    usd_per_hour: 0.6,
                    source: "price-list-api".into(),
                });
            }
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn past_the_deadline_the_rest_is_priced_from_the_table_and_called_an_estimate() {
        let types: Vec<String> = ["c7g.4xlarge", "m7g.2xlarge", "x9.nonesuch"]
            .map(String::from)
            .to_vec();
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(200);
        let quotes = quotes_within(&Stuck, &[], &types, "eu-south-2", deadline).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "ended at its deadline"
        );
        assert_eq!(quotes[0].as_ref().unwrap().source, "price-list-api");
        let late = quotes[1].as_ref().unwrap();
        assert_eq!(
            Some(late.usd_per_hour),
            fallback("m7g.2xlarge", "eu-south-2").map(|q| q.usd_per_hour)
        );
        assert!(
            late.source.starts_with("estimated: fallback table")
                && late.source.ends_with("did not answer in time"),
            "{}",
            late.source
        );
        // A type the table lacks has no price at all (launch-worker names it).
        assert_eq!(quotes[2], None);
        // In the table's own region too: an estimate, since the API was not heard.
        let home = quotes_within(&Stuck, &[], &types[1..2], "us-east-1", deadline).await;
        assert!(home[0].as_ref().unwrap().source.starts_with("estimated: "));
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

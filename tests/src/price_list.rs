//! The Price List API as the front door plays it (moto has none): GetProducts answers a type's
//! On-Demand price in AWS's own document form, throttled as AWS throttles it.
//!
//! The price is the one the functions' dated table gives for the region (for a region the table
//! does not hold, its price raised by the regional bound), so a run's figures are the same
//! whether the API answers or the table stands in; only the source named differs.

use ephemera_core::catalog;
use serde_json::{json, Value};

use crate::throttle::Throttles;

/// GetProducts' token bucket, per account: 10 calls, refilled at 5 a second
/// (<https://docs.aws.amazon.com/awsaccountbilling/latest/aboutv2/using-pelong.html>,
/// "Quotas"); past it AWS answers `ThrottlingException`.
pub const GET_PRODUCTS_BUCKET: (f64, f64) = (10.0, 5.0);

/// What a call's counted as, per account (`Throttles::asked`).
pub const GET_PRODUCTS: &str = "pricing:GetProducts";

/// The answer to a Price List request: (HTTP status, JSON body).
///
/// Every caller signs for us-east-1 (the API's endpoint), so the account a call counts against
/// is the region its filter names: each test's region is an account of its own.
pub fn answer(throttles: &Throttles, op: &str, body: &[u8]) -> (u16, Value) {
    let input: Value = serde_json::from_slice(body).unwrap_or_default();
    if op != "GetProducts" {
        return (
            400,
            json!({"__type": "InvalidParameterException",
                   "Message": format!("the harness plays GetProducts only, not {op}")}),
        );
    }
    let filter = |field: &str| {
        input["Filters"].as_array().and_then(|fs| {
            fs.iter()
                .find(|f| f["Field"].as_str() == Some(field))
                .and_then(|f| f["Value"].as_str())
        })
    };
    let region = filter("regionCode").unwrap_or("us-east-1");
    if !throttles.take_from(region, "pricing", GET_PRODUCTS_BUCKET, GET_PRODUCTS) {
        return (
            400,
            json!({"__type": "ThrottlingException", "Message": "Rate exceeded"}),
        );
    }
    let price_list: Vec<String> = filter("instanceType")
        .and_then(|t| {
            let usd = catalog::on_demand_hourly_bound(t, region)?;
            Some(document(t, region, usd))
        })
        .into_iter()
        .collect();
    (
        200,
        json!({"FormatVersion": "aws_v1", "PriceList": price_list}),
    )
}

/// One product as GetProducts returns it: a JSON document in a string, its On-Demand term's
/// hourly price in `terms.OnDemand.*.priceDimensions.*.pricePerUnit.USD`.
fn document(instance_type: &str, region: &str, usd: f64) -> String {
    json!({
        "product": {"productFamily": "Compute Instance",
                    "attributes": {"instanceType": instance_type, "regionCode": region,
                                   "operatingSystem": "Linux", "tenancy": "Shared"}},
        "serviceCode": "AmazonEC2",
        "terms": {"OnDemand": {"SKU.JRTCKXETXF": {"priceDimensions": {"SKU.JRTCKXETXF.6YS6EN2CT7": {
            "unit": "Hrs",
            "pricePerUnit": {"USD": format!("{usd:.10}")},
            "description": format!("${usd} per On Demand Linux {instance_type} Instance Hour")
        }}}}}
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(t: &Throttles, instance_type: &str, region: &str) -> (u16, Value) {
        let body = json!({"ServiceCode": "AmazonEC2", "Filters": [
            {"Type": "TERM_MATCH", "Field": "instanceType", "Value": instance_type},
            {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}]});
        answer(t, "GetProducts", body.to_string().as_bytes())
    }

    #[test]
    fn answers_the_tables_price_in_awss_form_and_throttles_past_the_bucket() {
        let t = Throttles::default();
        let (status, out) = ask(&t, "c7g.4xlarge", "us-east-1");
        assert_eq!(status, 200);
        let doc: Value = serde_json::from_str(out["PriceList"][0].as_str().unwrap()).unwrap();
        let usd = doc["terms"]["OnDemand"]["SKU.JRTCKXETXF"]["priceDimensions"]
            ["SKU.JRTCKXETXF.6YS6EN2CT7"]["pricePerUnit"]["USD"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap();
        assert_eq!(
            Some(usd),
            catalog::on_demand_hourly_bound("c7g.4xlarge", "us-east-1")
        );
        // A type nobody sells: no product.
        assert_eq!(
            ask(&t, "x9.nonesuch", "us-east-1").1["PriceList"],
            json!([])
        );
        // Eight more take the bucket's ten; the next is throttled; another account is not.
        for _ in 0..8 {
            assert_eq!(ask(&t, "c7g.4xlarge", "us-east-1").0, 200);
        }
        let (status, out) = ask(&t, "c7g.4xlarge", "us-east-1");
        assert_eq!(
            (status, out["__type"].as_str()),
            (400, Some("ThrottlingException"))
        );
        assert_eq!(ask(&t, "c7g.4xlarge", "eu-west-1").0, 200);
        assert_eq!(t.asked("us-east-1", GET_PRODUCTS), 11);
    }
}

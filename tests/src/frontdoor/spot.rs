//! Spot, which moto prices and places without regard to AWS: the price history in force at a
//! window's start and its changes
//! (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSpotPriceHistory.html);
//! GetSpotPlacementScores, which moto does not serve (`crate::spot_placement`, which cites AWS's
//! reference and user guide); and an instance taken back after its interruption notice
//! (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Response;

use super::{ec2_error, FrontDoor};

impl FrontDoor {
    /// GetSpotPlacementScores as EC2 answers it: the request checked, its staged rate, the
    /// 24-hour limit of new configurations, then the staged scores over moto's zones.
    pub(super) async fn spot_placement_scores(
        &self,
        region: &str,
        form: &HashMap<String, String>,
    ) -> Response<Body> {
        use crate::spot_placement::{self, Asked};
        let p = &self.spot_placements;
        let refuse = |(status, code, message): spot_placement::Refusal| {
            p.refused(region, code);
            ec2_error(status, code, &message)
        };
        let asked = match Asked::parse(form, region) {
            Ok(a) => a,
            Err(r) => return refuse(r),
        };
        if let Some(rate) = p.rate(region) {
            let what = "ec2:GetSpotPlacementScores (its own rate)";
            if !self
                .throttles
                .take_from(region, "GetSpotPlacementScores (staged)", rate, what)
            {
                return refuse((
                    503,
                    "RequestLimitExceeded",
                    "Request limit exceeded.".into(),
                ));
            }
        }
        if let Err(r) = p.admit_configuration(region, &asked.configuration) {
            return refuse(r);
        }
        let mut zones = std::collections::BTreeMap::new();
        for r in &asked.regions {
            let Ok(out) = self.moto_ec2(r).describe_availability_zones().send().await else {
                continue;
            };
            let mut ids: Vec<String> = out
                .availability_zones()
                .iter()
                .filter_map(|z| z.zone_id().map(str::to_string))
                .collect();
            ids.sort();
            zones.insert(r.clone(), ids);
        }
        let scores = p.scores(&asked, &zones, |t| {
            ephemera_core::catalog::lookup(t).map(|i| i.vcpus)
        });
        p.served(region);
        Response::builder()
            .status(200)
            .header("content-type", "text/xml")
            .body(Body::from(spot_placement::response_xml(&scores)))
            .expect("a response")
    }

    /// Spot takes an instance back as on AWS: first the interruption notice (IMDS
    /// `spot/instance-action`, here `spot_notice`), then, when the notice period has passed, EC2
    /// terminates it with state reason `Server.SpotInstanceTermination`
    /// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html:
    /// two minutes on AWS, scaled down by the caller).
    pub fn reclaim_spot(self: &Arc<Self>, region: &str, instance: &str, notice: Duration) {
        let key = (region.to_string(), instance.to_string());
        self.spot_notices
            .lock()
            .unwrap()
            .insert(key.clone(), chrono::Utc::now());
        let door = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(notice).await;
            door.spot_reclaimed.lock().unwrap().insert(key.clone());
            let _ = door
                .moto_query(
                    &key.0,
                    "ec2",
                    &format!(
                        "Action=TerminateInstances&Version=2016-11-15&InstanceId.1={}",
                        key.1
                    ),
                )
                .await;
        });
    }

    /// When the instance was given Spot's interruption notice, if it was.
    pub fn spot_notice(
        &self,
        region: &str,
        instance: &str,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.spot_notices
            .lock()
            .unwrap()
            .get(&(region.to_string(), instance.to_string()))
            .copied()
    }
}

/// A Spot price history as AWS gives it: for each asked type and zone, the price in force at the
/// window's start (about a third of On-Demand, a little different per zone) and, in windows over
/// two minutes, one change halfway, 5 % up.
pub(super) fn spot_price_history(form: &HashMap<String, String>) -> Response<Body> {
    use chrono::{DateTime, Utc};
    let types: Vec<&String> = (1..=100)
        .map_while(|n| form.get(&format!("InstanceType.{n}")))
        .collect();
    let zone = form.get("AvailabilityZone");
    let parse = |k: &str| {
        form.get(k)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let end = parse("EndTime").unwrap_or_else(Utc::now);
    let start = parse("StartTime").unwrap_or(end);
    let mut items = String::new();
    for t in types {
        let Some(info) = ephemera_core::catalog::lookup(t) else {
            continue;
        };
        let Some(zone) = zone else { continue };
        let letter = zone
            .chars()
            .last()
            .map_or(0, |c| (c as u32).saturating_sub('a' as u32));
        let base = info.on_demand_hourly * (0.33 + 0.01 * f64::from(letter % 6));
        let mut points = vec![(start - chrono::Duration::minutes(37), base)];
        if end - start > chrono::Duration::minutes(2) {
            points.push((start + (end - start) / 2, base * 1.05));
        }
        for (at, price) in points {
            items.push_str(&format!(
                "<item><instanceType>{t}</instanceType><productDescription>Linux/UNIX</productDescription>\
                 <spotPrice>{price:.6}</spotPrice><timestamp>{}</timestamp>\
                 <availabilityZone>{zone}</availabilityZone></item>",
                at.format("%Y-%m-%dT%H:%M:%S%.3fZ")
            ));
        }
    }
    Response::builder()
        .status(200)
        .header("content-type", "text/xml")
        .body(Body::from(format!(
            "<DescribeSpotPriceHistoryResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
             <requestId>spot-price-history</requestId><spotPriceHistorySet>{items}</spotPriceHistorySet>\
             <nextToken></nextToken></DescribeSpotPriceHistoryResponse>"
        )))
        .expect("a response")
}

//! RDS where moto is quick: a snapshot answers `creating` for a while before `available`
//! (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/USER_CreateSnapshot.html); with
//! RDS's own error body for staged faults, and resources' tags for `aws:ResourceTag/…` on a
//! delete.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::Response;

use super::{proxy_raw, rebuild, xml_escape, FrontDoor};

/// Reads of a new RDS snapshot that answer "creating" before "available".
const SNAPSHOT_CREATING_READS: u32 = 2;

/// An RDS snapshot takes minutes: CreateDBSnapshot answers `creating`, and so do the next reads
/// until it is `available`
/// (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/USER_CreateSnapshot.html); moto
/// answers `available` at once.
pub(super) async fn snapshot_takes_time(
    door: &FrontDoor,
    region: &str,
    form: &HashMap<String, String>,
    parts: &axum::http::request::Parts,
    bytes: &axum::body::Bytes,
) -> Option<Response<Body>> {
    let action = form.get("Action")?.as_str();
    let id = match action {
        "CreateDBSnapshot" | "DescribeDBSnapshots" => form.get("DBSnapshotIdentifier")?,
        "CreateDBClusterSnapshot" | "DescribeDBClusterSnapshots" => {
            form.get("DBClusterSnapshotIdentifier")?
        }
        _ => return None,
    };
    let key = (region.to_string(), id.clone());
    let mut resp = proxy_raw(door, parts, bytes.clone()).await?;
    if resp.0 != 200 {
        return Some(rebuild(resp));
    }
    let creating = {
        let mut reads = door.snapshots_creating.lock().unwrap();
        if action.starts_with("Create") {
            reads.insert(key, SNAPSHOT_CREATING_READS);
            true
        } else {
            match reads.get_mut(&key) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        }
    };
    if creating {
        resp.2 = resp
            .2
            .replace("<Status>available</Status>", "<Status>creating</Status>");
    }
    Some(rebuild(resp))
}

/// RDS's error body (the Query protocol's `ErrorResponse`).
pub(super) fn rds_error(status: u16, code: &str, message: &str) -> Response<Body> {
    let xml = format!(
        "<ErrorResponse xmlns=\"http://rds.amazonaws.com/doc/2014-10-31/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>",
        xml_escape(message)
    );
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Body::from(xml))
        .unwrap()
}

impl FrontDoor {
    /// An RDS resource's tags as moto holds them (for `aws:ResourceTag/…` on a delete).
    pub(super) async fn rds_tags(&self, region: &str, arn: &str) -> Vec<(String, String)> {
        let body = format!(
            "Action=ListTagsForResource&Version=2014-10-31&ResourceName={}",
            urlencoding::encode(arn)
        );
        let Ok(resp) = self.moto_query(region, "rds", &body).await else {
            return vec![];
        };
        let text = resp.text().await.unwrap_or_default();
        text.split("<Tag>")
            .skip(1)
            .filter_map(|tag| {
                let key = tag.split("<Key>").nth(1)?.split("</Key>").next()?;
                let value = tag.split("<Value>").nth(1)?.split("</Value>").next()?;
                Some((key.to_string(), value.to_string()))
            })
            .collect()
    }
}

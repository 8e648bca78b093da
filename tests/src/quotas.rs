//! A Service Quotas stand-in for `ec2` (moto has none): applied values, AWS defaults, and
//! increase requests that move through the documented states as they are polled
//! (PENDING → CASE_OPENED → APPROVED / DENIED), raising the applied value on approval; the
//! account's request history by quota, filtered by status and paged as AWS pages it; and AWS's
//! refusal of a second open request for a quota.

use std::collections::{HashMap, VecDeque};

use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct StandInRequest {
    pub id: String,
    pub case_id: String,
    pub code: String,
    pub desired: f64,
    pub status: String,
    /// Statuses still to come, one per GetRequestedServiceQuotaChange.
    pub script: VecDeque<String>,
    pub created: f64,
    /// When the status last changed (epoch seconds): a denial's date.
    pub last_updated: f64,
}

impl StandInRequest {
    /// A request filed outside the stack (a person, another stack), with its status and dates.
    pub fn filed(
        id: &str,
        code: &str,
        desired: f64,
        status: &str,
        created: f64,
        updated: f64,
    ) -> StandInRequest {
        StandInRequest {
            id: id.into(),
            case_id: format!("case-{id}"),
            code: code.into(),
            desired,
            status: status.into(),
            script: VecDeque::new(),
            created,
            last_updated: updated,
        }
    }
}

#[derive(Debug, Clone)]
pub struct QuotaStandIn {
    /// Applied values; a code without one answers NoSuchResourceException, as AWS does for
    /// quotas never changed in the account.
    pub applied: HashMap<String, f64>,
    pub default_value: f64,
    /// The statuses the next request will go through.
    pub next_script: Vec<String>,
    pub requests: Vec<StandInRequest>,
    /// Every RequestServiceQuotaIncrease call, accepted or not.
    pub increase_calls: u32,
    /// GetServiceQuota reads that still answer the old value after an approval: AWS sets the
    /// applied value "after the request is resolved", without saying how soon
    /// (https://docs.aws.amazon.com/servicequotas/latest/userguide/request-quota-increase.html).
    pub apply_lag_reads: u32,
    /// Approved values not applied yet: (code, value, reads left).
    pub approved_unapplied: Vec<(String, f64, u32)>,
}

impl Default for QuotaStandIn {
    fn default() -> Self {
        QuotaStandIn {
            applied: HashMap::new(),
            default_value: 1152.0,
            next_script: vec!["CASE_OPENED".into(), "APPROVED".into()],
            requests: vec![],
            increase_calls: 0,
            apply_lag_reads: 0,
            approved_unapplied: vec![],
        }
    }
}

/// Epoch seconds, as Service Quotas' timestamps (whole: a date read back is the date written).
fn now() -> f64 {
    chrono::Utc::now().timestamp() as f64
}

fn error(kind: &str, message: &str) -> (u16, Value) {
    (
        400,
        json!({"__type": kind, "message": message, "Message": message}),
    )
}

impl QuotaStandIn {
    fn quota(code: &str, value: f64) -> Value {
        json!({
            "ServiceCode": "ec2", "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
            "QuotaCode": code, "QuotaName": code, "Value": value, "Unit": "None",
            "Adjustable": true, "GlobalQuota": false
        })
    }

    fn request_json(r: &StandInRequest) -> Value {
        json!({
            "Id": r.id, "CaseId": r.case_id, "ServiceCode": "ec2", "QuotaCode": r.code,
            "DesiredValue": r.desired, "Status": r.status, "Created": r.created,
            "LastUpdated": r.last_updated, "GlobalQuota": false, "Unit": "None",
            "QuotaArn": format!("arn:aws:servicequotas:::ec2/{}", r.code),
            "QuotaRequestedAtLevel": "ACCOUNT"
        })
    }

    /// ListRequestedServiceQuotaChangeHistoryByQuota: the quota's requests, newest first,
    /// filtered by `Status` when given, `MaxResults` a page (1 to 100, AWS's default 100) with
    /// a `NextToken` while more remain
    /// (https://docs.aws.amazon.com/servicequotas/2019-06-24/apireference/API_ListRequestedServiceQuotaChangeHistoryByQuota.html).
    fn history(&self, code: &str, input: &Value) -> (u16, Value) {
        let max = input["MaxResults"].as_u64().unwrap_or(100);
        if !(1..=100).contains(&max) {
            return error(
                "IllegalArgumentException",
                "MaxResults must be between 1 and 100",
            );
        }
        let status = input["Status"].as_str();
        let mut list: Vec<&StandInRequest> = self
            .requests
            .iter()
            .filter(|r| r.code == code && status.is_none_or(|s| r.status == s))
            .collect();
        list.sort_by(|a, b| b.created.total_cmp(&a.created));
        let from: usize = match input["NextToken"].as_str() {
            None => 0,
            Some(t) => match t.strip_prefix("page-").and_then(|n| n.parse().ok()) {
                Some(n) => n,
                None => {
                    return error(
                        "InvalidPaginationTokenException",
                        "Invalid pagination token",
                    )
                }
            },
        };
        let page: Vec<Value> = list
            .iter()
            .skip(from)
            .take(max as usize)
            .map(|r| Self::request_json(r))
            .collect();
        let mut out = json!({"RequestedQuotas": page});
        if from + (max as usize) < list.len() {
            out["NextToken"] = json!(format!("page-{}", from + max as usize));
        }
        (200, out)
    }

    /// The applied value a read sees now: an approval lands once its lag is read out.
    fn applied_now(&mut self, code: &str) -> Option<f64> {
        let mut landed = vec![];
        self.approved_unapplied.retain_mut(|(c, value, left)| {
            if c != code {
                return true;
            }
            if *left == 0 {
                landed.push(*value);
                return false;
            }
            *left -= 1;
            true
        });
        for v in landed {
            self.applied.insert(code.to_string(), v);
        }
        self.applied.get(code).copied()
    }

    pub fn handle(&mut self, op: &str, input: &Value) -> (u16, Value) {
        let code = input["QuotaCode"].as_str().unwrap_or_default().to_string();
        if input.get("ServiceCode").is_some() && input["ServiceCode"].as_str() != Some("ec2") {
            return error("NoSuchResourceException", "the stand-in serves ec2 only");
        }
        match op {
            "GetServiceQuota" => match self.applied_now(&code) {
                Some(v) => (200, json!({"Quota": Self::quota(&code, v)})),
                None => error(
                    "NoSuchResourceException",
                    &format!("The request failed because the specified quota {code} has no applied value."),
                ),
            },
            "GetAWSDefaultServiceQuota" => (200, json!({"Quota": Self::quota(&code, self.default_value)})),
            "RequestServiceQuotaIncrease" => {
                self.increase_calls += 1;
                let desired = input["DesiredValue"].as_f64().unwrap_or_default();
                let current = self.applied.get(&code).copied().unwrap_or(self.default_value);
                if desired <= current {
                    return error(
                        "IllegalArgumentException",
                        &format!("DesiredValue {desired} must be greater than the current value {current}"),
                    );
                }
                // AWS keeps one open request per quota: RequestServiceQuotaIncrease documents
                // ResourceAlreadyExistsException ("The specified resource already exists.")
                // (https://docs.aws.amazon.com/servicequotas/2019-06-24/apireference/API_RequestServiceQuotaIncrease.html).
                let open = self.requests.iter().any(|r| {
                    r.code == code && matches!(r.status.as_str(), "PENDING" | "CASE_OPENED")
                });
                if open {
                    return error(
                        "ResourceAlreadyExistsException",
                        "A request for this quota is already pending.",
                    );
                }
                let r = StandInRequest {
                    id: format!("req-{}-{}", code, self.requests.len() + 1),
                    case_id: String::new(),
                    code,
                    desired,
                    status: "PENDING".into(),
                    script: self.next_script.iter().cloned().collect(),
                    created: now(),
                    last_updated: now(),
                };
                let out = json!({"RequestedQuota": Self::request_json(&r)});
                self.requests.push(r);
                (200, out)
            }
            "GetRequestedServiceQuotaChange" => {
                let id = input["RequestId"].as_str().unwrap_or_default();
                let Some(r) = self.requests.iter_mut().find(|r| r.id == id) else {
                    return error("NoSuchResourceException", &format!("no request {id}"));
                };
                if let Some(next) = r.script.pop_front() {
                    r.status = next;
                    r.last_updated = now();
                    if r.status == "CASE_OPENED" && r.case_id.is_empty() {
                        r.case_id = format!("case-{}", r.id);
                    }
                    if r.status == "APPROVED" {
                        self.approved_unapplied.push((
                            r.code.clone(),
                            r.desired,
                            self.apply_lag_reads,
                        ));
                    }
                }
                (200, json!({"RequestedQuota": Self::request_json(r)}))
            }
            "ListRequestedServiceQuotaChangeHistoryByQuota" => self.history(&code, input),
            other => error("InvalidParameterValueException", &format!("the stand-in does not serve {other}")),
        }
    }
}

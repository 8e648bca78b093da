//! A Service Quotas stand-in for `ec2` (moto has none): applied values, AWS defaults, and
//! increase requests that move through the documented states as they are polled
//! (PENDING → CASE_OPENED → APPROVED / DENIED), raising the applied value on approval.

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
            "LastUpdated": r.created, "GlobalQuota": false, "Unit": "None"
        })
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
                    created: chrono::Utc::now().timestamp() as f64,
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
            "ListRequestedServiceQuotaChangeHistoryByQuota" => {
                let list: Vec<Value> = self
                    .requests
                    .iter()
                    .filter(|r| r.code == code)
                    .map(Self::request_json)
                    .collect();
                (200, json!({"RequestedQuotas": list}))
            }
            other => error("InvalidParameterValueException", &format!("the stand-in does not serve {other}")),
        }
    }
}

//! Service Quotas for EC2: applied value (or the AWS default), increase requests and their status.

use std::future::Future;

use aws_sdk_servicequotas::types::RequestedServiceQuotaChange;
use chrono::{DateTime, Utc};
use ephemera_core::quota::QuotaRequest;
use ephemera_core::quota_request::PastRequest;

use super::to_chrono;
use crate::error::AwsError;

/// A quota's value as the account has it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Applied {
    pub value: f64,
    /// No value is applied in the account: this is AWS's default.
    pub is_default: bool,
}

pub trait QuotaService: Send + Sync {
    /// The account's applied value, or AWS's default when none is applied.
    fn applied(&self, code: &str) -> impl Future<Output = Result<Applied, AwsError>> + Send;
    /// Asks once; when a request is already open for the quota, returns that one.
    fn request_increase(
        &self,
        code: &str,
        desired: f64,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<QuotaRequest, AwsError>> + Send;
    fn request_status(
        &self,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<QuotaRequest, AwsError>> + Send;
    /// Every increase request of the quota in the account, whoever filed it
    /// (ListRequestedServiceQuotaChangeHistoryByQuota, every page).
    fn history(
        &self,
        code: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<PastRequest>, AwsError>> + Send;
}

const SERVICE: &str = "ec2";

fn request(r: &RequestedServiceQuotaChange, now: DateTime<Utc>) -> QuotaRequest {
    QuotaRequest {
        id: r.id().unwrap_or_default().to_string(),
        case_id: r.case_id().filter(|c| !c.is_empty()).map(str::to_string),
        desired: r.desired_value().unwrap_or_default(),
        status: r
            .status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| "PENDING".to_string()),
        requested_at: r.created().map(to_chrono).unwrap_or(now),
    }
}

fn past(r: &RequestedServiceQuotaChange, now: DateTime<Utc>) -> PastRequest {
    let request = request(r, now);
    PastRequest {
        updated_at: r
            .last_updated()
            .map(to_chrono)
            .unwrap_or(request.requested_at),
        request,
    }
}

/// Pages a history may take: 100 requests a page (the API's largest MaxResults) is more than
/// any quota collects, so the bound only stops a NextToken that never ends.
const HISTORY_PAGES: usize = 10;

impl QuotaService for aws_sdk_servicequotas::Client {
    async fn applied(&self, code: &str) -> Result<Applied, AwsError> {
        match self
            .get_service_quota()
            .service_code(SERVICE)
            .quota_code(code)
            .send()
            .await
        {
            Ok(r) => {
                if let Some(v) = r.quota().and_then(|q| q.value()) {
                    return Ok(Applied {
                        value: v,
                        is_default: false,
                    });
                }
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_no_such_resource_exception()) => {}
            Err(e) => return Err(AwsError::sdk("servicequotas", "GetServiceQuota", e)),
        }
        let r = self
            .get_aws_default_service_quota()
            .service_code(SERVICE)
            .quota_code(code)
            .send()
            .await
            .map_err(|e| AwsError::sdk("servicequotas", "GetAWSDefaultServiceQuota", e))?;
        Ok(Applied {
            value: r.quota().and_then(|q| q.value()).unwrap_or(0.0),
            is_default: true,
        })
    }

    async fn request_increase(
        &self,
        code: &str,
        desired: f64,
        now: DateTime<Utc>,
    ) -> Result<QuotaRequest, AwsError> {
        match self
            .request_service_quota_increase()
            .service_code(SERVICE)
            .quota_code(code)
            .desired_value(desired)
            .send()
            .await
        {
            Ok(r) => r
                .requested_quota()
                .map(|q| request(q, now))
                .ok_or_else(|| AwsError::Call {
                    service: "servicequotas",
                    operation: "RequestServiceQuotaIncrease",
                    code: "EmptyResponse".into(),
                    message: "the answer holds no request".into(),
                }),
            // A retried call, or another run asked first: follow the open request.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception()) =>
            {
                let history = self.history(code, now).await?;
                ephemera_core::quota_request::open_request(&history)
                    .map(|p| p.request.clone())
                    .ok_or_else(|| AwsError::Call {
                        service: "servicequotas",
                        operation: "RequestServiceQuotaIncrease",
                        code: "ResourceAlreadyExistsException".into(),
                        message: format!("a request for {code} exists but none is open"),
                    })
            }
            Err(e) => Err(AwsError::sdk(
                "servicequotas",
                "RequestServiceQuotaIncrease",
                e,
            )),
        }
    }

    async fn history(&self, code: &str, now: DateTime<Utc>) -> Result<Vec<PastRequest>, AwsError> {
        let mut out = vec![];
        let mut token: Option<String> = None;
        for _ in 0..HISTORY_PAGES {
            let page = self
                .list_requested_service_quota_change_history_by_quota()
                .service_code(SERVICE)
                .quota_code(code)
                .max_results(100)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| {
                    AwsError::sdk(
                        "servicequotas",
                        "ListRequestedServiceQuotaChangeHistoryByQuota",
                        e,
                    )
                })?;
            out.extend(page.requested_quotas().iter().map(|q| past(q, now)));
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn request_status(&self, id: &str, now: DateTime<Utc>) -> Result<QuotaRequest, AwsError> {
        let r = self
            .get_requested_service_quota_change()
            .request_id(id)
            .send()
            .await
            .map_err(|e| AwsError::sdk("servicequotas", "GetRequestedServiceQuotaChange", e))?;
        r.requested_quota()
            .map(|q| request(q, now))
            .ok_or_else(|| AwsError::Call {
                service: "servicequotas",
                operation: "GetRequestedServiceQuotaChange",
                code: "EmptyResponse".into(),
                message: format!("the answer holds no request {id}"),
            })
    }
}

//! IAM and STS, which moto does not enforce: every request is checked against the template's
//! policies (`crate::iam`, read from the request by `crate::requests`) before moto sees it, and a
//! refusal is answered in the service's own way (`access_denied`). With them: the service-linked
//! roles a fresh account has only once a principal allowed to create them makes a call that needs
//! them (https://docs.aws.amazon.com/IAM/latest/UserGuide/using-service-linked-roles.html; for
//! Spot,
//! https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/service-linked-roles-spot-instance-requests.html);
//! the condition keys read from moto's resources (tags, the instance profile); S3's 403 for a
//! missing object to a caller who may not list the bucket (S3 API reference, GetObject,
//! "Permissions"); and STS's AssumeRole, its sessions kept until they expire (`crate::sts`).

use std::collections::HashMap;

use axum::body::Body;
use axum::http::Response;

use super::{ec2_error, json_response, xml_escape, Denial, FrontDoor};
use crate::iam::{Check, Policies, Principal, ACCOUNT};
use crate::requests::{self, url_form, Wire};

impl FrontDoor {
    /// Uses `policies` instead of the template's in `region`.
    pub fn set_policies(&self, region: &str, policies: Policies) {
        self.policies_in
            .lock()
            .unwrap()
            .insert(region.to_string(), policies);
    }

    /// The template's policies as the harness read them.
    pub fn template_policies(&self) -> Policies {
        self.policies.clone()
    }

    pub fn denials_in(&self, region: &str) -> Vec<Denial> {
        self.denials
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.region == region)
            .cloned()
            .collect()
    }

    pub fn has_service_linked_role(&self, region: &str, service: &str) -> bool {
        self.service_linked_roles
            .lock()
            .unwrap()
            .iter()
            .any(|(r, s)| r == region && s == service)
    }

    pub(super) fn authorize(
        &self,
        principal: &Principal,
        region: &str,
        check: &Check,
    ) -> Result<(), String> {
        self.authorize_as(principal, None, region, check)
    }

    /// The policies in force in `region` (a test's, or the template's).
    pub(super) fn policies_for(&self, region: &str) -> Policies {
        match self.policies_in.lock().unwrap().get(region) {
            Some(p) => p.clone(),
            None => self.policies.clone(),
        }
    }

    /// [`FrontDoor::authorize`] for a caller that may be a session STS minted (its tags and
    /// session policy count).
    fn authorize_as(
        &self,
        principal: &Principal,
        session: Option<&crate::sts::Session>,
        region: &str,
        check: &Check,
    ) -> Result<(), String> {
        let result = {
            let in_region = self.policies_in.lock().unwrap();
            let p = in_region.get(region).unwrap_or(&self.policies);
            match session {
                Some(s) => {
                    p.authorize_session(principal, &s.tags, s.policy.as_deref(), region, check)
                }
                None => p.authorize(principal, region, check),
            }
        };
        if let Err(reason) = &result {
            self.denials.lock().unwrap().push(Denial {
                region: region.into(),
                principal: principal.clone(),
                action: check.action.clone(),
                resource: check.resource.clone(),
                reason: reason.clone(),
            });
        }
        result
    }

    /// A fresh account has no service-linked role until a principal allowed to create it makes
    /// a call that needs it; AWS then creates it on that principal's authority
    /// (https://docs.aws.amazon.com/IAM/latest/UserGuide/using-service-linked-roles.html).
    fn ensure_service_linked_role(
        &self,
        principal: Option<&Principal>,
        region: &str,
        service: &str,
        role: &str,
    ) -> Result<(), String> {
        if self.has_service_linked_role(region, service) {
            return Ok(());
        }
        if let Some(p) = principal {
            let check = Check::new(
                "iam:CreateServiceLinkedRole",
                format!("arn:aws:iam::{ACCOUNT}:role/aws-service-role/{service}/{role}"),
            )
            .with("iam:AWSServiceName", service);
            self.authorize(p, region, &check)?;
        }
        self.service_linked_roles
            .lock()
            .unwrap()
            .push((region.into(), service.into()));
        Ok(())
    }

    /// Tests: the sessions STS mints in `region` from now on last `seconds` at most (their
    /// answer says so, and their keys are refused as expired after it), as if the hour role
    /// chaining allows had passed that fast.
    pub fn sessions_last(&self, region: &str, seconds: i64) {
        self.session_seconds
            .lock()
            .unwrap()
            .insert(region.to_string(), seconds);
    }
}

/// STS's AssumeRole, played by the door (`sts`): the session kept, its credentials answered.
pub(super) fn assume_role(
    door: &FrontDoor,
    principal: &Principal,
    session: Option<&crate::sts::Session>,
    region: &str,
    form: &HashMap<String, String>,
) -> Response<Body> {
    let policies = door.policies_for(region);
    let answer = crate::sts::assume_role(
        &policies,
        (principal, session),
        region,
        form,
        chrono::Utc::now(),
    );
    let (status, body) = match answer {
        Ok(mut s) => {
            if let Some(&seconds) = door.session_seconds.lock().unwrap().get(region) {
                s.expires = s
                    .expires
                    .min(chrono::Utc::now() + chrono::Duration::seconds(seconds));
            }
            let key = door.sessions.mint(s.clone());
            (200, crate::sts::credentials_xml(&key, &s))
        }
        Err(r) => {
            door.denials.lock().unwrap().push(Denial {
                region: region.into(),
                principal: principal.clone(),
                action: "sts:AssumeRole".into(),
                resource: form.get("RoleArn").cloned().unwrap_or_default(),
                reason: r.message.clone(),
            });
            (r.status, crate::sts::error_xml(&r))
        }
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Body::from(body))
        .unwrap()
}

/// IAM and the fresh account, before moto sees the request: None lets it through, Some is the
/// refusal AWS would send.
pub(super) async fn enforce(
    door: &FrontDoor,
    caller: Option<(&Principal, &str)>,
    session: Option<&crate::sts::Session>,
    region: &str,
    service: &str,
    parts: &axum::http::request::Parts,
    bytes: &[u8],
) -> Option<Response<Body>> {
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok());
    let wire = Wire {
        region,
        service,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or_default(),
        target,
        body: bytes,
    };
    let (action, mut checks) = requests::checks(&wire);

    // Service-linked roles: needed by the first Spot launch and the first quota request.
    let slr = match action.as_str() {
        "ec2:RunInstances" if requests::is_spot(&url_form(bytes)) => {
            Some(("spot.amazonaws.com", "AWSServiceRoleForEC2Spot"))
        }
        "servicequotas:RequestServiceQuotaIncrease" => Some((
            "servicequotas.amazonaws.com",
            "AWSServiceRoleForServiceQuotas",
        )),
        _ => None,
    };

    let (principal, access_key) = caller?;
    let userid = match session {
        Some(s) => s.userid(),
        None => principal.userid(access_key),
    };
    for c in checks.iter_mut() {
        c.context.insert("aws:userid".into(), userid.clone());
    }
    if action == "ssm:GetParameter" {
        // A parameter that does not exist has no tags: a condition on them then fails, and AWS
        // answers AccessDenied before it would say ParameterNotFound.
        for c in checks.iter_mut() {
            let name = c.resource.split(":parameter").nth(1).unwrap_or_default();
            for (k, v) in door.parameter_tags(region, name).await {
                c.context.insert(format!("ssm:resourceTag/{k}"), v);
            }
        }
    }
    if action == "ec2:TerminateInstances" {
        for c in checks.iter_mut() {
            let id = c
                .resource
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let (tags, profile) = door.instance_keys(region, &id).await;
            for (k, v) in tags {
                c.context.insert(format!("ec2:ResourceTag/{k}"), v);
            }
            // `ec2:InstanceProfile`: the ARN of the instance's profile, absent without one
            // (Service Authorization Reference, Amazon EC2, condition keys: "Filters access by
            // the ARN of the instance profile"); an absent key fails ArnEquals.
            if let Some(p) = profile {
                c.context.insert("ec2:InstanceProfile".into(), p);
            }
        }
    }
    if action == "rds:DeleteDBSnapshot" || action == "rds:DeleteDBClusterSnapshot" {
        for c in checks.iter_mut() {
            for (k, v) in door.rds_tags(region, &c.resource).await {
                c.context.insert(format!("aws:ResourceTag/{k}"), v);
            }
        }
    }
    for c in &checks {
        if let Err(reason) = door.authorize_as(principal, session, region, c) {
            return Some(access_denied(service, &reason));
        }
    }
    if let Some(reason) = door
        .task_token_key_refused(principal, region, &action, bytes)
        .await
    {
        return Some(access_denied(service, &reason));
    }
    if action == "s3:GetObject" {
        // A missing object is 404 NoSuchKey only to a caller who may list the bucket; to any
        // other, 403 AccessDenied (S3 API reference, GetObject, "Permissions").
        let path = parts.uri.path();
        let bucket = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        let mut list = Check::new("s3:ListBucket", format!("arn:aws:s3:::{bucket}"));
        list.context.insert("aws:userid".into(), userid.clone());
        if door
            .authorize_as(principal, session, region, &list)
            .is_err()
            && !door.s3_object_exists(region, path).await
        {
            return Some(access_denied(
                service,
                &format!("not authorized to perform s3:ListBucket on arn:aws:s3:::{bucket}, so a missing object is not told apart from a refused one"),
            ));
        }
    }
    if let Some((slr_service, role)) = slr {
        if let Err(reason) =
            door.ensure_service_linked_role(Some(principal), region, slr_service, role)
        {
            return Some(if service == "ec2" {
                // HTTP 403 with this code and message: seen in CloudSnorkel/cdk-github-runners#182
                // and aws/karpenter's troubleshooting guide; the role is created by the first
                // Spot request of a principal allowed to
                // (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/service-linked-roles-spot-instance-requests.html).
                ec2_error(
                    403,
                    "AuthFailure.ServiceLinkedRoleCreationNotPermitted",
                    "The provided credentials do not have permission to create the service-linked role for EC2 Spot Instances.",
                )
            } else {
                // RequestServiceQuotaIncrease's answer without iam:CreateServiceLinkedRole
                // (remotion-dev/remotion#1941, org-formation/aws-resource-providers#75).
                json_response(
                    400,
                    serde_json::json!({"__type": "DependencyAccessDeniedException", "Message": "Service-linked role creation access denied.", "message": reason}),
                    &[("x-amzn-errortype", "DependencyAccessDeniedException")],
                )
            });
        }
    }
    None
}

/// Each service's own way of saying AccessDenied.
pub(super) fn access_denied(service: &str, message: &str) -> Response<Body> {
    match service {
        "ec2" => ec2_error(
            403,
            "UnauthorizedOperation",
            &format!("You are not authorized to perform this operation. {message}"),
        ),
        "sns" => Response::builder()
            .status(403)
            .header("content-type", "text/xml")
            .body(Body::from(format!(
                "<ErrorResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><Error><Type>Sender</Type><Code>AuthorizationError</Code><Message>{}</Message></Error><RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>",
                xml_escape(message)
            )))
            .unwrap(),
        "s3" => Response::builder()
            .status(403)
            .header("content-type", "application/xml")
            .body(Body::from(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>{}</Message><RequestId>0</RequestId></Error>",
                xml_escape(message)
            )))
            .unwrap(),
        "lambda" => json_response(
            403,
            serde_json::json!({"Type": "User", "Message": message, "message": message}),
            &[("x-amzn-errortype", "AccessDeniedException")],
        ),
        _ => json_response(
            400,
            serde_json::json!({"__type": "AccessDeniedException", "message": message, "Message": message}),
            &[("x-amzn-errortype", "AccessDeniedException")],
        ),
    }
}

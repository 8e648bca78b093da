//! Lambda's Invoke: moto cannot run the stack's handlers, so the door runs them in process
//! (`ephemera_functions::invoke`) with each function's own credentials and the settings the
//! template deploys, under the account's concurrency (TooManyRequestsException beyond it), and
//! answers a handler's error as the runtime reports it. Tests stage crashes and timeouts as
//! Lambda reports them
//! (https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html), and
//! launches by someone outside the stack after a function's answer.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Response;
use ephemera_functions::Aws;

use super::{json_response, FrontDoor};
use crate::iam::Principal;

/// A Lambda that fails as a crashed runtime does (Runtime.ExitError), or as one that ran out of
/// its Timeout does, a given number of times.
#[derive(Debug, Clone)]
pub(super) struct Crash {
    region: String,
    function: String,
    remaining: u32,
    timed_out: bool,
}

/// An instance someone outside the stack launches in a region once a function there has
/// answered in a way `when` recognizes: an On-Demand `instance_type` of `image`, untagged.
pub(super) struct OutsideLaunch {
    region: String,
    function: String,
    image: String,
    instance_type: String,
    when: fn(&serde_json::Value) -> bool,
}

impl FrontDoor {
    pub fn add_crash(&self, region: &str, function: &str, times: u32) {
        self.crashes.lock().unwrap().push(Crash {
            region: region.into(),
            function: function.into(),
            remaining: times,
            timed_out: false,
        });
    }

    /// `function` times out `times` times: Lambda answers the invocation with an unhandled
    /// `Sandbox.Timedout` ("Task timed out after … seconds"), which Step Functions reports by
    /// that name (older runtimes gave no type, reported as `Lambda.Unknown`:
    /// https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html).
    pub fn add_timeout(&self, region: &str, function: &str, times: u32) {
        self.crashes.lock().unwrap().push(Crash {
            region: region.into(),
            function: function.into(),
            remaining: times,
            timed_out: true,
        });
    }

    /// Once `function` in `region` answers with an output `when` recognizes, someone outside
    /// the stack launches an On-Demand `instance_type` of `image` there, before the answer
    /// reaches the caller (it takes vCPUs of the account's quota as any other tool would).
    pub fn launch_outside_after(
        &self,
        region: &str,
        function: &str,
        image: &str,
        instance_type: &str,
        when: fn(&serde_json::Value) -> bool,
    ) {
        self.outside_due.lock().unwrap().push(OutsideLaunch {
            region: region.into(),
            function: function.into(),
            image: image.into(),
            instance_type: instance_type.into(),
            when,
        });
    }

    /// The instances launched outside the stack in `region`.
    pub fn outside_instances(&self, region: &str) -> Vec<String> {
        self.outside
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == region)
            .map(|(_, i)| i.clone())
            .collect()
    }

    /// Launches the outside instance due after this answer, if one is.
    async fn launch_outside_if_due(
        &self,
        region: &str,
        function: &str,
        output: &serde_json::Value,
    ) {
        let due = {
            let mut due = self.outside_due.lock().unwrap();
            let i = due
                .iter()
                .position(|o| o.region == region && o.function == function && (o.when)(output));
            i.map(|i| due.remove(i))
        };
        let Some(o) = due else {
            return;
        };
        let body = format!(
            "Action=RunInstances&Version=2016-11-15&ImageId={}&InstanceType={}&MinCount=1&MaxCount=1",
            o.image, o.instance_type
        );
        let text = match self.moto_query(region, "ec2", &body).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => panic!("the outside launch failed: {e}"),
        };
        let id = text
            .split("<instanceId>")
            .nth(1)
            .and_then(|r| r.split("</instanceId>").next())
            .unwrap_or_else(|| panic!("the outside launch answered no instance: {text}"))
            .to_string();
        self.outside.lock().unwrap().push((region.into(), id));
    }

    pub fn invocations_in(&self, region: &str) -> Vec<String> {
        self.invocations
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.0 == region)
            .map(|f| f.1.clone())
            .collect()
    }

    pub(super) fn clients_for(&self, region: &str, function: &str, endpoint: &str) -> Aws {
        self.clients
            .lock()
            .unwrap()
            .entry(format!("{region}/{function}"))
            .or_insert_with(|| {
                let conf = aws_config::SdkConfig::builder()
                    .behavior_version(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(region.to_string()))
                    .endpoint_url(endpoint)
                    .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
                        aws_sdk_ec2::config::Credentials::new(
                            Principal::Function(function.into()).access_key(),
                            "testing",
                            None,
                            None,
                            "harness",
                        ),
                    ))
                    .build();
                Aws::from_conf(&conf)
            })
            .clone()
    }
}

pub(super) async fn invoke_lambda(
    door: &Arc<FrontDoor>,
    region: &str,
    path: &str,
    host: &str,
    bytes: &[u8],
) -> Response<Body> {
    let target = path
        .trim_start_matches("/2015-03-31/functions/")
        .trim_end_matches("/invocations");
    let target = urlencoding::decode(target)
        .map(|c| c.into_owned())
        .unwrap_or_default();
    // A name, or an ARN arn:aws:lambda:region:account:function:name[:qualifier].
    let name = match target.split_once(":function:") {
        Some((_, rest)) => rest.split(':').next().unwrap_or_default().to_string(),
        None => target.split(':').next().unwrap_or_default().to_string(),
    };
    // Deployed names carry a stack prefix (ephemera-quota-check-ABC123): match the function.
    let known = ephemera_functions::Function::ALL
        .into_iter()
        .find(|f| name == f.name() || name.contains(f.name()));
    let function = known.map(|f| f.name().to_string()).unwrap_or(name);
    let limit = door
        .lambda_concurrency
        .load(std::sync::atomic::Ordering::SeqCst);
    let Some(_running) = door
        .throttles
        .enter(region, limit, &format!("lambda:{function}"))
    else {
        return json_response(
            429,
            serde_json::json!({"Type": "User", "Reason": "ConcurrentInvocationLimitExceeded",
                               "message": "Rate Exceeded."}),
            &[("x-amzn-errortype", "TooManyRequestsException")],
        );
    };
    door.invocations
        .lock()
        .unwrap()
        .push((region.to_string(), function.clone()));
    let crash = {
        let mut crashes = door.crashes.lock().unwrap();
        crashes
            .iter_mut()
            .find(|c| c.region == region && c.function == function && c.remaining > 0)
            .map(|c| {
                c.remaining -= 1;
                c.timed_out
            })
    };
    if let Some(timed_out) = crash {
        let body = if timed_out {
            serde_json::json!({
                "errorType": "Sandbox.Timedout",
                "errorMessage": format!("RequestId: harness Error: Task timed out after 60.00 seconds ({function}, injected)")
            })
        } else {
            serde_json::json!({
                "errorType": "Runtime.ExitError",
                "errorMessage": format!("RequestId: harness Error: Runtime exited with error: signal: aborted ({function} crashed, injected)")
            })
        };
        return json_response(200, body, &[("x-amz-function-error", "Unhandled")]);
    }
    let payload: serde_json::Value = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                let body = serde_json::json!({"errorType": "InvalidRequestContentException", "message": e.to_string()});
                return json_response(
                    400,
                    body,
                    &[("x-amzn-errortype", "InvalidRequestContentException")],
                );
            }
        }
    };
    let aws = door.clients_for(region, &function, &format!("http://{host}"));
    let settings = door.deployed_settings(region).await;
    let result = match function.parse::<ephemera_functions::Function>() {
        Ok(f) => ephemera_functions::invoke(&aws, &settings, f, payload).await,
        Err(unknown) => Err(unknown),
    };
    if let Ok(v) = &result {
        door.launch_outside_if_due(region, &function, v).await;
    }
    match result {
        Ok(v) => json_response(200, v, &[("x-amz-executed-version", "$LATEST")]),
        Err(e) => {
            // As the runtime reports it (the message cut as `Diagnostic` cuts it).
            let d = lambda_runtime::Diagnostic::from(e);
            let body =
                serde_json::json!({"errorType": d.error_type, "errorMessage": d.error_message});
            json_response(
                200,
                body,
                &[
                    ("x-amz-function-error", "Unhandled"),
                    ("x-amz-executed-version", "$LATEST"),
                ],
            )
        }
    }
}

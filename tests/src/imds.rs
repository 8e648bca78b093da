//! A local IMDSv2 for a worker standing in for an instance: a session token, the instance's id,
//! its instance role's credentials (a session of the worker role named after the instance, as
//! EC2 hands them out) and Spot's interruption notice once one is given. The worker reads it as
//! on EC2, through `AWS_EC2_METADATA_SERVICE_ENDPOINT`, credentials included: it is started
//! with none of its own.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::Router;
use chrono::{DateTime, Utc};

type Read<T> = Arc<dyn Fn() -> T + Send + Sync>;

/// The instance profile's role, as IMDS names it.
const WORKER_ROLE: &str = "ephemera-worker-role";

/// Serves until the process ends; returns its base URL. `instance_id` and `notice` are read on
/// every request, so one server can follow a worker through attempts.
pub async fn serve(
    instance_id: impl Fn() -> String + Send + Sync + 'static,
    notice: impl Fn() -> Option<DateTime<Utc>> + Send + Sync + 'static,
) -> String {
    let instance_id: Read<String> = Arc::new(instance_id);
    let role_instance = instance_id.clone();
    let notice: Read<Option<DateTime<Utc>>> = Arc::new(notice);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the local IMDS");
    let addr = listener.local_addr().expect("its address");
    let app = Router::new()
        .route(
            "/latest/api/token",
            put(|| async {
                let mut h = HeaderMap::new();
                h.insert(
                    "x-aws-ec2-metadata-token-ttl-seconds",
                    "21600".parse().expect("a header value"),
                );
                (h, "imds-session-token")
            }),
        )
        .route(
            "/latest/meta-data/instance-id",
            get(move || {
                let id = instance_id();
                async move { id }
            }),
        )
        .route(
            "/latest/meta-data/iam/security-credentials/",
            get(|| async { WORKER_ROLE }),
        )
        .route(
            &format!("/latest/meta-data/iam/security-credentials/{WORKER_ROLE}"),
            get(move || {
                let id = role_instance();
                async move {
                    let expires = Utc::now() + chrono::Duration::hours(6);
                    serde_json::json!({
                        "Code": "Success",
                        "LastUpdated": Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                        "Type": "AWS-HMAC",
                        "AccessKeyId": crate::iam::Principal::instance_key(&id),
                        "SecretAccessKey": "testing",
                        "Token": "imds-session",
                        "Expiration": expires.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    })
                    .to_string()
                }
            }),
        )
        .route(
            "/latest/meta-data/spot/instance-action",
            get(move || {
                let given = notice();
                async move {
                    match given {
                        // EC2 states when it will act: two minutes after the notice.
                        Some(at) => (
                            StatusCode::OK,
                            serde_json::json!({
                                "action": "terminate",
                                "time": (at + chrono::Duration::minutes(2))
                                    .format("%Y-%m-%dT%H:%M:%SZ").to_string()
                            })
                            .to_string(),
                        ),
                        None => (StatusCode::NOT_FOUND, String::new()),
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

//! S3 where moto stores whatever it is told: a PutObject or UploadPart whose bytes do not match
//! the SHA-256 sent with them is refused `BadDigest`
//! (https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html), and a
//! conditional write that conflicts with one under way is answered 409
//! ConditionalRequestConflict (https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html;
//! https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html). GetObject's
//! missing object told apart by `s3:ListBucket` is in `access`.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Response};

use super::{xml_escape, FrontDoor};

impl FrontDoor {
    /// Tests: a conditional write of `path` (`/bucket/key`) in `region` is under way until the
    /// guard is dropped, so that another one there is answered 409 as AWS answers it.
    pub fn s3_conditional_write_under_way(self: &Arc<Self>, region: &str, path: &str) -> impl Drop {
        struct Under(Arc<FrontDoor>, (String, String));
        impl Drop for Under {
            fn drop(&mut self) {
                self.0.s3_conditional_writes.lock().unwrap().remove(&self.1);
            }
        }
        let key = (region.to_string(), path.to_string());
        assert!(
            self.s3_conditional_writes
                .lock()
                .unwrap()
                .insert(key.clone()),
            "a write of {path} is already under way"
        );
        Under(self.clone(), key)
    }

    /// Whether `path` (`/bucket/key`) names an object moto holds.
    pub(super) async fn s3_object_exists(&self, region: &str, path: &str) -> bool {
        self.http
            .head(format!("{}{path}", self.moto))
            .header(
                "authorization",
                format!("AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/s3/aws4_request, SignedHeaders=host, Signature=0"),
            )
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

/// S3 checks the bytes of a PutObject or UploadPart against the SHA-256 sent with them and
/// refuses a mismatch with `BadDigest`, storing nothing
/// (https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html);
/// moto stores whatever it is told. Only a digest sent as a header over a plain body is checked
/// here (one sent as an aws-chunked trailer is moto's to read).
pub(super) fn s3_bad_digest(headers: &HeaderMap, body: &[u8]) -> Option<Response<Body>> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let sent = headers.get("x-amz-checksum-sha256")?.to_str().ok()?;
    let chunked = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("STREAMING-"));
    if chunked {
        return None;
    }
    let actual = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body));
    (actual != sent).then(|| {
        s3_error(
            400,
            "BadDigest",
            "The SHA256 you specified did not match the calculated checksum.",
        )
    })
}

/// An S3 error as S3 answers it (REST, XML).
pub(super) fn s3_error(status: u16, code: &str, message: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .body(Body::from(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message><RequestId>0</RequestId></Error>",
            xml_escape(message)
        )))
        .unwrap()
}

//! An `s3://bucket/key` URL, parsed once where it is read (a RunSpec field, an argument), so
//! that what uses it asks for its bucket and key instead of cutting the text again.

use serde::{Deserialize, Serialize};

/// `s3://bucket/key`: a bucket name S3 would accept (3 to 63 lowercase letters, digits, `-` or
/// `.`) and a key, empty or ending in `/` for a prefix. Keeps the text as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct S3Url {
    url: String,
    /// Where the bucket name ends in `url` (after `s3://`).
    bucket_end: usize,
}

const SCHEME: &str = "s3://";

/// What a RunSpec field that is not an S3 URL is told (serde's error, so its last words name
/// what was expected: the RunSpec's reader fills such a field with a placeholder of that form).
pub const EXPECTED: &str =
    "expected s3://bucket/key (a bucket of 3 to 63 lowercase letters, digits, '-' or '.')";

impl S3Url {
    /// `url` when it is `s3://bucket[/key]` with a bucket name S3 accepts; None otherwise.
    pub fn parse(url: &str) -> Option<S3Url> {
        let rest = url.strip_prefix(SCHEME)?;
        let bucket = rest.split_once('/').map_or(rest, |(b, _)| b);
        let ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        ok.then(|| S3Url {
            url: url.to_string(),
            bucket_end: SCHEME.len() + bucket.len(),
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.url[SCHEME.len()..self.bucket_end]
    }

    /// The key (or prefix) after the bucket's `/`; empty for the bucket itself.
    pub fn key(&self) -> &str {
        self.url[self.bucket_end..]
            .strip_prefix('/')
            .unwrap_or_default()
    }

    /// Names one object: a key that is neither empty nor a prefix (`…/`).
    pub fn is_object(&self) -> bool {
        !self.key().is_empty() && !self.key().ends_with('/')
    }

    /// The URL as it was written.
    pub fn as_str(&self) -> &str {
        &self.url
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl TryFrom<String> for S3Url {
    type Error = String;
    fn try_from(url: String) -> Result<S3Url, String> {
        S3Url::parse(&url).ok_or_else(|| format!("'{url}' is not an S3 URL: {EXPECTED}"))
    }
}

impl From<S3Url> for String {
    fn from(u: S3Url) -> String {
        u.url
    }
}

impl schemars::JsonSchema for S3Url {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "S3Url".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string"})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_parsed_once_into_its_bucket_and_key() {
        let u = S3Url::parse("s3://bkt/a/b").unwrap();
        assert_eq!((u.bucket(), u.key()), ("bkt", "a/b"));
        assert!(u.is_object());
        assert_eq!(u.to_string(), "s3://bkt/a/b");
        let prefix = S3Url::parse("s3://bkt/runs/").unwrap();
        assert_eq!((prefix.bucket(), prefix.key()), ("bkt", "runs/"));
        assert!(!prefix.is_object());
        let bare = S3Url::parse("s3://bkt").unwrap();
        assert_eq!((bare.bucket(), bare.key()), ("bkt", ""));
        assert_eq!(bare.as_str(), "s3://bkt");
        for bad in ["s3://B/x", "http://b/x", "s3://ab/x", "bkt/x", ""] {
            assert_eq!(S3Url::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn it_reads_and_writes_as_the_text_it_was() {
        let u: S3Url = serde_json::from_str("\"s3://bkt/w\"").unwrap();
        assert_eq!(serde_json::to_string(&u).unwrap(), "\"s3://bkt/w\"");
        let e = serde_json::from_str::<S3Url>("\"https://x/w\"").unwrap_err();
        assert!(e.to_string().contains(EXPECTED), "{e}");
    }
}

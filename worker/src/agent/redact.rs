//! A job's secrets (issue 35 part 3) never leave the instance in its own words: every line of
//! job text is passed through [`scrub`] before it reaches the log shipper (`logship::Buffer`),
//! the worker's own log (`exec::supervise`'s relay), the failure's cause or the summary
//! (`sent`), and so the history, the email and the page built from them.

use std::sync::RwLock;

use base64::Engine as _;

/// What a secret's value becomes in job text.
pub const REDACTED: &str = "[redacted]";

/// Below this many characters a value's encoded forms are not looked for: they would match
/// text that has nothing to do with it. The value itself always is.
const MIN_ENCODED_CHARS: usize = 4;

/// `text` with every value of `secrets` replaced by [`REDACTED`]. Longer values first, so that a
/// secret holding another is replaced whole; and each line of a value of several lines on its
/// own too, since job text is relayed a line at a time. An empty value replaces nothing.
pub fn redact(text: &str, secrets: &[String]) -> String {
    Redactor::new(secrets).apply(text)
}

/// The strings a set of secrets is looked for as, longest first.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    needles: Vec<String>,
}

impl Redactor {
    /// Each value, each of its lines, and the forms a job or the worker's own log writes it in:
    /// base64 (standard and URL-safe, as an `Authorization: Basic` header or a Kubernetes-style
    /// secret file carries it), URL-encoded (in a query string or a connection URL) and escaped
    /// as a JSON string (the worker's log lines are JSON).
    pub fn new(secrets: &[String]) -> Redactor {
        let mut needles: Vec<String> = vec![];
        for s in secrets {
            let mut values: Vec<&str> = std::iter::once(s.as_str()).chain(s.lines()).collect();
            values
                .iter_mut()
                .for_each(|v| *v = v.trim_end_matches('\r'));
            for v in values.into_iter().filter(|v| !v.is_empty()) {
                needles.push(v.to_string());
                if v.chars().count() < MIN_ENCODED_CHARS {
                    continue;
                }
                for engine in [
                    &base64::engine::general_purpose::STANDARD_NO_PAD,
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                ] {
                    // Without its padding: the padded form holds it, and `=` is cut by some.
                    needles.push(engine.encode(v.as_bytes()));
                }
                needles.push(urlencoding::encode(v).into_owned());
                if let Ok(json) = serde_json::to_string(v) {
                    needles.push(json[1..json.len() - 1].to_string());
                }
            }
        }
        needles.sort_by_key(|s| std::cmp::Reverse(s.len()));
        needles.dedup();
        Redactor { needles }
    }

    /// `text` with every needle replaced by [`REDACTED`].
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), REDACTED);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }
}

/// The process's secrets, once the agent has read them. Process-wide because the places job
/// text leaves by are many and independent (the log writer tracing was given at start, before
/// any secret was read; the relay of each of the job's pipes; the reports to the state
/// machine), and a worker process serves one attempt of one run: its secrets are the run's.
static KEPT: RwLock<Kept> = RwLock::new(Kept {
    values: vec![],
    redactor: Redactor { needles: vec![] },
});

struct Kept {
    values: Vec<String>,
    redactor: Redactor,
}

/// From now on [`scrub`] replaces these values too (with those kept before).
pub fn keep(values: &[String]) {
    if values.is_empty() {
        return;
    }
    // A poisoned lock means a panic while the set was replaced: the set itself is whole.
    let mut kept = KEPT.write().unwrap_or_else(|p| p.into_inner());
    kept.values.extend(values.iter().cloned());
    kept.redactor = Redactor::new(&kept.values);
}

/// `text` with every secret kept so far replaced by [`REDACTED`].
pub fn scrub(text: &str) -> String {
    let kept = KEPT.read().unwrap_or_else(|p| p.into_inner());
    kept.redactor.apply(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn every_value_is_replaced_wherever_it_appears() {
        let secrets = s(&["hunter2", "sk-live-abc"]);
        assert_eq!(
            redact("token=sk-live-abc pw hunter2 hunter2", &secrets),
            "token=[redacted] pw [redacted] [redacted]"
        );
        assert_eq!(redact("nothing here", &secrets), "nothing here");
    }

    #[test]
    fn a_secret_holding_another_is_replaced_whole() {
        let secrets = s(&["abc", "xxabcxx"]);
        assert_eq!(redact("k=xxabcxx", &secrets), "k=[redacted]");
    }

    #[test]
    fn each_line_of_a_multiline_secret_is_replaced_as_it_is_relayed() {
        let pem = "-----BEGIN KEY-----\nMIIBOgIBAAJBAK\n-----END KEY-----\n".to_string();
        let secrets = vec![pem.clone()];
        for line in pem.lines() {
            assert_eq!(redact(line, &secrets), REDACTED, "{line}");
        }
        assert!(!redact(&pem, &secrets).contains("MIIBOgIBAAJBAK"));
    }

    #[test]
    fn an_empty_value_replaces_nothing() {
        assert_eq!(redact("abc", &s(&[""])), "abc");
    }

    #[test]
    fn its_base64_url_encoded_and_json_escaped_forms_are_replaced_too() {
        let value = "p@ss w/rd\"???";
        let secrets = s(&[value]);
        let std64 = base64::engine::general_purpose::STANDARD.encode(value);
        let url64 = base64::engine::general_purpose::URL_SAFE.encode(value);
        assert_ne!(
            std64, url64,
            "the value picked has both alphabets' characters"
        );
        for text in [
            format!("Authorization: Basic {std64}"),
            format!("b64url={url64}"),
            format!("https://x/?pw={}", urlencoding::encode(value)),
            serde_json::json!({ "job": value }).to_string(),
        ] {
            let out = redact(&text, &secrets);
            assert!(out.contains(REDACTED), "{text} -> {out}");
            for form in [
                value,
                std64.trim_end_matches('='),
                url64.trim_end_matches('='),
            ] {
                assert!(!out.contains(form), "{text} -> {out}");
            }
            assert!(!out.contains("p%40ss"), "{out}");
        }
        // A short value is looked for as itself only.
        assert_eq!(redact("QUJD abc", &s(&["ABC"])), "QUJD abc");
    }

    #[test]
    fn scrub_replaces_what_was_kept_and_nothing_before() {
        // The one test of the process-wide set: values no other test uses.
        assert_eq!(
            scrub("kept-secret-1 kept-secret-2"),
            "kept-secret-1 kept-secret-2"
        );
        keep(&s(&["kept-secret-1"]));
        keep(&s(&["kept-secret-2"]));
        assert_eq!(
            scrub("kept-secret-1 kept-secret-2"),
            "[redacted] [redacted]"
        );
    }
}

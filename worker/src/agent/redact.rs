//! A job's secrets (issue 35 part 3) never leave the instance in its own words: every line of
//! job text is passed through [`redact`] before it reaches the log shipper, the failure's cause
//! or the summary.

/// What a secret's value becomes in job text.
pub const REDACTED: &str = "[redacted]";

/// `text` with every value of `secrets` replaced by [`REDACTED`]. Longer values first, so that a
/// secret holding another is replaced whole; and each line of a value of several lines on its
/// own too, since job text is relayed a line at a time. An empty value replaces nothing.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut needles: Vec<&str> = secrets
        .iter()
        .flat_map(|s| std::iter::once(s.as_str()).chain(s.lines()))
        .map(|s| s.trim_end_matches('\r'))
        .filter(|s| !s.is_empty())
        .collect();
    needles.sort_by_key(|s| std::cmp::Reverse(s.len()));
    needles.dedup();
    let mut out = text.to_string();
    for n in needles {
        if out.contains(n) {
            out = out.replace(n, REDACTED);
        }
    }
    out
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
}

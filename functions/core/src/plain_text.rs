//! What a user reads (the report's page, the email, the CLI's lines) is written for them, never
//! a Rust debug form (`Some("s3://…")`, `None`, `Attempt { worker: 1, … }`). `debug_forms`
//! finds those, so that the demo can refuse a report that shows one. Nor does a run that went
//! as it should quote an AWS error it did not expect: `aws_errors` finds the ones quoted (the
//! adapters write them `<service> <Operation> failed: <Code>: <message>`), so that the demo can
//! refuse a report whose notes say its account is not what a deployment has.

/// Each debug form in `text`, with a little of its context; empty when there is none.
pub fn debug_forms(text: &str) -> Vec<String> {
    let mut found = vec![];
    let chars: Vec<char> = text.chars().collect();
    for i in 0..chars.len() {
        if i > 0 && is_word(chars[i - 1]) {
            continue;
        }
        let rest = &chars[i..];
        if wrapper(rest) || none(rest) || struct_form(rest) {
            let end = (i + 40).min(chars.len());
            found.push(chars[i..end].iter().collect());
        }
    }
    found
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn starts_with(chars: &[char], s: &str) -> bool {
    let mut it = chars.iter();
    s.chars().all(|c| it.next() == Some(&c))
}

/// `Some(`, `Ok(`, `Err(`: an Option or a Result printed with `{:?}`.
fn wrapper(rest: &[char]) -> bool {
    ["Some(", "Ok(", "Err("]
        .iter()
        .any(|w| starts_with(rest, w))
}

/// `None` as a value (`None`, `None)`, `: None,`), not as the English word ("None of the
/// partitions", "None: nothing was launched.").
fn none(rest: &[char]) -> bool {
    if !starts_with(rest, "None") {
        return false;
    }
    match rest.get(4) {
        None => true,
        Some(c) if is_word(*c) => false,
        Some(' ') => !rest.get(5).is_some_and(|c| c.is_alphabetic()),
        Some(':' | '.') => false,
        Some(_) => true,
    }
}

/// `Name { field: `: a struct printed with `{:?}`.
fn struct_form(rest: &[char]) -> bool {
    if !rest.first().is_some_and(|c| c.is_ascii_uppercase()) {
        return false;
    }
    let name = rest.iter().take_while(|c| is_word(**c)).count();
    let after = &rest[name..];
    if !starts_with(after, " { ") {
        return false;
    }
    let field = &after[3..];
    let len = field
        .iter()
        .take_while(|c| c.is_ascii_lowercase() || **c == '_' || c.is_ascii_digit())
        .count();
    len > 0 && starts_with(&field[len..], ": ")
}

/// The AWS error codes `text` quotes as the adapters write a refusal (`s3 PutObject failed:
/// NoSuchBucket: …`), in order, each once.
pub fn aws_errors(text: &str) -> Vec<String> {
    const SAID: &str = " failed: ";
    let mut codes: Vec<String> = vec![];
    for (at, _) in text.match_indices(SAID) {
        let operation = text[..at].rsplit(' ').next().unwrap_or_default();
        let code: String = text[at + SAID.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.')
            .collect();
        let follows = text[at + SAID.len() + code.len()..].starts_with(':');
        if is_camel(operation) && is_camel(&code) && follows && !codes.contains(&code) {
            codes.push(code);
        }
    }
    codes
}

/// An AWS operation or error code: `PutObject`, `NoSuchBucket`, `Throttling`.
fn is_camel(word: &str) -> bool {
    word.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
        && word.chars().any(|c| c.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_forms_are_found() {
        for text in [
            r#"manifest Some("s3://b/k/manifest.json"), expected under s3://b/k/"#,
            "the error: None",
            "error None, cause x",
            "(None)",
            "Err(Timeout)",
            "ok: Ok(())",
            "Attempt { worker: 1, market: Spot }",
            "Tried { instance_type: \"m5.large\" }",
        ] {
            assert!(!debug_forms(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn words_a_user_reads_are_not() {
        for text in [
            "None of the 40 partitions failed.",
            "<p>None: nothing was launched.</p>",
            "Nothing was launched; no Spot capacity in us-east-1a (Some instance types…",
            "HandsomeSome(x) NoneSuch OkHttp Error(",
            "td { padding: 4px }",
            "const Rows = { a: 1 };",
            "function draw(Ok) {}",
            "Spot (m5.large, us-east-1a): $0.0123",
        ] {
            // `Some instance types` is English; `HandsomeSome(` is inside a word.
            let found = debug_forms(text);
            assert!(found.is_empty(), "{text}: {found:?}");
        }
    }

    #[test]
    fn the_aws_errors_a_text_quotes_are_found_once_each() {
        let note = "the month's page was not written to s3://ephemera-artifacts/months/2026-12/index.html: s3 PutObject failed: NoSuchBucket: The specified bucket does not exist";
        assert_eq!(aws_errors(note), ["NoSuchBucket"]);
        let both = format!("{note}\n<li>ec2 DescribeInstances failed: RequestLimitExceeded: slow down</li>\n{note}");
        assert_eq!(aws_errors(&both), ["NoSuchBucket", "RequestLimitExceeded"]);
        for text in [
            "0 partitions failed",
            "verification failed: min_rows (3 < 10)",
            "launch failed: no capacity",
            "the job failed: exit 1",
        ] {
            assert_eq!(aws_errors(text), Vec::<String>::new(), "{text}");
        }
    }
}

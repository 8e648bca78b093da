//! How much of each outside text the run document keeps. Every text that comes from outside
//! (an AWS message, a Lambda's or the worker's error cause, a health detail) is cut where it
//! enters, to the size kept here, so that the run document stays within what `payload` plans
//! for Step Functions' 256 KiB state quota. The ground floor: it imports nothing of the crate,
//! so every module that takes in a text may cut it without reaching the document's bound.

/// A caught error's cause as a lost worker's end keeps it (JSON bytes); the whole cause is in
/// the execution history and the Lambda's or the worker's log.
pub const CAUSE_KEPT: usize = 400;
/// An error name as a lost worker's end keeps it. ephemera's and AWS's names are under 40
/// characters; SendTaskFailure would take 256.
pub const ERROR_NAME_KEPT: usize = 80;
/// A Lambda's error message (JSON bytes), cut before the runtime returns it.
pub const MESSAGE_KEPT: usize = 1000;
/// A refused candidate's message and its AWS error code.
pub const TRIED_MESSAGE_KEPT: usize = 120;
/// A refused candidate's AWS error code (EC2's are under 60 characters).
pub const CODE_KEPT: usize = 64;
/// health-check's detail, a priced instance's price source.
pub const DETAIL_KEPT: usize = 200;
/// A note of the report (a price estimated, a history unread: they may quote AWS).
pub const NOTE_KEPT: usize = 300;
/// A worker's line in the report: what it reported doing.
pub const WORK_KEPT: usize = 300;
/// A check's detail in `$.verification` (the workers check names every lost worker).
pub const CHECK_DETAIL_KEPT: usize = 2000;

/// `s`, cut so that its JSON form (quotes and escapes included) takes at most `max` bytes; a
/// cut text ends with how much was cut.
pub fn cap(s: &str, max: usize) -> String {
    if json_len(s) <= max {
        return s.to_string();
    }
    let marker = |cut: usize| format!("… ({cut} bytes cut)");
    // The marker's own size, at most: the cut never exceeds the text's length.
    let room = max.saturating_sub(json_len(&marker(s.len())));
    let mut used = 2;
    let mut end = 0;
    for (i, c) in s.char_indices() {
        let w = escaped_len(c);
        if used + w > room {
            break;
        }
        used += w;
        end = i + c.len_utf8();
    }
    format!("{}{}", &s[..end], marker(s.len() - end))
}

fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Bytes of `s` as a JSON string, quotes included.
pub fn json_len(s: &str) -> usize {
    2 + s.chars().map(escaped_len).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_text_fits_its_json_size_and_says_what_was_cut() {
        assert_eq!(cap("short", 100), "short");
        for s in [
            "a".repeat(5000),
            "\"".repeat(5000),
            "\u{1}".repeat(5000),
            "é".repeat(5000),
            "😀".repeat(5000),
        ] {
            for max in [60, 160, 600, 1000] {
                let c = cap(&s, max);
                let json = serde_json::to_string(&c).unwrap();
                assert!(json.len() <= max, "{max}: {} bytes", json.len());
                assert!(
                    json.len() + 12 >= max,
                    "{max}: only {} bytes kept",
                    json.len()
                );
                assert!(c.ends_with(" bytes cut)"), "{c}");
                assert_eq!(json_len(&c), json.len());
            }
        }
    }
}

//! Text from a run (a job's log lines, its failure cause, a report that quotes them) made safe to
//! print on the operator's terminal.
//!
//! A job is any command, and whatever it writes reaches `ephemera logs`, `status` and the
//! report's text. Escape sequences in it would be obeyed by the terminal: they can clear the
//! screen, rewrite lines already printed (a `\r` or a cursor move can hide a FAILED), set the
//! window title, or, on some terminals, write to the clipboard (OSC 52). So every escape
//! sequence and every control character but newline and tab is removed before printing.
//! Written here rather than taken from a crate: the ANSI strippers at hand remove well-formed
//! colour sequences and leave bare controls (`\r`, backspace, BEL, C1 codes) in place.

/// `text` without terminal escape sequences or control characters (newline and tab kept).
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            // ESC: a sequence follows; CSI (ESC [ or the one-byte U+009B) runs to its final
            // byte, OSC/DCS/PM/APC/SOS (ESC ] P ^ _ X or their C1 forms) to BEL or ST.
            '\u{1b}' => match chars.next() {
                Some('[') => skip_csi(&mut chars),
                Some(']' | 'P' | '^' | '_' | 'X') => skip_string(&mut chars),
                // Two-character sequences (ESC c resets the terminal, ESC 7/8 save/restore
                // the cursor): the one after ESC goes with it.
                _ => {}
            },
            '\u{9b}' => skip_csi(&mut chars),
            '\u{9d}' | '\u{90}' | '\u{9e}' | '\u{9f}' | '\u{98}' => skip_string(&mut chars),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A CSI sequence's parameters and intermediates (0x20–0x3F) up to its final byte (0x40–0x7E).
fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    for c in chars.by_ref() {
        if ('\u{40}'..='\u{7e}').contains(&c) || !('\u{20}'..='\u{7e}').contains(&c) {
            return;
        }
    }
}

/// A control string up to BEL, ST (ESC \ or U+009C), or the end.
fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while let Some(c) = chars.next() {
        match c {
            '\u{7}' | '\u{9c}' => return,
            '\u{1b}' if chars.peek() == Some(&'\\') => {
                chars.next();
                return;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn plain_text_newlines_and_tabs_are_kept() {
        let s = "worker 2: `python3 job.py` exited 1\n\tTraceback: é ✓";
        assert_eq!(printable(s), s);
    }

    #[test]
    fn escape_sequences_and_controls_are_removed() {
        for (hostile, shown) in [
            ("\u{1b}[2J\u{1b}[HSUCCEEDED", "SUCCEEDED"),
            ("FAILED\r\u{1b}[2KSUCCEEDED", "FAILEDSUCCEEDED"),
            ("\u{1b}[31mred\u{1b}[0m", "red"),
            ("\u{1b}]0;owned title\u{7}after", "after"),
            ("\u{1b}]52;c;ZXZpbA==\u{1b}\\after", "after"),
            ("\u{9b}2Jafter", "after"),
            ("\u{1b}cafter", "after"),
            ("bell\u{7} back\u{8}space nul\u{0}", "bell backspace nul"),
            ("\u{1b}Ptq\u{1b}\\after", "after"),
            ("cut \u{1b}[", "cut "),
        ] {
            assert_eq!(printable(hostile), shown, "{hostile:?}");
        }
    }
}

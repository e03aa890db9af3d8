//! One rule for printing a string that came from a user (a job's id or
//! name, a class, an exception message) into a log line, a `[name#slot]`
//! prefix, the SIGUSR1 report, `lrpm-host check` or `lrpmctl`'s table:
//! control characters are written as escapes, so such a string can neither
//! forge a line (`\n`, `\r`) nor drive the terminal (ANSI escapes, C1
//! controls, bidirectional overrides). Backslashes stay as they are: PHP
//! class names are full of them, and a forged escape cannot forge a line.
//! JSON output needs none of this: serde escapes control characters itself.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::fmt::Write;

/// A character that must not reach a log or a terminal as itself.
fn is_hazard(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// `s` with every control character escaped (`\n`, `\r`, `\t`, `\x1b`, `\u{9b}`).
pub fn controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_hazard) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_hazard(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_hazard(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The same for text whose line breaks are meant (a message of several
/// lines): each line escaped, the `\n` between them kept.
pub fn controls_keeping_lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && is_hazard(c)) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.split('\n').map(controls).collect::<Vec<_>>().join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_everything_else_is_kept() {
        let cases = [
            ("orders", "orders"),
            ("App\\Worker\\Orders", "App\\Worker\\Orders"),
            ("tab\there", "tab\\there"),
            ("a\nERROR FORGED line", "a\\nERROR FORGED line"),
            ("cr\roverwrite", "cr\\roverwrite"),
            ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
            ("nul\0del\x7f", "nul\\x00del\\x7f"),
            ("c1 \u{9b}31m", "c1 \\u{9b}31m"),
            ("bidi \u{202e}txt.exe", "bidi \\u{202e}txt.exe"),
            ("line sep \u{2028}", "line sep \\u{2028}"),
            ("zażółć 東京", "zażółć 東京"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(controls(input), expected, "{input:?}");
        }
    }

    #[test]
    fn line_breaks_meant_as_such_are_kept_and_the_rest_escaped() {
        assert_eq!(controls_keeping_lines("one\ntwo"), "one\ntwo");
        assert_eq!(controls_keeping_lines("one\r\n\x1b[2Jtwo"), "one\\r\n\\x1b[2Jtwo");
    }
}

//! Strips terminal escape sequences (CSI, OSC, DCS/SOS/PM/APC strings, two-byte escapes and the
//! 8-bit CSI) from command output before it is logged. Other control characters are left to
//! `protocol::event::sanitize_text`, which escapes them visibly.

/// Removes escape sequences from `line`. A sequence cut off at the end of the line is dropped.
pub fn strip(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => skip_csi(&mut chars),
                Some(']') | Some('P') | Some('X') | Some('^') | Some('_') => {
                    skip_string(&mut chars)
                }
                // A charset designation takes one more character: ESC ( B.
                Some('(') | Some(')') | Some('*') | Some('+') => {
                    chars.next();
                }
                _ => {}
            },
            '\u{9b}' => skip_csi(&mut chars),
            c => out.push(c),
        }
    }
    out
}

fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    // Parameter and intermediate bytes 0x20-0x3f, then one final byte 0x40-0x7e.
    for c in chars.by_ref() {
        if ('\u{40}'..='\u{7e}').contains(&c) || !('\u{20}'..='\u{3f}').contains(&c) {
            break;
        }
    }
}

fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    // Until BEL or ST (ESC \).
    while let Some(c) = chars.next() {
        match c {
            '\u{7}' | '\u{9c}' => break,
            '\u{1b}' if chars.peek() == Some(&'\\') => {
                chars.next();
                break;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strip;

    #[test]
    fn colours_cursor_moves_and_titles_are_removed() {
        assert_eq!(strip("\x1b[1;31mFAILED\x1b[0m test_x"), "FAILED test_x");
        assert_eq!(strip("a\x1b[2Kb\x1b[?25lc"), "abc");
        assert_eq!(strip("\x1b]0;title\x07text"), "text");
        assert_eq!(strip("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"), "link");
        assert_eq!(strip("\x1b(Bplain\u{9b}32mgreen"), "plaingreen");
    }

    #[test]
    fn plain_text_and_other_controls_are_kept() {
        assert_eq!(strip("tab\there\r"), "tab\there\r");
        assert_eq!(strip("cut off \x1b["), "cut off ");
    }
}

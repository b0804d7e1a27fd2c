//! Strips terminal escape sequences (CSI, OSC, DCS/SOS/PM/APC strings, two-byte escapes and the
//! 8-bit CSI) from command output before it is logged, except colours: a 7-bit SGR sequence
//! (`ESC [ digits;… m`) is kept, so the job page can show the colours a test runner printed.
//! Nothing reaches a terminal raw all the same: `protocol::event::sanitize_text` escapes the ESC
//! (and every other control character) visibly, as `\x1b[31m`, in the file and in the events.

/// Removes escape sequences from `line`. A sequence cut off at the end of the line is dropped.
pub fn strip(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => keep_sgr(&mut chars, &mut out),
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

/// Reads a CSI sequence after `ESC [`; appends it to `out` if it is a colour (SGR).
fn keep_sgr(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, out: &mut String) {
    let mut params = String::new();
    while let Some(&c) = chars.peek() {
        if c.is_ascii_digit() || c == ';' {
            params.push(c);
            chars.next();
        } else {
            break;
        }
    }
    if chars.peek() == Some(&'m') {
        chars.next();
        out.push_str("\u{1b}[");
        out.push_str(&params);
        out.push('m');
    } else {
        skip_csi(chars);
    }
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
    fn colours_are_kept_and_cursor_moves_and_titles_are_removed() {
        assert_eq!(
            strip("\x1b[1;31mFAILED\x1b[0m test_x"),
            "\x1b[1;31mFAILED\x1b[0m test_x"
        );
        assert_eq!(strip("\x1b[?25l\x1b[2;5Hx\x1b[38;5;2mg"), "x\x1b[38;5;2mg");
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

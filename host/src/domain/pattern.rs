//! The one wildcard rule of the host's configuration and of the matrix file: `*` stands for any
//! run of characters (none included), every other character for itself. Branch and tag
//! filters (`[webhook]`), the matrix's push branches and the quarantine list all use it, so a
//! pattern means the same wherever an operator or a project writes it.

/// Whether `text` matches `pattern` (`*` = any run of characters).
pub fn star_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::star_match;

    #[test]
    fn a_star_stands_for_any_run_of_characters_anywhere() {
        assert!(star_match("*", "main"));
        assert!(star_match("*", ""));
        assert!(star_match("release/*", "release/2.0"));
        assert!(star_match("*-ci*", "x-ci-y"));
        assert!(star_match(
            "tests::*::test_apt*",
            "tests::sd_vm::test_apt_sources"
        ));
        assert!(!star_match("release/*", "main"));
    }

    #[test]
    fn without_a_star_the_whole_text_must_match() {
        assert!(star_match("main", "main"));
        assert!(!star_match("main", "mainx"));
        assert!(!star_match("main", "xmain"));
    }

    #[test]
    fn the_fixed_parts_may_not_overlap() {
        assert!(!star_match("a*a", "a"));
        assert!(star_match("a*a", "aa"));
        assert!(!star_match("ab*ba", "aba"));
    }
}

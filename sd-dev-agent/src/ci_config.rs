//! `.github/workstation-ci.yml`: which Qubes release a commit wants.
//!
//! The file is a one-key YAML mapping (`qubes: "4.2"`, plus comments, as SDW's commits wrote
//! it; contracts §5). This reader understands exactly that subset instead of linking a YAML
//! library: a top-level `qubes:` key whose value is a plain, single-quoted or double-quoted
//! scalar, with an optional trailing comment. The value must look like `^\d+\.\d+$`; `4.2` and `"4.2"` are both
//! accepted (the original crashed on the unquoted form). Anything else is a clear error.

use crate::error::{AgentError, Result};

/// Where the file lives in the repository.
pub const CI_CONFIG_PATH: &str = ".github/workstation-ci.yml";

/// The Qubes version named by the file's text.
pub fn qubes_version(text: &str) -> Result<String> {
    let missing = |why: &str| AgentError::NoCiConfig(format!("{CI_CONFIG_PATH}: {why}"));
    let mut found = None;
    for line in text.lines() {
        // Top-level keys start in column 0; indented lines belong to something else.
        let Some(rest) = line.strip_prefix("qubes") else {
            continue;
        };
        let Some(value) = rest.trim_start().strip_prefix(':') else {
            continue;
        };
        if found.is_some() {
            return Err(missing("the key `qubes` appears more than once"));
        }
        found = Some(scalar(value.trim()).ok_or_else(|| {
            missing(&format!(
                "cannot read the value of `qubes` ({:?})",
                value.trim()
            ))
        })?);
    }
    let version = found.ok_or_else(|| missing("no top-level `qubes:` key"))?;
    let valid = version.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
    });
    if !valid {
        return Err(missing(&format!(
            "`qubes` is {version:?}; expected a version like \"4.2\""
        )));
    }
    Ok(version)
}

/// A YAML scalar: `"x"`, `'x'` or plain `x`, each optionally followed by ` # comment`.
fn scalar(v: &str) -> Option<String> {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q) {
            let end = inner.find(q)?;
            let after = inner[end + 1..].trim();
            return (after.is_empty() || after.starts_with('#')).then(|| inner[..end].to_owned());
        }
    }
    let plain = match v.find(" #") {
        Some(i) => &v[..i],
        None => v,
    }
    .trim();
    (!plain.is_empty() && !plain.starts_with('#')).then(|| plain.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_and_plain_versions_are_accepted() {
        let file =
            "# see https://github.com/freedomofpress/securedrop-workstation-ci\nqubes: \"4.2\"\n";
        assert_eq!(qubes_version(file).unwrap(), "4.2");
        assert_eq!(qubes_version("qubes: 4.1").unwrap(), "4.1");
        assert_eq!(qubes_version("qubes: '4.3'  # comment").unwrap(), "4.3");
        assert_eq!(qubes_version("qubes: 4.2 # comment").unwrap(), "4.2");
    }

    #[test]
    fn a_missing_or_malformed_key_is_a_no_ci_config_error() {
        for text in [
            "",
            "# only a comment\n",
            "other: 1\n",
            "  qubes: \"4.2\"\n",
            "qubes:\n",
            "qubes: four\n",
            "qubes: \"4\"\n",
            "qubes: \"4.2\nx",
            "qubes: 4.2\nqubes: 4.1\n",
        ] {
            let err = qubes_version(text).unwrap_err();
            assert!(matches!(err, AgentError::NoCiConfig(_)), "{text:?}: {err}");
            assert_eq!(err.exit_code(), 3);
        }
    }
}

use crate::{Error, Result};

/// The longest accepted file name in bytes (the common file-system limit).
pub const MAX_NAME_BYTES: usize = 255;

/// Checks that `name` is safe to use as a single file name in a blob store directory.
///
/// Rejected: empty names, names longer than [`MAX_NAME_BYTES`], `/` and `\`, control characters
/// (C0, DEL, C1), and names starting with `.` (which also excludes `.`, `..` and the stores'
/// temporary files).
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "the name is empty"
    } else if name.len() > MAX_NAME_BYTES {
        "the name is longer than 255 bytes"
    } else if name.starts_with('.') {
        "the name starts with '.'"
    } else if name.contains(['/', '\\']) {
        "the name contains a path separator"
    } else if name.chars().any(char::is_control) {
        "the name contains a control character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName(reason.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["a.txt", "报告 2024.pdf", "x", &"n".repeat(MAX_NAME_BYTES)] {
            assert!(validate_name(name).is_ok(), "{name:?} should be valid");
        }
    }

    #[test]
    fn rejects_unsafe_names() {
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        for name in [
            "", ".", "..", "../etc", "a/b", "a\\b", ".hidden", "a\0b", "a\nb", "a\u{7f}",
            "a\u{85}", &long,
        ] {
            assert!(
                matches!(validate_name(name), Err(Error::InvalidName(_))),
                "{name:?} should be rejected"
            );
        }
    }
}

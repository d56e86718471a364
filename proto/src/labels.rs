//! What a device label may hold: the rule the agent applies to what a
//! volunteer types and the collector applies to every report.
//!
//! Labels (vendor, model, firmware, consent keys and values, pseudonyms)
//! end up in SQL results, on the public dashboard and in its CSV and
//! Parquet exports. So beyond their length they may not hold control
//! characters (NUL, line breaks, escapes), Unicode's invisible direction
//! controls (U+202E turns the text after it around on screen, so that a
//! label can show something other than what it says), nor, in consent,
//! the separators of the stored `key=value;key=value` form.

use crate::Invalid;

/// Longest label (vendor, model, firmware, pseudonyms, consent keys and
/// values), bytes.
pub const MAX_LABEL_BYTES: usize = 64;

/// Longest app name a record may hold, bytes.
pub const MAX_APP_BYTES: usize = 128;

/// The characters no label may hold, with how a refusal names them.
fn forbidden(c: char) -> Option<&'static str> {
    match c {
        '\0' => Some("NUL"),
        c if c.is_control() => Some("a control character"),
        '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => {
            Some("a Unicode direction control")
        }
        '\u{2028}' | '\u{2029}' => Some("a Unicode line separator"),
        _ => None,
    }
}

/// True for a character a label may hold.
pub fn is_printable(c: char) -> bool {
    forbidden(c).is_none()
}

/// Checks one label `value` of `field`; `Err` names the field, the value
/// and what is wrong.
pub fn check_label(field: impl std::fmt::Display, value: &str) -> Result<(), Invalid> {
    if value.len() > MAX_LABEL_BYTES {
        let shown: String = value.chars().take(32).collect();
        return Err(Invalid(format!("{field}: {} bytes ({shown:?}...), at most {MAX_LABEL_BYTES}", value.len())));
    }
    check_printable(field, value)
}

/// Checks an app name: printable, at most [`MAX_APP_BYTES`].
pub fn check_app(field: impl std::fmt::Display, value: &str) -> Result<(), Invalid> {
    if value.len() > MAX_APP_BYTES {
        let shown: String = value.chars().take(32).collect();
        return Err(Invalid(format!("{field}: {} bytes ({shown:?}...), at most {MAX_APP_BYTES}", value.len())));
    }
    check_printable(field, value)
}

/// Checks that `value` of `field` holds none of the characters no label
/// may hold (whatever its length limit).
pub fn check_printable(field: impl std::fmt::Display, value: &str) -> Result<(), Invalid> {
    if let Some((i, c, what)) = value.char_indices().find_map(|(i, c)| forbidden(c).map(|w| (i, c, w))) {
        return Err(Invalid(format!(
            "{field}: {value:?} holds {what} (U+{:04X}) at byte {i}; labels are printable text",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Checks a consent entry: both parts as labels, the key not empty and
/// neither holding the separators of the stored form (`;`, and `=` in the
/// key).
pub fn check_consent(field: impl std::fmt::Display, key: &str, value: &str) -> Result<(), Invalid> {
    if key.is_empty() {
        return Err(Invalid(format!("{field}: a consent key is empty")));
    }
    check_label(format_args!("{field} key"), key)?;
    check_label(format_args!("{field}[{key:?}]"), value)?;
    if key.contains(['=', ';']) {
        return Err(Invalid(format!("{field} key: {key:?} holds '=' or ';', which separate consent entries")));
    }
    if value.contains(';') {
        return Err(Invalid(format!("{field}[{key:?}]: {value:?} holds ';', which separates consent entries")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_labels_pass_and_others_are_named() {
        for ok in ["Xiaomi", "Redmi 1S", "MIUI 5.0", "Ünïcode ok", "=HYPERLINK(\"x\")", ""] {
            assert_eq!(check_label("device.vendor", ok), Ok(()), "{ok:?}");
        }
        let cases = [
            ("a\0b", "holds NUL (U+0000) at byte 1"),
            ("line\nbreak", "holds a control character (U+000A) at byte 4"),
            ("evil\u{202E}gpj.exe", "holds a Unicode direction control (U+202E) at byte 4"),
            ("\u{1b}[31m", "holds a control character (U+001B) at byte 0"),
        ];
        for (value, want) in cases {
            let err = check_label("device.model", value).expect_err(value).to_string();
            assert!(err.starts_with("device.model: ") && err.contains(want), "{err}");
        }
        assert!(check_label("device.vendor", &"v".repeat(65)).expect_err("long").0.contains("65 bytes"));
    }

    #[test]
    fn consent_separators_are_refused() {
        assert_eq!(check_consent("device.consent", "cloud_account", "off"), Ok(()));
        let err = check_consent("device.consent", "a;b", "on").expect_err("separator").0;
        assert!(err.contains("\"a;b\" holds '=' or ';'"), "{err}");
        let err = check_consent("device.consent", "k", "on;x=y").expect_err("separator").0;
        assert!(err.contains("holds ';'"), "{err}");
        assert!(check_consent("device.consent", "", "on").is_err());
    }
}

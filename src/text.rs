//! How times and holds are written for people, the same way in every command.

use chrono::{DateTime, SecondsFormat};

/// Until when refresh skips a held account, in the same words everywhere.
pub fn held_text(until: i64) -> String {
    if until == crate::policy::UNTIL_SECRET {
        "until its secret is set again (account set-secret)".to_string()
    } else if until == crate::policy::UNTIL_FIXED {
        "until its secret is updated (account set-secret), it is re-enabled (account enable), \
         or refresh --force"
            .to_string()
    } else {
        format!("until {}", rfc3339(until))
    }
}

/// RFC 3339 in UTC, to the second.
pub fn rfc3339(ts: i64) -> String {
    DateTime::from_timestamp(ts, 0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| ts.to_string())
}

/// A short human duration: `59m`, `1h59m`, `45s`, `-3m` for the past.
pub fn human(secs: i64) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let s = secs.unsigned_abs();
    let text = match s {
        0..=119 => format!("{s}s"),
        120..=3599 => format!("{}m", s / 60),
        3600..=172_799 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d", s / 86_400),
    };
    format!("{sign}{text}")
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`), so that a name or a path
/// taken from the user prints on one line and cannot move the cursor or recolour a terminal.
pub fn escaped(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escaped("plain/äpp"), "plain/äpp");
        assert_eq!(escaped("a\nb\x1b[31m\t"), "a\\nb\\u{1b}[31m\\t");
    }

    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(human(45), "45s");
        assert_eq!(human(7199), "1h59m");
        assert_eq!(human(-180), "-3m");
        assert_eq!(human(3 * 86_400), "3d");
        assert!(held_text(crate::policy::UNTIL_FIXED).contains("set-secret"));
        let lost = held_text(crate::policy::UNTIL_SECRET);
        assert!(
            lost.contains("set-secret") && !lost.contains("enable"),
            "{lost}"
        );
        assert_eq!(held_text(0), "until 1970-01-01T00:00:00Z");
    }
}

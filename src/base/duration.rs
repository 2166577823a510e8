//! Durations as systemd reads them: a bare number is seconds (`120`, `1.5`), and anything
//! with a unit is humantime's (`90s`, `2min`, `1h30m`, `500ms`). One parser for every
//! flag, `BOOTSTAGE_*` variable and JSON setting, so `BOOTSTAGE_TIMEOUT=120` in
//! /etc/bootstage/bootstage.env means what `TimeoutStartSec=120` means.

use std::time::Duration;

/// What every message about a bad duration ends with.
pub const FORMS: &str = "use seconds (120) or a duration with a unit (90s, 2min, 1h30m)";

/// A duration, or why not (the value is not repeated: the caller names where it came from).
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!("a duration cannot be negative; {FORMS}"));
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return text
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e12)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("not a duration; {FORMS}"));
    }
    humantime::parse_duration(text).map_err(|_| format!("not a duration; {FORMS}"))
}

/// A duration that must be more than zero (an interval between looks: zero would ask in
/// a loop), or why not.
pub fn positive(text: &str) -> Result<Duration, String> {
    match parse(text)? {
        d if d.is_zero() => Err(format!("must be more than zero; {FORMS}")),
        d => Ok(d),
    }
}

/// A JSON duration setting: a number of seconds or a string as [`parse`] takes it.
pub fn from_json(value: &serde_json::Value) -> Result<Duration, String> {
    match value {
        serde_json::Value::Number(n) => parse(&n.to_string()),
        serde_json::Value::String(s) => parse(s),
        _ => Err(format!("not a duration; {FORMS}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interval: more than zero, in any form.
    #[test]
    fn an_interval_is_more_than_zero() {
        assert_eq!(positive("5"), Ok(Duration::from_secs(5)));
        assert_eq!(positive("250ms"), Ok(Duration::from_millis(250)));
        for zero in ["0", "0s", "0.0"] {
            assert_eq!(
                positive(zero),
                Err(format!("must be more than zero; {FORMS}")),
                "{zero}"
            );
        }
        assert!(positive("-1").is_err());
    }

    #[test]
    fn bare_numbers_are_seconds_and_units_work() {
        let ms = |t: &str| parse(t).map(|d| d.as_millis());
        assert_eq!(ms("120"), Ok(120_000));
        assert_eq!(ms("1.5"), Ok(1_500));
        assert_eq!(ms("0"), Ok(0));
        assert_eq!(ms("90s"), Ok(90_000));
        assert_eq!(ms("2min"), Ok(120_000));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms(" 20 "), Ok(20_000));
        for negative in ["-5", "-5s", " -1min"] {
            assert_eq!(
                parse(negative),
                Err(format!("a duration cannot be negative; {FORMS}")),
                "{negative:?}"
            );
        }
        for bad in ["", "abc", "1.2.3", "5 parsecs", "."] {
            assert_eq!(
                parse(bad),
                Err(format!("not a duration; {FORMS}")),
                "{bad:?}"
            );
        }
        assert_eq!(
            from_json(&serde_json::json!(30)).map(|d| d.as_secs()),
            Ok(30)
        );
        assert_eq!(
            from_json(&serde_json::json!("1m")).map(|d| d.as_secs()),
            Ok(60)
        );
        assert!(from_json(&serde_json::json!(true)).is_err());
    }
}

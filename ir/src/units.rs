//! Parsing of the spec's units: durations, sizes and rates (SPEC.md "Meaning").
//!
//! Each parser takes the text as written and returns the value or a
//! [`UnitError`] whose message and help the front ends turn into a diagnostic.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Why a unit failed to parse: a message for the label and a help line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitError {
    pub message: String,
    pub help: String,
}

impl UnitError {
    fn new(message: impl Into<String>, help: impl Into<String>) -> Self {
        UnitError {
            message: message.into(),
            help: help.into(),
        }
    }
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Splits `"123abc"` into its leading ASCII digits and the rest.
fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    text.split_at(end)
}

/// A duration: an integer followed by `ms`, `s`, `m` or `h` (`"500ms"`, `"10s"`).
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    const HELP: &str =
        "write a whole number followed by ms, s, m or h, e.g. \"500ms\", \"10s\", \"5m\", \"1h\"";
    let (digits, unit) = split_number(text.trim());
    if text.trim() != text || digits.is_empty() {
        return Err(UnitError::new(format!("`{text}` is not a duration"), HELP));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| UnitError::new(format!("`{text}` is too large a duration"), HELP))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(UnitError::new(
                format!("duration `{text}` has no unit"),
                HELP,
            ));
        }
        _ => {
            return Err(UnitError::new(
                format!("`{unit}` is not a duration unit"),
                HELP,
            ));
        }
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| UnitError::new(format!("`{text}` is too large a duration"), HELP))
}

/// A size written as text: an integer followed by `B`, `KiB`, `MiB` or `GiB`
/// (`"16KiB"`). Plain integers in a spec are bytes and need no parsing.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    const HELP: &str =
        "write a whole number of bytes, or a number followed by B, KiB, MiB or GiB, e.g. \"16KiB\"";
    let (digits, unit) = split_number(text.trim());
    if text.trim() != text || digits.is_empty() {
        return Err(UnitError::new(format!("`{text}` is not a size"), HELP));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| UnitError::new(format!("`{text}` is too large a size"), HELP))?;
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" | "kb" | "K" | "k" => {
            return Err(UnitError::new(
                format!("`{unit}` is ambiguous"),
                "sizes use binary units: did you mean KiB?",
            ));
        }
        "MB" | "mb" | "M" => {
            return Err(UnitError::new(
                format!("`{unit}` is ambiguous"),
                "sizes use binary units: did you mean MiB?",
            ));
        }
        "GB" | "gb" | "G" => {
            return Err(UnitError::new(
                format!("`{unit}` is ambiguous"),
                "sizes use binary units: did you mean GiB?",
            ));
        }
        _ => return Err(UnitError::new(format!("`{unit}` is not a size unit"), HELP)),
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| UnitError::new(format!("`{text}` is too large a size"), HELP))
}

/// The period of a rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Period {
    Second,
    Minute,
    Hour,
}

impl Period {
    pub fn as_duration(self) -> Duration {
        match self {
            Period::Second => Duration::from_secs(1),
            Period::Minute => Duration::from_secs(60),
            Period::Hour => Duration::from_secs(3600),
        }
    }

    pub fn suffix(self) -> &'static str {
        match self {
            Period::Second => "s",
            Period::Minute => "m",
            Period::Hour => "h",
        }
    }
}

/// `count` events per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rate {
    pub count: u64,
    pub period: Period,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.period.suffix())
    }
}

/// A rate: `"N/s"`, `"N/m"` or `"N/h"` with N a positive integer.
pub fn parse_rate(text: &str) -> Result<Rate, UnitError> {
    const HELP: &str = "write a positive whole number, a slash and s, m or h, e.g. \"100/s\"";
    let Some((count, period)) = text.split_once('/') else {
        return Err(UnitError::new(format!("`{text}` is not a rate"), HELP));
    };
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UnitError::new(format!("`{text}` is not a rate"), HELP));
    }
    let count: u64 = count
        .parse()
        .map_err(|_| UnitError::new(format!("`{text}` is too large a rate"), HELP))?;
    if count == 0 {
        return Err(UnitError::new("a rate of zero allows nothing", HELP));
    }
    let period = match period {
        "s" => Period::Second,
        "m" => Period::Minute,
        "h" => Period::Hour,
        _ => {
            return Err(UnitError::new(
                format!("`{period}` is not a rate period"),
                HELP,
            ));
        }
    };
    Ok(Rate { count, period })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "10",
            "s",
            "-1s",
            "1.5s",
            " 1s",
            "1 s",
            "10sec",
            "1d",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(
            parse_duration("18446744073709551615h").is_err(),
            "overflow is an error"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(matches!(parse_size("16KB"), Err(e) if e.help.contains("KiB")));
        for bad in [
            "",
            "KiB",
            "1.5MiB",
            "-1KiB",
            "16 KiB",
            "16kib",
            "99999999999999999999GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(
            parse_rate("100/s"),
            Ok(Rate {
                count: 100,
                period: Period::Second
            })
        );
        assert_eq!(
            parse_rate("5/m"),
            Ok(Rate {
                count: 5,
                period: Period::Minute
            })
        );
        assert_eq!(
            parse_rate("1/h"),
            Ok(Rate {
                count: 1,
                period: Period::Hour
            })
        );
        for bad in [
            "", "100", "/s", "0/s", "100/d", "100/sec", "-1/s", "1.5/s", "100 /s",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should not parse");
        }
    }
}

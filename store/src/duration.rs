//! Durations written for people, read one way everywhere: on the command line
//! (`--staleness-bound 250ms`) and in campaign files (`time_limit = "30s"`).
//!
//! A duration is what `humantime` reads (`500ms`, `2s`, `1m30s`), and a bare `0` is
//! zero: `0` needs no unit, as it is the same in every unit, and `--staleness-bound 0`
//! is the natural way to ask for no staleness at all.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Why a duration was refused. It says what one looks like, as typed on a command line.
#[derive(Debug, thiserror::Error)]
#[error("{0}: write a duration such as 0, 250ms, 2s or 1m30s")]
pub struct DurationError(#[source] humantime::DurationError);

/// Reads a duration: `0`, or what `humantime` reads (`250ms`, `2s`, `1m30s`).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(DurationError)
}

/// Reads a duration from a string in a file, as [`parse`] does:
/// `#[serde(deserialize_with = "coherence_store::duration::deserialize")]`. The error
/// says what one looks like as a TOML string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(|DurationError(e)| {
        serde::de::Error::custom(format!(
            "{e}: write a duration such as \"250ms\", \"5s\" or \"1m\""
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_needs_no_unit() {
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert_eq!(parse(" 0 ").unwrap(), Duration::ZERO);
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
    }

    #[test]
    fn a_bad_duration_says_what_one_looks_like() {
        let e = parse("soon").unwrap_err().to_string();
        assert!(
            e.ends_with(": write a duration such as 0, 250ms, 2s or 1m30s"),
            "{e}"
        );
        #[derive(Debug, Deserialize)]
        struct T {
            #[serde(deserialize_with = "deserialize")]
            d: Duration,
        }
        let e = serde_json::from_str::<T>(r#"{"d": "soon"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(": write a duration such as \"250ms\", \"5s\" or \"1m\""),
            "{e}"
        );
        let t: T = serde_json::from_str(r#"{"d": "0"}"#).unwrap();
        assert_eq!(t.d, Duration::ZERO);
    }
}

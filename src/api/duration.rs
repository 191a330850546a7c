//! Durations as Kubernetes users write them (`90s`, `5m`, `1h30m`).
//!
//! The text is kept as written so that `kubectl get -o yaml` shows what the user applied, and the
//! parsed value is computed once at deserialization.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the CRD schema enforces; a subset of Go's `time.ParseDuration` so that CEL's
/// `duration()` accepts every value the schema lets through.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(StdDuration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(StdDuration::from_secs(secs))
    }

    pub const fn from_std(d: StdDuration) -> Self {
        Self(d)
    }

    pub const fn as_std(self) -> StdDuration {
        self.0
    }

    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {why} (expected e.g. 90s, 5m, 1h30m)")]
pub struct ParseDurationError {
    input: String,
    why: &'static str,
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why| ParseDurationError { input: input.to_owned(), why };
        if input.is_empty() {
            return Err(err("empty"));
        }
        let mut rest = input;
        let mut total_ms: u128 = 0;
        while !rest.is_empty() {
            let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or(err("missing unit"))?;
            if num_len == 0 {
                return Err(err("missing number"));
            }
            let (num, after) = rest.split_at(num_len);
            let unit_len = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
            let (unit, after) = after.split_at(unit_len);
            let unit_ms: u128 = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => return Err(err("unit must be one of ms, s, m, h")),
            };
            let (int, frac) = match num.split_once('.') {
                Some((i, f)) if !i.is_empty() && !f.is_empty() && !f.contains('.') => (i, f),
                Some(_) => return Err(err("malformed number")),
                None => (num, ""),
            };
            let int: u128 = int.parse().map_err(|_| err("number too large"))?;
            // Fractions are kept to the millisecond; finer precision is meaningless for schedules.
            let frac = &frac[..frac.len().min(9)];
            let frac_ms = if frac.is_empty() {
                0
            } else {
                let digits: u128 = frac.parse().map_err(|_| err("malformed number"))?;
                digits * unit_ms / 10u128.pow(frac.len() as u32)
            };
            total_ms = int
                .checked_mul(unit_ms)
                .and_then(|v| v.checked_add(frac_ms))
                .and_then(|v| v.checked_add(total_ms))
                .ok_or(err("too large"))?;
            rest = after;
        }
        let ms = u64::try_from(total_ms).map_err(|_| err("too large"))?;
        Ok(Self(StdDuration::from_millis(ms)))
    }
}

impl fmt::Display for Duration {
    /// The shortest exact Go-style form: `1h30m`, `90s`, `250ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> StdDuration {
        s.parse::<Duration>().unwrap().as_std()
    }

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(d("90s"), StdDuration::from_secs(90));
        assert_eq!(d("5m"), StdDuration::from_secs(300));
        assert_eq!(d("1h30m"), StdDuration::from_secs(5400));
        assert_eq!(d("250ms"), StdDuration::from_millis(250));
        assert_eq!(d("1.5h"), StdDuration::from_secs(5400));
        assert_eq!(d("0.25s"), StdDuration::from_millis(250));
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for bad in ["", "5", "m", "5d", "1.h", ".5s", "-5s", "5 s", "1..5s", "99999999999999999999999h"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} should be rejected");
            if !bad.contains("99999") {
                assert!(!re.is_match(bad), "schema pattern accepts {bad:?}");
            }
        }
    }

    #[test]
    fn displays_in_shortest_form_and_round_trips() {
        for (input, shown) in [("90s", "1m30s"), ("24h", "24h"), ("1500ms", "1s500ms"), ("0s", "0s")] {
            let parsed: Duration = input.parse().unwrap();
            assert_eq!(parsed.to_string(), shown);
            assert_eq!(shown.parse::<Duration>().unwrap(), parsed);
        }
    }
}

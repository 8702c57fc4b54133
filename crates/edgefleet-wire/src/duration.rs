//! Human durations as used in manifests and flags: `500ms`, `10s`, `5m`, `24h`, `7d`, `1h30m`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the way people write it. Serialises back to the canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DurationSpec(pub Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: {reason} (expected forms like 500ms, 10s, 5m, 24h, 7d, 1h30m)"
)]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

impl DurationSpec {
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl FromStr for DurationSpec {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError {
            input: input.to_owned(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s == "0" {
            return Ok(Self(Duration::ZERO));
        }
        let mut total_ms: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(err("a number must come before each unit"));
            }
            let value: u128 = rest[..digits]
                .parse()
                .map_err(|_| err("number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit_ms: u128 = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => return Err(err("missing unit")),
                _ => return Err(err("unknown unit")),
            };
            rest = &rest[unit_len..];
            total_ms = value
                .checked_mul(unit_ms)
                .and_then(|v| total_ms.checked_add(v))
                .ok_or_else(|| err("too large"))?;
        }
        let ms = u64::try_from(total_ms).map_err(|_| err("too large"))?;
        Ok(Self(Duration::from_millis(ms)))
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let mut rest = ms;
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if rest >= size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        if rest > 0 {
            write!(f, "{rest}ms")?;
        }
        Ok(())
    }
}

impl Serialize for DurationSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected_ms: Option<u64>) {
        let got = input
            .parse::<DurationSpec>()
            .ok()
            .map(|d| d.0.as_millis() as u64);
        assert_eq!(got, expected_ms, "{input}");
    }

    #[test]
    fn parses_human_forms() {
        check("500ms", Some(500));
        check("10s", Some(10_000));
        check("5m", Some(300_000));
        check("24h", Some(86_400_000));
        check("7d", Some(604_800_000));
        check("1h30m", Some(5_400_000));
        check("0", Some(0));
        check("", None);
        check("10", None);
        check("s", None);
        check("10x", None);
        check("-5s", None);
        check("99999999999999999999999d", None);
    }

    #[test]
    fn display_round_trips() {
        for s in ["500ms", "10s", "1h30m", "7d", "1d1h1m1s1ms", "0s"] {
            let d: DurationSpec = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
    }
}

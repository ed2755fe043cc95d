//! Value types of job files: durations (`"500ms"`), sizes (`"256MiB"`), compression (`"zstd:3"`),
//! and the `stdout` destination. Each parses from a string with a precise error.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A duration written as `"500ms"`, `"5s"`, `"2m"`, `"1h"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Dur(pub Duration);

/// A size in bytes written as `"4KiB"`, `"256MiB"`, `"1GiB"` (or a plain number of bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Size(pub u64);

/// `"zstd:<1..19>"` or `"none"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Compression {
    None,
    Zstd(i32),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(3)
    }
}

impl Compression {
    /// The zstd level the store writes pages with; None: stored uncompressed.
    pub fn level(self) -> Option<i32> {
        match self {
            Compression::None => None,
            Compression::Zstd(l) => Some(l),
        }
    }
}

/// Why a job file value does not parse; the message says what was expected and what was found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("expected a duration like \"1s\", found \"{0}\"")]
    Duration(String),
    #[error("a duration cannot be negative, found \"{0}\"")]
    NegativeDuration(String),
    #[error("expected a size like \"256MiB\", found \"{0}\"")]
    Size(String),
    #[error("expected \"zstd:<1..19>\" or \"none\", found \"{0}\"")]
    Compression(String),
    #[error("expected \"log\", \"null\" or a path, found \"\"")]
    EmptyOutput,
}

/// Implements `Deserialize` for a type with `FromStr<Err = UnitError>` by reading a string, so the
/// message says what was expected and what was found.
macro_rules! deserialize_from_str {
    ($t:ty, $expecting:expr) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$t, E> {
                        s.parse::<$t>().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

/// Reads a number that must be finite: TOML allows `inf` and `nan`, which no setting means (and
/// which JSON, spoken to the checkpoint worker, cannot carry).
pub(crate) fn finite<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "expected a finite number, found {v}"
        )))
    }
}

impl std::str::FromStr for Dur {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let bad = || UnitError::Duration(s.into());
        let t = s.trim();
        if t.starts_with('-') {
            return Err(UnitError::NegativeDuration(s.into()));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let scale = match unit.trim() {
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        let secs = n * scale;
        if !secs.is_finite() || secs > 1e9 {
            return Err(bad());
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}
deserialize_from_str!(Dur, "a duration like \"1s\"");

/// As a job file writes it: `"60s"`, `"300ms"`, `"1500us"` (the largest unit that is exact).
impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d.subsec_nanos() % 1_000_000 == 0 {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}us", d.as_micros())
        }
    }
}

impl std::str::FromStr for Size {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let bad = || UnitError::Size(s.into());
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "k" => 1 << 10,
            "MiB" | "M" => 1 << 20,
            "GiB" | "G" => 1 << 30,
            "TiB" | "T" => 1 << 40,
            "KB" | "kB" => 1000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(scale).map(Size).ok_or_else(bad)
    }
}
deserialize_from_str!(Size, "a size like \"256MiB\"");

impl std::str::FromStr for Compression {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        let bad = || UnitError::Compression(s.into());
        match s {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::default()),
            _ => {
                let lvl = s.strip_prefix("zstd:").ok_or_else(bad)?;
                let n: i32 = lvl.parse().map_err(|_| bad())?;
                if (1..=19).contains(&n) {
                    Ok(Compression::Zstd(n))
                } else {
                    Err(bad())
                }
            }
        }
    }
}
deserialize_from_str!(Compression, "\"zstd:<1..19>\" or \"none\"");

impl std::str::FromStr for super::schema::Output {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, UnitError> {
        use super::schema::Output;
        Ok(match s {
            "log" => Output::Log,
            "null" => Output::Null,
            "" => return Err(UnitError::EmptyOutput),
            p => Output::Path(p.into()),
        })
    }
}
deserialize_from_str!(super::schema::Output, "\"log\", \"null\" or a path");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            "500ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("5s".parse::<Dur>().unwrap().0, Duration::from_secs(5));
        assert_eq!(
            "1.5s".parse::<Dur>().unwrap().0,
            Duration::from_millis(1500)
        );
        assert!("fast"
            .parse::<Dur>()
            .unwrap_err()
            .to_string()
            .contains("found \"fast\""));
        assert!("-1s".parse::<Dur>().is_err());
        assert!("5".parse::<Dur>().is_err());
    }

    #[test]
    fn durations_display_as_written() {
        for s in ["60s", "300ms", "1500ms", "250us"] {
            assert_eq!(s.parse::<Dur>().unwrap().to_string(), s);
        }
        assert_eq!("1m".parse::<Dur>().unwrap().to_string(), "60s");
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!("4KiB".parse::<Size>().unwrap().0, 4096);
        assert_eq!("256MiB".parse::<Size>().unwrap().0, 256 << 20);
        assert!("12XB".parse::<Size>().is_err());
    }

    #[test]
    fn sizes_take_decimal_units_and_refuse_overflow() {
        assert_eq!("10MB".parse::<Size>().unwrap().0, 10_000_000);
        assert_eq!(" 2 GiB ".parse::<Size>().unwrap().0, 2 << 30);
        assert_eq!("512".parse::<Size>().unwrap().0, 512);
        let e = "99999999999TiB".parse::<Size>().unwrap_err();
        assert_eq!(e, UnitError::Size("99999999999TiB".into()));
        assert_eq!(
            e.to_string(),
            "expected a size like \"256MiB\", found \"99999999999TiB\""
        );
    }

    #[test]
    fn duration_errors_say_what_was_found() {
        assert_eq!(
            "-5s".parse::<Dur>().unwrap_err().to_string(),
            "a duration cannot be negative, found \"-5s\""
        );
        assert_eq!(
            "250µs".parse::<Dur>().unwrap().0,
            Duration::from_micros(250)
        );
        assert_eq!("2h".parse::<Dur>().unwrap().0, Duration::from_secs(7200));
        // Beyond what any setting means.
        assert_eq!(
            "99999999999h".parse::<Dur>().unwrap_err(),
            UnitError::Duration("99999999999h".into())
        );
    }

    #[test]
    fn output_is_log_null_or_a_path() {
        use super::super::schema::Output;
        assert_eq!("log".parse::<Output>().unwrap(), Output::Log);
        assert_eq!("null".parse::<Output>().unwrap(), Output::Null);
        assert_eq!(
            "/tmp/out".parse::<Output>().unwrap(),
            Output::Path("/tmp/out".into())
        );
        assert_eq!("".parse::<Output>().unwrap_err(), UnitError::EmptyOutput);
    }

    #[test]
    fn compression_levels_are_bounded() {
        assert_eq!(
            "zstd:3".parse::<Compression>().unwrap(),
            Compression::Zstd(3)
        );
        assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
        assert!("zstd:25".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().is_err());
    }
}

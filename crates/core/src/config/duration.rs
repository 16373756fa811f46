//! ISO 8601 durations exactly as the official twin schema's `TimeConfiguration` pattern accepts
//! them: `P[nY][nM][nW][nD][T[nH][nM][nS]]`, upper case, at least one component, a decimal
//! fraction only in the last component, and (our rule on top of the grammar) a total above zero.
//!
//! The original text is kept beside the converted value so that the reported properties echo
//! exactly what the operator wrote (`"P1DT2H"` stays `"P1DT2H"`).

use std::fmt;
use std::time::Duration;

/// The longest duration a timer uses. Longer values are valid (the schema has no maximum) but
/// are clamped, so that `Instant + duration` can never overflow; an advisory says so.
pub const MAX_EFFECTIVE: Duration = Duration::from_secs(100 * 365 * 86_400);

const NANOS_PER_SEC: u128 = 1_000_000_000;
const DAY: u128 = 86_400 * NANOS_PER_SEC;

/// A parsed, valid duration with the text it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsoDuration {
    text: String,
    exact_nanos: u128,
}

/// Why a string is not a valid duration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text does not follow the grammar.
    #[error("{0}")]
    Grammar(&'static str),
    /// Grammatical, but every component is zero.
    #[error("the duration must be longer than zero")]
    Zero,
}

/// The designators in the order they may appear, with their length in nanoseconds.
/// `M` appears twice: months before `T`, minutes after.
const DATE_UNITS: [(u8, u128); 4] = [(b'Y', 365 * DAY), (b'M', 30 * DAY), (b'W', 7 * DAY), (b'D', DAY)];
const TIME_UNITS: [(u8, u128); 3] = [
    (b'H', 3600 * NANOS_PER_SEC),
    (b'M', 60 * NANOS_PER_SEC),
    (b'S', NANOS_PER_SEC),
];

impl IsoDuration {
    /// Parses `text`; see the module documentation for the grammar.
    pub fn parse(text: &str) -> Result<IsoDuration, DurationError> {
        let exact_nanos = parse_nanos(text)?;
        if exact_nanos == 0 {
            return Err(DurationError::Zero);
        }
        Ok(IsoDuration {
            text: text.to_owned(),
            exact_nanos,
        })
    }

    /// A default written in the code: its text and value are checked against `parse` by a test.
    pub(crate) fn literal(text: &str, secs: u64) -> IsoDuration {
        IsoDuration {
            text: text.to_owned(),
            exact_nanos: u128::from(secs) * NANOS_PER_SEC,
        }
    }

    /// The text exactly as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value a timer uses: the exact value clamped to [`MAX_EFFECTIVE`].
    pub fn duration(&self) -> Duration {
        if self.exact_nanos >= MAX_EFFECTIVE.as_nanos() {
            return MAX_EFFECTIVE;
        }
        // Below MAX_EFFECTIVE, so the seconds fit in u64.
        let secs = (self.exact_nanos / NANOS_PER_SEC) as u64;
        let nanos = (self.exact_nanos % NANOS_PER_SEC) as u32;
        Duration::new(secs, nanos)
    }

    /// Whether the written value exceeds [`MAX_EFFECTIVE`] and was clamped.
    pub fn is_clamped(&self) -> bool {
        self.exact_nanos > MAX_EFFECTIVE.as_nanos()
    }
}

impl fmt::Display for IsoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Checks the grammar alone (a zero total is grammatical), as the official pattern does.
pub fn is_grammatical(text: &str) -> bool {
    parse_nanos(text).is_ok()
}

/// One `digits[.digits]` + designator component, scanned from `bytes[pos..]`.
struct Component {
    designator: u8,
    int: u128,
    frac: Option<(u128, u32)>,
    end: usize,
}

fn scan_component(bytes: &[u8], pos: usize) -> Result<Component, DurationError> {
    let mut i = pos;
    let mut int: u128 = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        // Saturating: a grammatical but absurdly long value is clamped later, never overflows.
        int = int.saturating_mul(10).saturating_add(u128::from(bytes[i] - b'0'));
        i += 1;
    }
    if i == pos {
        return Err(DurationError::Grammar("expected a number before each designator"));
    }
    let mut frac = None;
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        let start = i;
        let mut value: u128 = 0;
        let mut digits: u32 = 0;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            // Only the first 9 fractional digits matter at nanosecond precision... but a
            // fraction of a year has more; keep 18 digits, which is well past 1 ns of a year.
            if digits < 18 {
                value = value * 10 + u128::from(bytes[i] - b'0');
                digits += 1;
            }
            i += 1;
        }
        if i == start {
            return Err(DurationError::Grammar("expected digits after the decimal point"));
        }
        frac = Some((value, digits));
    }
    if i >= bytes.len() {
        return Err(DurationError::Grammar(
            "expected a designator (Y, M, W, D, H, M or S) after a number",
        ));
    }
    Ok(Component {
        designator: bytes[i],
        int,
        frac,
        end: i + 1,
    })
}

fn component_nanos(c: &Component, unit: u128) -> u128 {
    let whole = c.int.saturating_mul(unit);
    let part = match c.frac {
        Some((value, digits)) => value.saturating_mul(unit) / 10u128.pow(digits),
        None => 0,
    };
    whole.saturating_add(part)
}

fn parse_nanos(text: &str) -> Result<u128, DurationError> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'P') {
        return Err(DurationError::Grammar("must start with an upper-case P"));
    }
    let mut pos = 1;
    let mut total: u128 = 0;
    let mut components = 0;
    let mut next_date_unit = 0;
    let mut in_time = false;
    let mut next_time_unit = 0;
    while pos < bytes.len() {
        if bytes[pos] == b'T' {
            if in_time {
                return Err(DurationError::Grammar("T may appear only once"));
            }
            in_time = true;
            pos += 1;
            if pos >= bytes.len() || !bytes[pos].is_ascii_digit() {
                return Err(DurationError::Grammar("T must be followed by a time component"));
            }
            continue;
        }
        let c = scan_component(bytes, pos)?;
        let (units, next): (&[(u8, u128)], &mut usize) = if in_time {
            (&TIME_UNITS, &mut next_time_unit)
        } else {
            (&DATE_UNITS, &mut next_date_unit)
        };
        let Some(offset) = units[*next..].iter().position(|(d, _)| *d == c.designator) else {
            return Err(DurationError::Grammar(if in_time {
                "after T only H, M and S may follow, in that order, each once"
            } else {
                "before T only Y, M, W and D may appear, in that order, each once"
            }));
        };
        let index = *next + offset;
        *next = index + 1;
        if c.frac.is_some() && c.end != bytes.len() {
            return Err(DurationError::Grammar(
                "only the last component may have a fraction",
            ));
        }
        total = total.saturating_add(component_nanos(&c, units[index].1));
        components += 1;
        pos = c.end;
    }
    if components == 0 {
        return Err(DurationError::Grammar("needs at least one component"));
    }
    Ok(total)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn secs(text: &str) -> f64 {
        IsoDuration::parse(text).unwrap().duration().as_secs_f64()
    }

    #[test]
    fn converts_each_unit() {
        assert_eq!(secs("PT7M"), 420.0);
        assert_eq!(secs("PT5H"), 18_000.0);
        assert_eq!(secs("P1DT2H"), 93_600.0);
        assert_eq!(secs("P1Y"), 365.0 * 86_400.0);
        assert_eq!(secs("P1M"), 30.0 * 86_400.0);
        assert_eq!(secs("P1W"), 7.0 * 86_400.0);
        assert_eq!(secs("PT1.5H"), 5_400.0);
        assert_eq!(secs("PT0.5S"), 0.5);
        assert_eq!(
            secs("P1Y2M3W4DT5H6M7.25S"),
            365.0 * 86_400.0 + 60.0 * 86_400.0 + 25.0 * 86_400.0 + 5.0 * 3600.0 + 367.25
        );
    }

    #[test]
    fn keeps_the_text() {
        assert_eq!(IsoDuration::parse("P1DT2H").unwrap().as_str(), "P1DT2H");
    }

    #[test]
    fn rejects_what_the_grammar_rejects() {
        for bad in [
            "",
            "P",
            "PT",
            "pt7m",
            "PT7m",
            "-PT5M",
            "PT1.5H30M",
            "P1DT",
            "PT5",
            "P5",
            "7M",
            "PT7M ",
            " PT7M",
            "P1D1Y",
            "PT1M1H",
            "P1.D",
            "P.5D",
            "PT1H1H",
            "PTT1H",
            "P1T",
            "P1,5D",
            "P1DT2HT3M",
        ] {
            assert!(IsoDuration::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn rejects_zero_but_accepts_tiny() {
        assert_eq!(IsoDuration::parse("PT0S"), Err(DurationError::Zero));
        assert_eq!(IsoDuration::parse("P0D"), Err(DurationError::Zero));
        assert_eq!(IsoDuration::parse("PT0.0S"), Err(DurationError::Zero));
        assert!(IsoDuration::parse("PT0.001S").is_ok());
    }

    #[test]
    fn clamps_absurd_values_without_overflow() {
        let d = IsoDuration::parse("P99999999999999999999999999999999999999999Y").unwrap();
        assert!(d.is_clamped());
        assert_eq!(d.duration(), MAX_EFFECTIVE);
    }
}

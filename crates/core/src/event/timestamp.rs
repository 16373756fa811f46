//! Event timestamps: a wall-clock instant at millisecond precision with the local UTC offset in
//! force at that instant, written as RFC 3339 the way the message schema's `date-time` format
//! (format assertion on) accepts it.
//!
//! The wall clock is always passed in (`SystemTime`), never read here, so tests fix time.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, FixedOffset, Timelike, Utc};

/// The earliest instant we write: 0001-01-02T00:00:00Z. One day after year 1 begins, so that
/// the local time (at most a day away) still has a four-digit, positive year, as RFC 3339 needs.
const MIN_MILLIS: i64 = -62_135_510_400_000;
/// The latest instant we write: 9999-12-30T23:59:59.999Z, one day before the end of the last
/// four-digit year, for the same reason.
const MAX_MILLIS: i64 = 253_402_214_399_999;

/// One instant at millisecond precision, with the UTC offset it is shown in locally.
///
/// Both `TimestampLocal` and `TimestampUTC` of an event are written from one `Timestamp`, so
/// they always name the same millisecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch, within `MIN_MILLIS..=MAX_MILLIS`.
    millis: i64,
    /// Local offset east of UTC in whole minutes' worth of seconds.
    offset_secs: i32,
}

impl Timestamp {
    /// The instant `wall` shown with a given offset (deterministic; for tests and for callers
    /// that know the offset).
    ///
    /// The instant is truncated to the millisecond. A clock outside years 1..=9999 (a device
    /// with a broken real-time clock) is clamped into that range rather than producing text
    /// that is not RFC 3339. An offset with seconds (historical local mean time) is truncated
    /// to whole minutes, because RFC 3339 offsets have none.
    pub fn with_offset(wall: SystemTime, offset: FixedOffset) -> Timestamp {
        let millis = match wall.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            // Before the epoch: round down to the millisecond, like truncation after it.
            Err(e) => {
                let d = e.duration();
                let whole = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                let partial = i64::from(d.subsec_nanos() % 1_000_000 != 0);
                whole.saturating_add(partial).saturating_neg()
            }
        };
        let offset_secs = offset.local_minus_utc() / 60 * 60;
        Timestamp {
            millis: millis.clamp(MIN_MILLIS, MAX_MILLIS),
            offset_secs,
        }
    }

    /// Builds a timestamp from its two parts; `None` when the instant is outside the range
    /// this type writes or the offset is not whole minutes under a day.
    pub fn from_parts(millis_since_epoch: i64, offset_secs: i32) -> Option<Timestamp> {
        let in_range = (MIN_MILLIS..=MAX_MILLIS).contains(&millis_since_epoch);
        let whole_minutes = offset_secs % 60 == 0 && offset_secs.abs() < 86_400;
        (in_range && whole_minutes).then_some(Timestamp {
            millis: millis_since_epoch,
            offset_secs,
        })
    }

    /// Parses RFC 3339 text with exactly three fraction digits, as this type writes it.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        // `T` between date and time, and exactly `.ddd` after the seconds: chrono alone would
        // accept a space (which the schema's date-time format rejects) and any number of digits.
        if text.as_bytes().get(10) != Some(&b'T') {
            return None;
        }
        let frac = text.get(19..23)?;
        let more_digits = text.as_bytes().get(23).is_some_and(u8::is_ascii_digit);
        if !frac.starts_with('.') || !frac[1..].bytes().all(|b| b.is_ascii_digit()) || more_digits {
            return None;
        }
        let dt = DateTime::parse_from_rfc3339(text).ok()?;
        Timestamp::from_parts(dt.timestamp_millis(), dt.offset().local_minus_utc())
    }

    /// Milliseconds since the Unix epoch.
    pub fn millis_since_epoch(self) -> i64 {
        self.millis
    }

    /// The local offset east of UTC, in seconds (always whole minutes).
    pub fn offset_secs(self) -> i32 {
        self.offset_secs
    }

    /// Local time with a numeric offset: `2026-11-28T20:21:00.123+01:00` (`+00:00` at UTC).
    pub fn local_rfc3339(self) -> String {
        let mut s = String::with_capacity(29);
        self.write_local(&mut s);
        s
    }

    /// UTC with the `Z` designator: `2026-11-28T19:21:00.123Z`.
    pub fn utc_rfc3339(self) -> String {
        let mut s = String::with_capacity(24);
        self.write_utc(&mut s);
        s
    }

    /// Writes [`Timestamp::local_rfc3339`] into `out`.
    pub fn write_local(self, out: &mut String) {
        let local = self.utc() + chrono::Duration::seconds(i64::from(self.offset_secs));
        write_date_time(out, &local);
        let sign = if self.offset_secs < 0 { '-' } else { '+' };
        let minutes = self.offset_secs.unsigned_abs() / 60;
        // Writing into a String cannot fail.
        let _ = write!(out, "{sign}{:02}:{:02}", minutes / 60, minutes % 60);
    }

    /// Writes [`Timestamp::utc_rfc3339`] into `out`.
    pub fn write_utc(self, out: &mut String) {
        write_date_time(out, &self.utc());
        out.push('Z');
    }

    /// The instant as a chrono UTC time.
    fn utc(self) -> DateTime<Utc> {
        // `millis` is clamped to a range chrono represents, so the fallback is never taken;
        // it exists only so that no panic path is left.
        DateTime::from_timestamp_millis(self.millis).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.local_rfc3339())
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmm` of a UTC-based date-time (the caller has already shifted it to
/// local time where needed).
fn write_date_time(out: &mut String, t: &DateTime<Utc>) {
    // Hand-written digits rather than `write!`: this runs twice per event on the hot path of
    // serialization, where the formatting machinery was a measurable share of the cost.
    let mut buf = [0u8; 23];
    let put = |buf: &mut [u8], at: usize, width: usize, mut value: u32| {
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    // Years are clamped to 1..=9999 by construction, so four digits always suffice.
    put(&mut buf, 0, 4, u32::try_from(t.year()).unwrap_or(0));
    buf[4] = b'-';
    put(&mut buf, 5, 2, t.month());
    buf[7] = b'-';
    put(&mut buf, 8, 2, t.day());
    buf[10] = b'T';
    put(&mut buf, 11, 2, t.hour());
    buf[13] = b':';
    put(&mut buf, 14, 2, t.minute());
    buf[16] = b':';
    put(&mut buf, 17, 2, t.second());
    buf[19] = b'.';
    put(&mut buf, 20, 3, t.timestamp_subsec_millis().min(999));
    // Every byte written above is an ASCII digit or separator.
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A zero offset, spelled so that it needs no `unwrap`.
    fn utc_offset() -> FixedOffset {
        use chrono::Offset;
        Utc.fix()
    }
    use std::time::Duration;

    fn at(millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(millis)
    }

    #[test]
    fn writes_local_and_utc_forms_of_the_same_millisecond() {
        // 2026-11-28T19:21:00.123Z, plus 456 microseconds that must be truncated.
        let wall = at(1_795_893_660_123) + Duration::from_micros(456);
        let t = Timestamp::with_offset(wall, FixedOffset::east_opt(3600).unwrap());
        assert_eq!(t.local_rfc3339(), "2026-11-28T20:21:00.123+01:00");
        assert_eq!(t.utc_rfc3339(), "2026-11-28T19:21:00.123Z");
        let west = Timestamp::with_offset(wall, FixedOffset::west_opt(9 * 3600 + 1800).unwrap());
        assert_eq!(west.local_rfc3339(), "2026-11-28T09:51:00.123-09:30");
        let zero = Timestamp::with_offset(wall, utc_offset());
        assert_eq!(zero.local_rfc3339(), "2026-11-28T19:21:00.123+00:00");
    }

    #[test]
    fn round_trips_through_parse() {
        let t = Timestamp::with_offset(at(1_795_893_660_123), FixedOffset::east_opt(19800).unwrap());
        assert_eq!(Timestamp::parse_rfc3339(&t.local_rfc3339()), Some(t));
        assert_eq!(
            Timestamp::parse_rfc3339(&t.utc_rfc3339()).map(Timestamp::millis_since_epoch),
            Some(t.millis_since_epoch())
        );
        assert_eq!(Timestamp::parse_rfc3339("2026-11-28T19:21:00Z"), None);
        assert_eq!(Timestamp::parse_rfc3339("2026-11-28 19:21:00.123Z"), None);
    }

    #[test]
    fn clocks_outside_four_digit_years_are_clamped() {
        let early = UNIX_EPOCH - Duration::from_secs(70_000_000_000);
        let t = Timestamp::with_offset(early, FixedOffset::west_opt(86_399).unwrap());
        assert!(t.local_rfc3339().starts_with("0001-01-01T"), "{t}");
        let late = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        let t = Timestamp::with_offset(late, FixedOffset::east_opt(86_399).unwrap());
        assert!(t.local_rfc3339().starts_with("9999-12-31T"), "{t}");
        assert_eq!(t.utc_rfc3339(), "9999-12-30T23:59:59.999Z");
    }

    #[test]
    fn before_the_epoch_truncates_toward_the_past() {
        let t = Timestamp::with_offset(UNIX_EPOCH - Duration::from_micros(1500), utc_offset());
        assert_eq!(t.utc_rfc3339(), "1969-12-31T23:59:59.998Z");
    }

    #[test]
    fn offsets_with_seconds_are_truncated_to_minutes() {
        let lmt = FixedOffset::east_opt(561).unwrap(); // Paris mean time, +00:09:21
        let t = Timestamp::with_offset(at(0), lmt);
        assert_eq!(t.local_rfc3339(), "1970-01-01T00:09:00.000+00:09");
    }
}

//! UTC calendar time without a date crate: the one place sdci turns Unix seconds into dates.
//!
//! The programs need little: RFC 3339 timestamps (dom0's `log.txt`, the GitHub stand-in's
//! `expires_at`), the `YYYYMMDDhhmmss` stamp in rotation snapshot names (`update_<stamp>`), and
//! day arithmetic for the host's cron schedules. [`civil_from_days`] and [`days_from_civil`] are
//! Howard Hinnant's algorithms (<https://howardhinnant.github.io/date_algorithms.html>), exact
//! for the proleptic Gregorian calendar over the whole `i64` day range the callers use; [`Utc`]
//! is a broken-down UTC instant with its formats. No time zones, no leap seconds (Unix time has
//! none).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds in a (Unix) day.
pub const SECS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 → `(year, month 1–12, day 1–31)`.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `(year, month 1–12, day 1–31)` → days since 1970-01-01. Out-of-range days roll over
/// (`(2026, 2, 29)` is 2026-03-01), which the cron maths relies on for "the 1st of next month".
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The weekday of a day since 1970-01-01, counted as cron does: 0 = Sunday … 6 = Saturday.
pub fn weekday_from_days(days: i64) -> u32 {
    // 1970-01-01 was a Thursday.
    (days + 4).rem_euclid(7) as u32
}

/// A UTC instant broken down into calendar fields, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utc {
    pub year: i64,
    /// 1–12.
    pub month: u32,
    /// 1–31.
    pub day: u32,
    /// 0–23.
    pub hour: u32,
    /// 0–59.
    pub minute: u32,
    /// 0–59.
    pub second: u32,
    /// 0–999.
    pub millis: u32,
}

impl Utc {
    /// The instant `secs` seconds after the Unix epoch (negative: before it).
    pub fn from_unix(secs: i64) -> Self {
        let (year, month, day) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
        let s = secs.rem_euclid(SECS_PER_DAY) as u32;
        Self {
            year,
            month,
            day,
            hour: s / 3600,
            minute: s / 60 % 60,
            second: s % 60,
            millis: 0,
        }
    }

    /// The instant `millis` milliseconds after the Unix epoch.
    pub fn from_unix_millis(millis: i64) -> Self {
        Self {
            millis: millis.rem_euclid(1000) as u32,
            ..Self::from_unix(millis.div_euclid(1000))
        }
    }

    /// A system time; times before the epoch (a clock set wrong) count as the epoch, and times
    /// beyond `i64` seconds saturate.
    pub fn from_system_time(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Self {
            millis: d.subsec_millis(),
            ..Self::from_unix(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        }
    }

    /// The current time.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Seconds since the Unix epoch (the milliseconds dropped).
    pub fn unix(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * SECS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// RFC 3339 to the second: `2026-11-28T17:29:40Z` (what GitHub's API writes).
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// RFC 3339 to the millisecond: `2026-11-28T17:29:40.123Z` (dom0's log lines).
    pub fn rfc3339_millis(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }

    /// `YYYYMMDDhhmmss`: sorts like the time, and is safe in a snapshot name (`update_<stamp>`).
    pub fn compact(&self) -> String {
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// RFC 3339 to the second, as [`Utc::rfc3339`].
impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_is_the_first_of_january_1970_a_thursday() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(weekday_from_days(0), 4);
        assert_eq!(Utc::from_unix(0).rfc3339(), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn civil_dates_and_day_numbers_round_trip() {
        for days in [
            -1_000_000, -1000, -1, 0, 59, 365, 11_016, 20_000, 40_000, 2_932_896,
        ] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{days}");
        }
        let mut days = days_from_civil(1999, 12, 25);
        while days < days_from_civil(2001, 3, 5) {
            let (y, m, d) = civil_from_days(days);
            let (y2, m2, d2) = civil_from_days(days + 1);
            let next_day = d2 == d + 1 && m2 == m && y2 == y;
            let next_month =
                d2 == 1 && (m2 == m + 1 && y2 == y || m == 12 && m2 == 1 && y2 == y + 1);
            assert!(next_day || next_month, "{y}-{m}-{d} → {y2}-{m2}-{d2}");
            days += 1;
        }
    }

    #[test]
    fn leap_days_follow_the_gregorian_rules() {
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(civil_from_days(days_from_civil(1900, 2, 29)), (1900, 3, 1));
        assert_eq!(civil_from_days(days_from_civil(2026, 2, 29)), (2026, 3, 1));
    }

    #[test]
    fn out_of_range_days_roll_into_the_next_month() {
        assert_eq!(days_from_civil(2026, 12, 32), days_from_civil(2027, 1, 1));
        assert_eq!(days_from_civil(2026, 4, 31), days_from_civil(2026, 5, 1));
    }

    #[test]
    fn weekdays_count_from_sunday_as_cron_does() {
        assert_eq!(weekday_from_days(days_from_civil(2026, 11, 29)), 0); // a Sunday
        assert_eq!(weekday_from_days(days_from_civil(2026, 11, 28)), 6); // a Saturday
        assert_eq!(weekday_from_days(-1), 3); // 1969-12-31, a Wednesday
    }

    #[test]
    fn rfc3339_has_second_precision_and_a_z() {
        assert_eq!(
            Utc::from_unix(1_732_800_000).rfc3339(),
            "2024-11-28T13:20:00Z"
        );
        assert_eq!(
            Utc::from_unix(951_825_600).to_string(),
            "2000-02-29T12:00:00Z"
        );
        assert_eq!(Utc::from_unix(-1).rfc3339(), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn rfc3339_millis_keeps_three_digits_of_the_second() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_886_980_123);
        assert_eq!(
            Utc::from_system_time(t).rfc3339_millis(),
            "2026-11-28T17:29:40.123Z"
        );
        assert_eq!(
            Utc::from_unix_millis(1_795_886_980_007).rfc3339_millis(),
            "2026-11-28T17:29:40.007Z"
        );
        assert_eq!(
            Utc::from_unix(0).rfc3339_millis(),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn a_clock_before_the_epoch_reads_as_the_epoch() {
        let t = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(Utc::from_system_time(t), Utc::from_unix(0));
    }

    #[test]
    fn the_compact_stamp_is_digits_only_and_sorts_like_time() {
        let t = days_from_civil(2026, 11, 28) * SECS_PER_DAY + 17 * 3600 + 5 * 60 + 9;
        assert_eq!(Utc::from_unix(t).compact(), "20261128170509");
        assert!(Utc::from_unix(t).compact() < Utc::from_unix(t + 1).compact());
    }

    #[test]
    fn unix_seconds_round_trip_through_the_calendar_fields() {
        for secs in [-86_401, -1, 0, 1, 951_825_600, 1_795_886_980, 4_102_444_800] {
            assert_eq!(Utc::from_unix(secs).unix(), secs, "{secs}");
        }
    }
}

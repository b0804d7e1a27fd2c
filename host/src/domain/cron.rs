//! Cron schedules: 5-field expressions (`minute hour day-of-month month day-of-week`: `*`,
//! numbers, `a-b` ranges, `,` lists, `/n` steps, three-letter month and day names; when both day
//! fields are restricted either may match, as in Vixie cron) in an explicit time zone given as
//! `UTC` or a fixed offset `+HH:MM` / `-HH:MM`.
//!
//! Fixed offsets rather than named zones: a named zone needs the tz database (`chrono-tz`
//! compiles all of it into the binary, `cron` brings `chrono` and a parser crate), and a fixed
//! offset never has a skipped or doubled hour, so a schedule fires exactly once per matching
//! minute all year round. Operators who want local wall-clock time across DST pick the offset
//! they prefer or use UTC.
//!
//! Parsed once, when the configuration is loaded (`config::nightly`, `config::rotation`); the
//! schedulers that sleep until the next fire time live in `orchestration::nightly`. Calendar
//! arithmetic is protocol's (`sdci_protocol::time`), the one civil-date algorithm of sdci.

use sdci_protocol::time::{civil_from_days, days_from_civil, weekday_from_days};

/// A parsed cron schedule with its zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64, // bit i set: minute i matches
    hours: u32,
    days: u32,    // bit d (1..=31)
    months: u16,  // bit m (1..=12)
    weekdays: u8, // bit w (0 = Sunday .. 6)
    dom_any: bool,
    dow_any: bool,
    /// Offset from UTC, minutes.
    offset_min: i64,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn field(
    text: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    what: &str,
) -> std::result::Result<u64, String> {
    let bad = |why: &str| format!("cron {what} field {text:?}: {why}");
    let value = |s: &str| -> std::result::Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            // Month names count from 1, day names from 0.
            return Ok(if names.len() == 12 {
                i as u32 + 1
            } else {
                i as u32
            });
        }
        s.parse::<u32>()
            .map_err(|_| bad(&format!("{s:?} is not a number or a name")))
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let s: u32 = s.parse().map_err(|_| bad("the step is not a number"))?;
                if s == 0 {
                    return Err(bad("a step of 0"));
                }
                (r, s)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let a = value(range)?;
            (a, if step > 1 { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(bad(&format!(
                "values must be within {lo}-{hi}, low to high"
            )));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

/// Parses `UTC`, `Z`, `+HH:MM`, `-HH:MM` (or `+HHMM`) into minutes east of UTC.
pub fn parse_zone(s: &str) -> std::result::Result<i64, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("utc") || t == "Z" || t == "+00:00" {
        return Ok(0);
    }
    let bad = || {
        format!(
            "time zone {s:?}: use UTC or a fixed offset like +02:00 (named zones such as \
             Europe/Berlin are not supported: their DST rules need the tz database)"
        )
    };
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let h: i64 = digits[..2].parse().map_err(|_| bad())?;
    let m: i64 = digits[2..].parse().map_err(|_| bad())?;
    if h > 14 || m > 59 {
        return Err(bad());
    }
    Ok(sign * (h * 60 + m))
}

impl Schedule {
    pub fn parse(cron: &str, zone: &str) -> std::result::Result<Self, String> {
        let f: Vec<&str> = cron.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "cron {cron:?}: expected 5 fields (minute hour day-of-month month day-of-week)"
            ));
        }
        let mut weekdays = field(f[4], 0, 7, &DAYS, "day-of-week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Self {
            minutes: field(f[0], 0, 59, &[], "minute")?,
            hours: field(f[1], 0, 23, &[], "hour")? as u32,
            days: field(f[2], 1, 31, &[], "day-of-month")? as u32,
            months: field(f[3], 1, 12, &MONTHS, "month")? as u16,
            weekdays: (weekdays & 0x7f) as u8,
            dom_any: f[2].starts_with('*'),
            dow_any: f[4].starts_with('*'),
            offset_min: parse_zone(zone)?,
        })
    }

    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let dom = self.days & (1 << day) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        match (self.dom_any, self.dow_any) {
            (false, false) => dom || dow,
            _ => dom && dow,
        }
    }

    /// The first matching minute strictly after `after_unix` (seconds since the epoch, UTC), as
    /// seconds since the epoch. `None` if nothing matches within 5 years (e.g. `0 0 31 2 *`).
    pub fn next_after(&self, after_unix: i64) -> Option<i64> {
        // Work in local minutes since the epoch.
        let mut t = (after_unix + self.offset_min * 60).div_euclid(60) + 1;
        let limit = t + 5 * 366 * 24 * 60;
        while t < limit {
            let days = t.div_euclid(1440);
            let (y, m, d) = civil_from_days(days);
            let weekday = weekday_from_days(days);
            if self.months & (1 << m) == 0 {
                // Jump to the first day of the next month.
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                t = days_from_civil(ny, nm, 1) * 1440;
                continue;
            }
            if !self.day_matches(d, weekday) {
                t = (days + 1) * 1440;
                continue;
            }
            let minute_of_day = t.rem_euclid(1440);
            let (h, mi) = ((minute_of_day / 60) as u32, (minute_of_day % 60) as u32);
            if self.hours & (1 << h) == 0 {
                t = days * 1440 + (i64::from(h) + 1) * 60;
                continue;
            }
            if self.minutes & (1 << mi) == 0 {
                t += 1;
                continue;
            }
            return Some(t * 60 - self.offset_min * 60);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60
    }

    #[test]
    fn daily_at_two_fires_the_next_two_oclock() {
        let s = Schedule::parse("0 2 * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(at(2026, 11, 28, 1, 59)),
            Some(at(2026, 11, 28, 2, 0))
        );
        // Exactly at a fire time: the next one, not the same.
        assert_eq!(
            s.next_after(at(2026, 11, 28, 2, 0)),
            Some(at(2026, 11, 29, 2, 0))
        );
        assert_eq!(
            s.next_after(at(2026, 12, 31, 3, 0)),
            Some(at(2027, 1, 1, 2, 0))
        );
    }

    #[test]
    fn a_fixed_offset_shifts_the_fire_time_in_utc() {
        let s = Schedule::parse("30 2 * * *", "+02:00").unwrap();
        // 02:30 at +02:00 is 00:30 UTC.
        assert_eq!(
            s.next_after(at(2026, 6, 1, 0, 0)),
            Some(at(2026, 6, 1, 0, 30))
        );
        let w = Schedule::parse("0 22 * * *", "-05:00").unwrap();
        // 22:00 at -05:00 is 03:00 UTC the next day.
        assert_eq!(
            w.next_after(at(2026, 6, 1, 12, 0)),
            Some(at(2026, 6, 2, 3, 0))
        );
    }

    #[test]
    fn lists_ranges_steps_and_names_work() {
        // Weekdays at 01:15, Monday through Friday.
        let s = Schedule::parse("15 1 * * mon-fri", "UTC").unwrap();
        // 2026-11-28 is a Saturday: next is Monday 2026-11-30.
        assert_eq!(
            s.next_after(at(2026, 11, 28, 0, 0)),
            Some(at(2026, 11, 30, 1, 15))
        );
        let e = Schedule::parse("*/20 3,4 * jan,jul *", "UTC").unwrap();
        assert_eq!(
            e.next_after(at(2026, 11, 28, 0, 0)),
            Some(at(2027, 1, 1, 3, 0))
        );
        assert_eq!(
            e.next_after(at(2027, 1, 1, 3, 0)),
            Some(at(2027, 1, 1, 3, 20))
        );
        assert_eq!(
            e.next_after(at(2027, 1, 1, 3, 40)),
            Some(at(2027, 1, 1, 4, 0))
        );
        // Sunday as 7.
        let sun = Schedule::parse("0 0 * * 7", "UTC").unwrap();
        assert_eq!(
            sun.next_after(at(2026, 11, 28, 0, 0)),
            Some(at(2026, 11, 29, 0, 0))
        );
    }

    #[test]
    fn both_day_fields_restricted_match_either_as_in_vixie_cron() {
        // The 1st of the month or any Saturday.
        let s = Schedule::parse("0 0 1 * sat", "UTC").unwrap();
        assert_eq!(
            s.next_after(at(2026, 11, 26, 0, 0)),
            Some(at(2026, 11, 28, 0, 0))
        );
        assert_eq!(
            s.next_after(at(2026, 11, 28, 0, 0)),
            Some(at(2026, 12, 1, 0, 0))
        );
    }

    #[test]
    fn impossible_dates_never_fire_and_bad_input_is_named() {
        let s = Schedule::parse("0 0 31 2 *", "UTC").unwrap();
        assert_eq!(s.next_after(0), None);
        for (cron, want) in [
            ("0 2 * *", "5 fields"),
            ("61 2 * * *", "minute"),
            ("0 2 * * blursday", "day-of-week"),
            ("*/0 * * * *", "step of 0"),
            ("5-1 * * * *", "low to high"),
        ] {
            let e = Schedule::parse(cron, "UTC").unwrap_err();
            assert!(e.contains(want), "{cron}: {e}");
        }
        let e = Schedule::parse("0 2 * * *", "Europe/Berlin").unwrap_err();
        assert!(e.contains("fixed offset"), "{e}");
        assert_eq!(parse_zone("-0330").unwrap(), -210);
    }
}

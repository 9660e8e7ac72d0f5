//! Time criteria: `date`, `day_of_week` and `time_of_day`. The time is always passed in.

use jiff::tz::TimeZone;
use jiff::Timestamp;

const SECONDS_PER_DAY: i64 = 86_400;

/// Half-open instant range `[after, before)` in Unix seconds.
#[derive(Clone, Debug)]
pub(crate) struct DateRange {
    pub(crate) after: Option<i64>,
    pub(crate) before: Option<i64>,
}

/// A set of weekdays (bit 0 = Monday) in a time zone (`None` = UTC).
#[derive(Clone, Debug)]
pub(crate) struct DayOfWeek {
    pub(crate) days: u8,
    pub(crate) zone: Option<TimeZone>,
}

/// Seconds since local midnight in `[after, before)`, crossing midnight when `after > before`.
#[derive(Clone, Debug)]
pub(crate) struct TimeOfDay {
    pub(crate) after: Option<u32>,
    pub(crate) before: Option<u32>,
    pub(crate) zone: Option<TimeZone>,
}

/// Weekday names accepted by `day_of_week`, Monday first, with their aliases.
pub(crate) const WEEKDAYS: [&[&str]; 7] = [
    &["mon", "monday"],
    &["tue", "tues", "tuesday"],
    &["wed", "weds", "wednesday"],
    &["thu", "thur", "thurs", "thursday"],
    &["fri", "friday"],
    &["sat", "saturday"],
    &["sun", "sunday"],
];

impl DateRange {
    pub(crate) fn matches(&self, now: i64) -> bool {
        self.after.is_none_or(|a| now >= a) && self.before.is_none_or(|b| now < b)
    }
}

impl DayOfWeek {
    pub(crate) fn matches(&self, now: i64) -> bool {
        local(now, self.zone.as_ref()).is_some_and(|(weekday, _)| self.days & (1 << weekday) != 0)
    }
}

impl TimeOfDay {
    pub(crate) fn matches(&self, now: i64) -> bool {
        let Some((_, t)) = local(now, self.zone.as_ref()) else {
            return false;
        };
        match (self.after, self.before) {
            (Some(a), Some(b)) if a > b => t >= a || t < b,
            (a, b) => a.is_none_or(|a| t >= a) && b.is_none_or(|b| t < b),
        }
    }
}

/// Weekday (0 = Monday) and seconds since midnight of `now` in `zone` (UTC when `None`).
fn local(now: i64, zone: Option<&TimeZone>) -> Option<(u8, u32)> {
    match zone {
        None => {
            let days = now.div_euclid(SECONDS_PER_DAY);
            // 1970-01-01 was a Thursday (3 with Monday = 0).
            let weekday = u8::try_from((days + 3).rem_euclid(7)).ok()?;
            let seconds = u32::try_from(now.rem_euclid(SECONDS_PER_DAY)).ok()?;
            Some((weekday, seconds))
        }
        Some(zone) => {
            let dt = zone.to_datetime(Timestamp::from_second(now).ok()?);
            let weekday = u8::try_from(dt.weekday().to_monday_zero_offset()).ok()?;
            let seconds = u32::try_from(
                i32::from(dt.hour()) * 3600 + i32::from(dt.minute()) * 60 + i32::from(dt.second()),
            )
            .ok()?;
            Some((weekday, seconds))
        }
    }
}

/// Parses `HH:MM` or `HH:MM:SS` (24-hour) into seconds since midnight; `24:00` only when
/// `allow_end_of_day`.
pub(crate) fn parse_time_of_day(text: &str, allow_end_of_day: bool) -> Option<u32> {
    let mut parts = text.split(':');
    let mut field = |max: u32| -> Option<u32> {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse::<u32>().ok().filter(|v| *v <= max)
    };
    let hours = field(24)?;
    let minutes = field(59)?;
    let seconds = match parts.next() {
        None => 0,
        Some(p) if p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u32>().ok().filter(|v| *v <= 59)?
        }
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    let total = hours * 3600 + minutes * 60 + seconds;
    match total {
        t if t < 86_400 => Some(t),
        86_400 if allow_end_of_day => Some(86_400),
        _ => None,
    }
}

/// Parses an RFC 3339 timestamp into Unix seconds, rounding a fraction up (so that with
/// whole-second clocks, `now >= after` and `now < before` keep their meaning).
pub(crate) fn parse_instant(text: &str) -> Option<i64> {
    let ts: Timestamp = text.parse().ok()?;
    let seconds = ts.as_second();
    Some(if ts.subsec_nanosecond() > 0 {
        seconds + 1
    } else {
        seconds
    })
}

/// Parses a weekday name (any case) into 0 = Monday .. 6 = Sunday.
pub(crate) fn parse_weekday(text: &str) -> Option<u8> {
    let lower = text.trim().to_ascii_lowercase();
    WEEKDAYS
        .iter()
        .position(|names| names.contains(&lower.as_str()))
        .and_then(|i| u8::try_from(i).ok())
}

/// Parses `mon`, `mon-fri` (wrapping ranges like `fri-mon` allowed) or comma lists of those
/// into a bit set.
pub(crate) fn parse_days(text: &str) -> Result<u8, String> {
    let mut days = 0u8;
    for item in text.split(',') {
        let item = item.trim();
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (a, b),
            None => (item, item),
        };
        let (Some(first), Some(last)) = (parse_weekday(first), parse_weekday(last)) else {
            return Err(format!(
                "bad day {item:?}: expected a weekday (mon, tue, wed, thu, fri, sat, sun) or a range like \"mon-fri\""
            ));
        };
        let mut d = first;
        loop {
            days |= 1 << d;
            if d == last {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(days)
}

//! When an entry is due: [`Interval`], [`Crontab`] (Celery's semantics, in an IANA
//! time zone), [`Clocked`] (one date-time) and [`Solar`] (sunrise, dusk, ... at a
//! place; see its module), behind one [`Schedule`] enum.
//!
//! Every schedule answers one question, [`Schedule::next_after`]: the first instant
//! strictly after a given one at which it is due. Beat asks it with the entry's last
//! run (or its creation) and compares the answer with the clock.
//!
//! # Crontab semantics
//!
//! [`Crontab`] follows Celery's `celery.schedules.crontab`, not POSIX cron:
//!
//! - Fields `minute` (0-59), `hour` (0-23), `day_of_week` (0-6, **0 = Sunday**,
//!   `sun`..`sat`; 7 is refused), `day_of_month` (1-31), `month_of_year` (1-12,
//!   `jan`..`dec`). [`Crontab::parse`] reads Celery's five-field string
//!   `minute hour day_of_month month_of_year day_of_week` (`crontab.from_string`).
//! - Each field is a comma-separated list of `*`, `N`, `A-B`, `*/S` and `A-B/S`. A
//!   range whose end is below its start wraps around (`fri-mon` is Friday to Monday,
//!   `22-2` is 22, 23, 0, 1, 2). A step keeps every S-th value of the expanded list,
//!   starting with its first (`1-30/5` is 1, 6, 11, 16, 21, 26).
//! - Names are matched on their first three letters, case-insensitively, in every
//!   field: month names first (`jan` = 1), then day names (`sun` = 0), so `monday`
//!   is 1 and `mar` is 3 even in `day_of_week`, as in Celery.
//! - **A day must match all three day fields** (`day_of_month`, `month_of_year` *and*
//!   `day_of_week`). `0 0 1-7 * mon` is the first Monday of each month. (POSIX cron
//!   runs when either day field matches.)
//! - A spec whose day of month never exists in its months (`0 0 30 2 *`) is refused
//!   when parsed; Celery accepts it and fails in beat.
//!
//! The parser is stricter than Celery's in one respect: Celery's regular expressions
//! ignore text after a recognised prefix (`1-5-7` is read as `1-5`, `*/5/2` as
//! `*/5`); here such a part is an error.
//!
//! # Time zones and daylight saving time
//!
//! A crontab is evaluated on the wall clock of its IANA zone ([`chrono_tz::Tz`], UTC
//! by default). The policy for the two days a year a zone changes its offset:
//!
//! - **Spring forward** (a wall-clock time that does not exist, e.g. 02:30 in
//!   Europe/Berlin on the last Sunday of March): the run happens **once, at the first
//!   valid instant after the gap** (03:00 CEST). Every missing time of the gap maps to
//!   that instant, so a `*/15` job runs once at 03:00 for 02:00-02:45 and 03:00
//!   together, not four times. (Celery computes 02:30+01:00, i.e. 03:30 CEST.)
//! - **Fall back** (a wall-clock time that occurs twice, e.g. 02:30 in Europe/Berlin on
//!   the last Sunday of October): the run happens **once, at the first occurrence**
//!   (02:30 CEST). The repeated hour's second pass runs nothing, so a job due every
//!   15 minutes pauses for that hour, as it does in Celery. Use an [`Interval`] for
//!   a job that must keep its rhythm in absolute time.
//!
//! Zones without daylight saving time (Asia/Seoul) have neither case.
//!
//! # Intervals
//!
//! An [`Interval`] with an anchor is due at `anchor + k × every` for every integer `k`:
//! a grid in absolute time, which daylight saving time does not touch. Without an
//! anchor it is due `every` after the previous run (Celery's `schedule`): beat
//! evaluates it as a grid anchored at the entry's last run (or its creation), so every
//! beat process computes the same due times, and a run coalesced after a downtime
//! keeps the phase (Celery restarts the period from the late run).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

mod solar;
pub use solar::{Solar, SolarEvent, SolarSpec};

/// Why a schedule cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// A crontab field does not parse or is out of range.
    #[error("invalid crontab {field} {spec:?}: {reason}")]
    Crontab {
        /// `minute`, `hour`, `day_of_week`, `day_of_month` or `month_of_year`.
        field: &'static str,
        /// The field as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A crontab string does not have five fields, or never fires.
    #[error("invalid crontab {spec:?}: {reason}")]
    CrontabSpec {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// The time zone is not an IANA name.
    #[error("unknown time zone {0:?} (expected an IANA name such as Europe/Berlin or Asia/Seoul)")]
    Timezone(String),
    /// The interval is zero or too long.
    #[error("invalid interval: {0}")]
    Interval(String),
    /// A solar schedule names an unknown event or an impossible place.
    #[error("invalid solar schedule: {0}")]
    Solar(String),
}

/// When an entry is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Schedule {
    /// Every fixed duration.
    Interval(Interval),
    /// Celery-style crontab in a time zone.
    Crontab(Crontab),
    /// Once, at one instant.
    Clocked(Clocked),
    /// At a solar event (sunrise, dusk, ...) at a place.
    Solar(Solar),
}

impl Schedule {
    /// The first instant strictly after `after` at which the schedule is due, or
    /// `None` when it never is again (a past [`Clocked`] time, or beyond the years
    /// `chrono` represents).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Interval(interval) => interval.next_after(after),
            Schedule::Crontab(crontab) => crontab.next_after(after),
            Schedule::Clocked(clocked) => clocked.next_after(after),
            Schedule::Solar(solar) => solar.next_after(after),
        }
    }

    /// `interval`, `crontab`, `clocked` or `solar`.
    pub fn kind(&self) -> &'static str {
        match self {
            Schedule::Interval(_) => "interval",
            Schedule::Crontab(_) => "crontab",
            Schedule::Clocked(_) => "clocked",
            Schedule::Solar(_) => "solar",
        }
    }

    /// The latest instant `d` with `after < d <= until` at which the schedule is due,
    /// if any. Looks back from `until` in growing windows, so a long downtime costs no
    /// more than a few [`next_after`](Self::next_after) steps per window.
    pub fn last_due_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if until <= after {
            return None;
        }
        const WINDOWS_SECS: [i64; 6] = [60, 3_600, 86_400, 35 * 86_400, 400 * 86_400, 0];
        for window in WINDOWS_SECS {
            let from = if window == 0 {
                after
            } else {
                until
                    .checked_sub_signed(chrono::Duration::seconds(window))
                    .map_or(after, |from| from.max(after))
            };
            let mut found = None;
            let mut cursor = from;
            while let Some(next) = self.next_after(cursor) {
                if next > until {
                    break;
                }
                found = Some(next);
                cursor = next;
            }
            if found.is_some() || from == after {
                return found;
            }
        }
        None
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Interval(interval) => interval.fmt(f),
            Schedule::Crontab(crontab) => crontab.fmt(f),
            Schedule::Clocked(clocked) => clocked.fmt(f),
            Schedule::Solar(solar) => solar.fmt(f),
        }
    }
}

impl From<Interval> for Schedule {
    fn from(interval: Interval) -> Schedule {
        Schedule::Interval(interval)
    }
}

impl From<Crontab> for Schedule {
    fn from(crontab: Crontab) -> Schedule {
        Schedule::Crontab(crontab)
    }
}

impl From<Solar> for Schedule {
    fn from(solar: Solar) -> Schedule {
        Schedule::Solar(solar)
    }
}

impl From<Clocked> for Schedule {
    fn from(clocked: Clocked) -> Schedule {
        Schedule::Clocked(clocked)
    }
}

/// Due every `every`: on the grid `anchor + k × every` when anchored, else `every`
/// after the previous run. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    /// The period (at least 1 ms), in seconds on the wire.
    #[serde(with = "secs")]
    pub every: Duration,
    /// An instant the grid passes through; `None` = relative to the previous run.
    #[serde(default)]
    pub anchor: Option<DateTime<Utc>>,
}

impl Interval {
    /// Every `every`, relative to the previous run. Refuses less than 1 ms and more
    /// than 100 years.
    pub fn new(every: Duration) -> Result<Interval, ScheduleError> {
        if every < Duration::from_millis(1) {
            return Err(ScheduleError::Interval(format!(
                "the period must be at least 1 ms, got {every:?}"
            )));
        }
        if every > Duration::from_secs(100 * 366 * 86_400) {
            return Err(ScheduleError::Interval(format!(
                "the period must be at most 100 years, got {every:?}"
            )));
        }
        Ok(Interval {
            every,
            anchor: None,
        })
    }

    /// Puts the grid through `anchor` (due at `anchor + k × every`).
    pub fn anchored(mut self, anchor: DateTime<Utc>) -> Interval {
        self.anchor = Some(anchor);
        self
    }

    /// The first due instant strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let every = i128::try_from(self.every.as_nanos()).ok()?;
        if every <= 0 {
            return None;
        }
        let after_ns = nanos(after)?;
        let next = match self.anchor {
            None => after_ns.checked_add(every)?,
            Some(anchor) => {
                let anchor_ns = nanos(anchor)?;
                let k = (after_ns - anchor_ns).div_euclid(every) + 1;
                anchor_ns.checked_add(k.checked_mul(every)?)?
            }
        };
        from_nanos(next)
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "every {}", format_duration(self.every))?;
        if let Some(anchor) = self.anchor {
            write!(
                f,
                " from {}",
                anchor.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            )?;
        }
        Ok(())
    }
}

/// Due once, at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clocked {
    /// The instant.
    pub at: DateTime<Utc>,
}

impl Clocked {
    /// Due once at `at`.
    pub fn new(at: DateTime<Utc>) -> Clocked {
        Clocked { at }
    }

    /// `at` if it is after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        (self.at > after).then_some(self.at)
    }
}

impl fmt::Display for Clocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at {}",
            self.at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        )
    }
}

/// One crontab field's grammar: Celery's `crontab_parser(max_, min_)`.
#[derive(Debug, Clone, Copy)]
struct FieldKind {
    name: &'static str,
    /// How many values (`max_`).
    count: u32,
    /// The smallest value (`min_`).
    min: u32,
}

const MINUTE: FieldKind = FieldKind {
    name: "minute",
    count: 60,
    min: 0,
};
const HOUR: FieldKind = FieldKind {
    name: "hour",
    count: 24,
    min: 0,
};
const DAY_OF_WEEK: FieldKind = FieldKind {
    name: "day_of_week",
    count: 7,
    min: 0,
};
const DAY_OF_MONTH: FieldKind = FieldKind {
    name: "day_of_month",
    count: 31,
    min: 1,
};
const MONTH_OF_YEAR: FieldKind = FieldKind {
    name: "month_of_year",
    count: 12,
    min: 1,
};

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// A parsed field: the spec as given and the set of values as bits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    spec: String,
    bits: u64,
}

impl Field {
    fn parse(spec: &str, kind: FieldKind) -> Result<Field, ScheduleError> {
        let error = |reason: String| ScheduleError::Crontab {
            field: kind.name,
            spec: spec.to_string(),
            reason,
        };
        let mut bits = 0u64;
        for part in spec.split(',') {
            if part.is_empty() {
                return Err(error("empty part".into()));
            }
            for value in parse_part(part, kind).map_err(error)? {
                bits |= 1 << value;
            }
        }
        Ok(Field {
            spec: spec.to_string(),
            bits,
        })
    }

    fn contains(&self, value: u32) -> bool {
        value < 64 && self.bits & (1 << value) != 0
    }

    /// The values in ascending order.
    fn values(&self) -> impl Iterator<Item = u32> + '_ {
        (0..64u32).filter(|v| self.contains(*v))
    }
}

/// One comma-separated part: `*`, `N`, `A-B`, `*/S` or `A-B/S`.
fn parse_part(part: &str, kind: FieldKind) -> Result<Vec<u32>, String> {
    let (body, step) = match part.split_once('/') {
        Some((body, step)) => (body, Some(step)),
        None => (part, None),
    };
    let step = match step {
        None => 1,
        Some("") => return Err(format!("empty step in {part:?}")),
        Some(step) if step.bytes().all(|b| b.is_ascii_digit()) => match step.parse::<usize>() {
            Ok(0) => return Err(format!("the step of {part:?} is zero")),
            Ok(step) => step,
            Err(_) => return Err(format!("the step of {part:?} is too large")),
        },
        Some(step) => return Err(format!("the step {step:?} is not a number")),
    };
    let values: Vec<u32> = if body == "*" {
        (kind.min..kind.min + kind.count).collect()
    } else if let Some((from, to)) = body.split_once('-') {
        if from.is_empty() {
            return Err("negative numbers are not supported".into());
        }
        let from = number(from, kind)?;
        let to = number(to, kind)?;
        if to < from {
            (from..kind.min + kind.count).chain(kind.min..=to).collect()
        } else {
            (from..=to).collect()
        }
    } else {
        if step != 1 || part.contains('/') {
            return Err(format!("a step needs `*` or a range, got {part:?}"));
        }
        vec![number(body, kind)?]
    };
    Ok(values.into_iter().step_by(step).collect())
}

/// A number or a month / day name (first three letters), within the field's range.
fn number(text: &str, kind: FieldKind) -> Result<u32, String> {
    let value = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u32>()
            .map_err(|_| format!("{text:?} is too large"))?
    } else if text.starts_with('-') {
        return Err("negative numbers are not supported".into());
    } else if text.len() >= 3 && text.bytes().all(|b| b.is_ascii_alphabetic()) {
        let abbreviation = text[..3].to_ascii_lowercase();
        if let Some(month) = MONTH_NAMES.iter().position(|m| *m == abbreviation) {
            month as u32 + 1
        } else if let Some(day) = DAY_NAMES.iter().position(|d| *d == abbreviation) {
            day as u32
        } else {
            return Err(format!("{text:?} is neither a month nor a weekday name"));
        }
    } else {
        return Err(format!("{text:?} is not a number or a name"));
    };
    let max = kind.min + kind.count - 1;
    if value > max {
        return Err(format!("{value} is above {max}"));
    }
    if value < kind.min {
        return Err(format!("{value} is below {}", kind.min));
    }
    Ok(value)
}

/// A Celery crontab in an IANA time zone. See the [module docs](self) for the
/// grammar, the day-matching rule and the daylight-saving-time policy.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CrontabSpec", into = "CrontabSpec")]
pub struct Crontab {
    minute: Field,
    hour: Field,
    day_of_week: Field,
    day_of_month: Field,
    month_of_year: Field,
    timezone: Tz,
}

/// A crontab as stored: its five fields as given and its time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CrontabSpec {
    /// Minutes (0-59).
    pub minute: String,
    /// Hours (0-23).
    pub hour: String,
    /// Days of the week (0-6, 0 = Sunday).
    pub day_of_week: String,
    /// Days of the month (1-31).
    pub day_of_month: String,
    /// Months (1-12).
    pub month_of_year: String,
    /// IANA zone name; `UTC` when absent.
    #[serde(default = "utc_name")]
    pub timezone: String,
}

fn utc_name() -> String {
    "UTC".into()
}

impl TryFrom<CrontabSpec> for Crontab {
    type Error = ScheduleError;

    fn try_from(spec: CrontabSpec) -> Result<Crontab, ScheduleError> {
        Crontab::new(
            &spec.minute,
            &spec.hour,
            &spec.day_of_week,
            &spec.day_of_month,
            &spec.month_of_year,
        )?
        .in_timezone(&spec.timezone)
    }
}

impl From<Crontab> for CrontabSpec {
    fn from(crontab: Crontab) -> CrontabSpec {
        CrontabSpec {
            minute: crontab.minute.spec,
            hour: crontab.hour.spec,
            day_of_week: crontab.day_of_week.spec,
            day_of_month: crontab.day_of_month.spec,
            month_of_year: crontab.month_of_year.spec,
            timezone: crontab.timezone.name().to_string(),
        }
    }
}

/// Days in a month of a leap year (February has 29).
const MAX_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl Crontab {
    /// A crontab from its fields, in Celery's argument order
    /// (`crontab(minute, hour, day_of_week, day_of_month, month_of_year)`), in UTC.
    pub fn new(
        minute: &str,
        hour: &str,
        day_of_week: &str,
        day_of_month: &str,
        month_of_year: &str,
    ) -> Result<Crontab, ScheduleError> {
        let crontab = Crontab {
            minute: Field::parse(minute, MINUTE)?,
            hour: Field::parse(hour, HOUR)?,
            day_of_week: Field::parse(day_of_week, DAY_OF_WEEK)?,
            day_of_month: Field::parse(day_of_month, DAY_OF_MONTH)?,
            month_of_year: Field::parse(month_of_year, MONTH_OF_YEAR)?,
            timezone: Tz::UTC,
        };
        let possible = crontab.month_of_year.values().any(|month| {
            crontab
                .day_of_month
                .values()
                .any(|day| day <= MAX_DAYS[month as usize - 1])
        });
        if !possible {
            return Err(ScheduleError::CrontabSpec {
                spec: crontab.expression(),
                reason: "no day of month in it exists in its months".into(),
            });
        }
        Ok(crontab)
    }

    /// Parses Celery's five-field string `minute hour day_of_month month_of_year
    /// day_of_week` (`crontab.from_string`), in UTC.
    pub fn parse(expression: &str) -> Result<Crontab, ScheduleError> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let [minute, hour, day_of_month, month_of_year, day_of_week] = fields[..] else {
            return Err(ScheduleError::CrontabSpec {
                spec: expression.to_string(),
                reason: format!(
                    "expected 5 fields (minute hour day_of_month month_of_year day_of_week), got {}",
                    fields.len()
                ),
            });
        };
        Crontab::new(minute, hour, day_of_week, day_of_month, month_of_year)
    }

    /// The same crontab evaluated in the IANA zone `name` (`Asia/Seoul`).
    pub fn in_timezone(mut self, name: &str) -> Result<Crontab, ScheduleError> {
        self.timezone = parse_timezone(name)?;
        Ok(self)
    }

    /// The same crontab evaluated in `timezone`.
    pub fn with_timezone(mut self, timezone: Tz) -> Crontab {
        self.timezone = timezone;
        self
    }

    /// The time zone.
    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// The five fields as given, in `from_string` order
    /// (`minute hour day_of_month month_of_year day_of_week`).
    pub fn expression(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.minute.spec,
            self.hour.spec,
            self.day_of_month.spec,
            self.month_of_year.spec,
            self.day_of_week.spec
        )
    }

    /// The stored form.
    pub fn spec(&self) -> CrontabSpec {
        self.clone().into()
    }

    /// Whether the local date matches all three day fields (Celery's rule).
    fn matches_date(&self, date: NaiveDate) -> bool {
        self.month_of_year.contains(date.month())
            && self.day_of_month.contains(date.day())
            && self
                .day_of_week
                .contains(date.weekday().num_days_from_sunday())
    }

    /// The first run instant strictly after `after` (see the DST policy in the
    /// [module docs](self)).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.timezone).naive_local();
        let mut date = local.date();
        // Every (month, day) that exists recurs with every weekday within 400 years
        // (the Gregorian cycle); `new` refused specs whose days never exist.
        let horizon = date.checked_add_months(Months::new(400 * 12))?;
        while date <= horizon {
            if !self.month_of_year.contains(date.month()) {
                date = NaiveDate::from_ymd_opt(date.year(), date.month(), 1)?
                    .checked_add_months(Months::new(1))?;
                continue;
            }
            if self.matches_date(date) {
                for hour in self.hour.values() {
                    for minute in self.minute.values() {
                        let wall = date.and_hms_opt(hour, minute, 0)?;
                        if wall <= local {
                            continue;
                        }
                        if let Some(instant) = self.resolve(wall) {
                            if instant > after {
                                return Some(instant);
                            }
                        }
                    }
                }
            }
            date = date.succ_opt()?;
        }
        None
    }

    /// The instant a wall-clock time runs at: itself, its first occurrence when it
    /// occurs twice, the first valid instant after the gap when it does not exist.
    fn resolve(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        resolve_local(&self.timezone, wall)
    }
}

/// The instant of a wall-clock time in `tz` under the DST policy: the first
/// occurrence of a repeated time, the end of the gap for a skipped one.
pub fn resolve_local(tz: &Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    use chrono::LocalResult;
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => {
            // In a gap: the first wall-clock minute after it is the first valid
            // instant (transitions fall on whole minutes in every current zone).
            let mut probe = wall.with_second(0)?;
            for _ in 0..(48 * 60) {
                probe = probe.checked_add_signed(chrono::Duration::minutes(1))?;
                match tz.from_local_datetime(&probe) {
                    LocalResult::Single(t) => return Some(t.with_timezone(&Utc)),
                    LocalResult::Ambiguous(a, b) => return Some(a.min(b).with_timezone(&Utc)),
                    LocalResult::None => {}
                }
            }
            None
        }
    }
}

/// Parses an IANA zone name (`UTC`, `Europe/Berlin`).
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::Timezone(name.to_string()))
}

impl fmt::Debug for Crontab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Crontab({self})")
    }
}

impl fmt::Display for Crontab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "crontab {}", self.expression())?;
        if self.timezone != Tz::UTC {
            write!(f, " ({})", self.timezone.name())?;
        }
        Ok(())
    }
}

/// `90s` as `1m30s`, `0.5s` as `500ms`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let mut secs = duration.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut text = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            text.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    text
}

fn nanos(at: DateTime<Utc>) -> Option<i128> {
    Some(i128::from(at.timestamp()) * 1_000_000_000 + i128::from(at.timestamp_subsec_nanos()))
}

fn from_nanos(ns: i128) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(ns.div_euclid(1_000_000_000)).ok()?;
    let sub = u32::try_from(ns.rem_euclid(1_000_000_000)).ok()?;
    DateTime::from_timestamp(secs, sub)
}

/// Durations as fractional seconds on the wire (as Celery writes them).
pub(crate) mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(value.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs)
            .map_err(|_| serde::de::Error::custom(format!("invalid duration {secs}")))
    }
}

#[cfg(test)]
mod tests;

//! celeriac beat: periodic and one-off schedules.
//!
//! # Layout
//!
//! - [`schedule`]: [`Interval`], [`Crontab`] (Celery's crontab semantics in an IANA
//!   time zone) and [`Clocked`] behind [`Schedule::next_after`].
//!
//! # Daylight saving time
//!
//! A crontab runs on the wall clock of its zone. A wall-clock time that does not exist
//! (spring forward) runs once, at the first valid instant after the gap; one that
//! occurs twice (fall back) runs once, at its first occurrence. Details in
//! [`schedule`].

pub mod schedule;

pub use schedule::{Clocked, Crontab, CrontabSpec, Interval, Schedule, ScheduleError};

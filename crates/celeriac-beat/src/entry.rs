//! Schedule entries: what to send, how to route it, when, and the run state the store
//! keeps; and the pure rule that decides which runs of an entry are due
//! ([`Entry::due_runs`]), shared by every beat process.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use celeriac_core::{Map, SendOptions, Value};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;
use crate::BeatError;

/// The header every message sent by beat carries: `{"entry": NAME, "due_at": ISO}`.
/// Workers ignore it; it tells operators (and tests) which run a message is.
pub const BEAT_HEADER: &str = "celeriac_beat";

/// What beat does with runs that were due while no beat process was running (or
/// that are older than [`BeatConfig::misfire_grace`](crate::BeatConfig)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Send one run for all the missed due times together (the latest of them).
    #[default]
    Once,
    /// Send every missed run, oldest first.
    All,
    /// Send none of them; wait for the next due time.
    Skip,
}

impl CatchUp {
    /// `once`, `all` or `skip`.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Once => "once",
            CatchUp::All => "all",
            CatchUp::Skip => "skip",
        }
    }
}

impl fmt::Display for CatchUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CatchUp {
    type Err = BeatError;

    fn from_str(text: &str) -> Result<CatchUp, BeatError> {
        match text {
            "once" => Ok(CatchUp::Once),
            "all" => Ok(CatchUp::All),
            "skip" => Ok(CatchUp::Skip),
            other => Err(BeatError::InvalidEntry(format!(
                "catch-up policy must be once, all or skip, got {other:?}"
            ))),
        }
    }
}

/// One schedule entry (a django-celery-beat `PeriodicTask`, a `beat_schedule` item).
///
/// The fields from `name` to `description` are the entry's configuration, written
/// by [`ScheduleStore::upsert`](crate::ScheduleStore::upsert). `last_run_at`,
/// `total_run_count`, `created_at` and `updated_at` are run state kept by the store:
/// upsert ignores them for an existing entry (editing an entry keeps its history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Entry {
    /// Unique name.
    pub name: String,
    /// The task to send, by name (`proj.tasks.add`).
    pub task: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// When it is due.
    pub schedule: Schedule,
    /// Target queue (else the app's routing decides).
    #[serde(default)]
    pub queue: Option<String>,
    /// Exchange.
    #[serde(default)]
    pub exchange: Option<String>,
    /// Routing key.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// Message priority.
    #[serde(default)]
    pub priority: Option<u8>,
    /// Each run expires this long after its due time (`expires_at = due + expires`).
    #[serde(default, with = "opt_secs")]
    pub expires: Option<Duration>,
    /// Extra message headers.
    #[serde(default)]
    pub headers: Map<String, Value>,
    /// Disabled entries are never due.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Disable the entry after its first run.
    #[serde(default)]
    pub one_off: bool,
    /// No run is due before this instant.
    #[serde(default)]
    pub start_time: Option<DateTime<Utc>>,
    /// No run is due after this instant (django-celery-beat's `expires`).
    #[serde(default)]
    pub end_time: Option<DateTime<Utc>>,
    /// What to do with runs missed while beat was down.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Free text for people.
    #[serde(default)]
    pub description: String,
    /// The due time of the latest claimed run (store-managed).
    #[serde(default)]
    pub last_run_at: Option<DateTime<Utc>>,
    /// How many runs were claimed (store-managed).
    #[serde(default)]
    pub total_run_count: u64,
    /// When the entry was first stored (store-managed; set by the store when `None`).
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// When its configuration last changed (store-managed).
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
}

fn yes() -> bool {
    true
}

impl Entry {
    /// An enabled entry sending `task` with no arguments on `schedule`.
    pub fn new(
        name: impl Into<String>,
        task: impl Into<String>,
        schedule: impl Into<Schedule>,
    ) -> Entry {
        Entry {
            name: name.into(),
            task: task.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            schedule: schedule.into(),
            queue: None,
            exchange: None,
            routing_key: None,
            priority: None,
            expires: None,
            headers: Map::new(),
            enabled: true,
            one_off: false,
            start_time: None,
            end_time: None,
            catch_up: CatchUp::Once,
            description: String::new(),
            last_run_at: None,
            total_run_count: 0,
            created_at: None,
            updated_at: None,
        }
    }

    /// Sets the positional arguments.
    pub fn args(mut self, args: Vec<Value>) -> Entry {
        self.args = args;
        self
    }

    /// Sets the keyword arguments.
    pub fn kwargs(mut self, kwargs: Map<String, Value>) -> Entry {
        self.kwargs = kwargs;
        self
    }

    /// Sets the target queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Entry {
        self.queue = Some(queue.into());
        self
    }

    /// Sets the catch-up policy.
    pub fn catch_up(mut self, catch_up: CatchUp) -> Entry {
        self.catch_up = catch_up;
        self
    }

    /// Enables or disables the entry.
    pub fn enabled(mut self, enabled: bool) -> Entry {
        self.enabled = enabled;
        self
    }

    /// Makes the entry run once and then disable itself.
    pub fn one_off(mut self, one_off: bool) -> Entry {
        self.one_off = one_off;
        self
    }

    /// Sets the per-run expiry.
    pub fn expires(mut self, expires: Duration) -> Entry {
        self.expires = Some(expires);
        self
    }

    /// Sets the start time.
    pub fn start_time(mut self, start: DateTime<Utc>) -> Entry {
        self.start_time = Some(start);
        self
    }

    /// Sets the creation time (stores set it on first insert when absent).
    pub fn created_at(mut self, created: DateTime<Utc>) -> Entry {
        self.created_at = Some(created);
        self
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Entry {
        self.description = description.into();
        self
    }

    /// Checks what every store refuses: an empty name or task, a name with control
    /// characters, an end before the start.
    pub fn validate(&self) -> Result<(), BeatError> {
        if self.name.trim().is_empty() {
            return Err(BeatError::InvalidEntry("the entry name is empty".into()));
        }
        if self.name.chars().any(char::is_control) {
            return Err(BeatError::InvalidEntry(format!(
                "the entry name {:?} contains control characters",
                self.name
            )));
        }
        if self.task.trim().is_empty() {
            return Err(BeatError::InvalidEntry(format!(
                "entry {:?} names no task",
                self.name
            )));
        }
        if let (Some(start), Some(end)) = (self.start_time, self.end_time) {
            if end < start {
                return Err(BeatError::InvalidEntry(format!(
                    "entry {:?} ends ({end}) before it starts ({start})",
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// The schedule as a fixed set of due instants, and the exclusive lower bound of
    /// the next due time.
    ///
    /// The bound is the last run, else the creation (a clocked entry that never ran is
    /// due at its time even when that was before its creation), and never before
    /// `start_time`. A relative interval (no anchor) becomes a grid anchored at that
    /// bound, so every beat process computes the same due times whatever its `now`:
    /// its first run is one period after the creation (or the start), each next one
    /// a period after the previous run, and after a downtime the grid keeps its phase.
    fn plan(&self, now: DateTime<Utc>) -> (Schedule, DateTime<Utc>) {
        if let Schedule::Interval(interval) = &self.schedule {
            if interval.anchor.is_none() {
                let base = self.last_run_at.or(self.created_at).unwrap_or(now);
                let base = self.start_time.map_or(base, |start| base.max(start));
                return (interval.anchored(base).into(), base);
            }
        }
        let base = match (self.last_run_at, &self.schedule) {
            (Some(last), _) => last,
            (None, Schedule::Clocked(clocked)) => clocked.at - chrono::Duration::nanoseconds(1),
            (None, _) => self.created_at.unwrap_or(now),
        };
        let after = match self.start_time {
            Some(start) => base.max(start - chrono::Duration::nanoseconds(1)),
            None => base,
        };
        (self.schedule.clone(), after)
    }

    fn within_end(&self, at: DateTime<Utc>) -> bool {
        self.end_time.is_none_or(|end| at <= end)
    }

    /// The due times beat should claim at `now`, oldest first, at most `limit`.
    ///
    /// A due time in `(now - grace, now]` is on time and always due. Older ones were
    /// missed (beat was down, or stalled longer than `grace`), and the entry's
    /// [`CatchUp`] policy decides: `once` keeps only the latest missed one, `all`
    /// keeps each, `skip` none. Disabled entries have none.
    pub fn due_runs(
        &self,
        now: DateTime<Utc>,
        grace: Duration,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut due = Vec::new();
        if !self.enabled || limit == 0 {
            return due;
        }
        let (schedule, after) = self.plan(now);
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let missed_until = now.checked_sub_signed(grace).unwrap_or(after).max(after);
        match self.catch_up {
            CatchUp::Once => {
                if let Some(latest) = schedule.last_due_between(after, missed_until) {
                    due.push(latest);
                }
            }
            CatchUp::All => {
                let mut cursor = after;
                while let Some(next) = schedule.next_after(cursor) {
                    if next > missed_until || due.len() >= limit {
                        break;
                    }
                    due.push(next);
                    cursor = next;
                }
            }
            CatchUp::Skip => {}
        }
        let mut cursor = due.last().copied().unwrap_or(missed_until);
        while due.len() < limit {
            match schedule.next_after(cursor) {
                Some(next) if next <= now => {
                    due.push(next);
                    cursor = next;
                }
                _ => break,
            }
        }
        due.retain(|at| self.within_end(*at));
        due
    }

    /// When the entry is next due if nothing is due at `now` (see
    /// [`due_runs`](Self::due_runs)); `None` when it never is again or is disabled.
    pub fn next_due(&self, now: DateTime<Utc>, grace: Duration) -> Option<DateTime<Utc>> {
        if !self.enabled {
            return None;
        }
        let (schedule, after) = self.plan(now);
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let from = now.checked_sub_signed(grace).unwrap_or(after).max(after);
        let next = if self.catch_up == CatchUp::Skip {
            schedule.next_after(from)
        } else {
            schedule.next_after(after)
        }?;
        self.within_end(next).then_some(next)
    }

    /// The send options of the run due at `due_at`: the entry's routing, priority,
    /// headers plus [`BEAT_HEADER`], `expires_at = due_at + expires`, and `task_id`.
    pub fn send_options(&self, due_at: DateTime<Utc>, task_id: &str) -> SendOptions {
        let mut options = SendOptions::new().task_id(task_id);
        options.queue = self.queue.clone();
        options.exchange = self.exchange.clone();
        options.routing_key = self.routing_key.clone();
        options.priority = self.priority;
        options.headers = self.headers.clone();
        options.headers.insert(
            BEAT_HEADER.into(),
            serde_json::json!({
                "entry": self.name,
                "due_at": celeriac_core::time::format_iso(due_at),
            }),
        );
        if let Some(expires) = self
            .expires
            .and_then(|e| chrono::Duration::from_std(e).ok())
        {
            options.expires_at = due_at.checked_add_signed(expires);
        }
        options
    }
}

/// Optional durations as fractional seconds.
mod opt_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            Some(secs) => Duration::try_from_secs_f64(secs)
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("invalid duration {secs}"))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Clocked, Crontab, Interval};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn every_minute(catch_up: CatchUp) -> Entry {
        Entry::new(
            "e",
            "t",
            Interval::new(Duration::from_secs(60))
                .expect("1m")
                .anchored(at("2026-01-01T00:00:00Z")),
        )
        .catch_up(catch_up)
        .created_at(at("2026-01-01T00:00:00Z"))
    }

    const GRACE: Duration = Duration::from_secs(5);

    #[test]
    fn on_time_runs_are_due_whatever_the_policy() {
        for policy in [CatchUp::Once, CatchUp::All, CatchUp::Skip] {
            let mut entry = every_minute(policy);
            entry.last_run_at = Some(at("2026-01-01T00:01:00Z"));
            assert_eq!(
                entry.due_runs(at("2026-01-01T00:02:00.200Z"), GRACE, 100),
                vec![at("2026-01-01T00:02:00Z")],
                "{policy}"
            );
            assert!(entry
                .due_runs(at("2026-01-01T00:01:59Z"), GRACE, 100)
                .is_empty());
            assert_eq!(
                entry.next_due(at("2026-01-01T00:01:59Z"), GRACE),
                Some(at("2026-01-01T00:02:00Z"))
            );
        }
    }

    #[test]
    fn missed_runs_follow_the_catch_up_policy() {
        // Last run at 00:01; beat comes back at 00:10:02: 00:02..00:10 were due.
        let now = at("2026-01-01T00:10:02Z");
        let cases = [
            (
                CatchUp::Once,
                vec!["2026-01-01T00:09:00Z", "2026-01-01T00:10:00Z"],
            ),
            (
                CatchUp::All,
                vec![
                    "2026-01-01T00:02:00Z",
                    "2026-01-01T00:03:00Z",
                    "2026-01-01T00:04:00Z",
                    "2026-01-01T00:05:00Z",
                    "2026-01-01T00:06:00Z",
                    "2026-01-01T00:07:00Z",
                    "2026-01-01T00:08:00Z",
                    "2026-01-01T00:09:00Z",
                    "2026-01-01T00:10:00Z",
                ],
            ),
            (CatchUp::Skip, vec!["2026-01-01T00:10:00Z"]),
        ];
        for (policy, expected) in cases {
            let mut entry = every_minute(policy);
            entry.last_run_at = Some(at("2026-01-01T00:01:00Z"));
            let expected: Vec<_> = expected.into_iter().map(at).collect();
            assert_eq!(entry.due_runs(now, GRACE, 100), expected, "{policy}");
        }
        // Once, long after: one run, the latest missed time.
        let mut entry = every_minute(CatchUp::Once);
        entry.last_run_at = Some(at("2026-01-01T00:01:00Z"));
        assert_eq!(
            entry.due_runs(at("2026-01-01T00:10:30Z"), GRACE, 100),
            vec![at("2026-01-01T00:10:00Z")]
        );
        // Skip, long after: nothing now, the next future time later.
        let mut entry = every_minute(CatchUp::Skip);
        entry.last_run_at = Some(at("2026-01-01T00:01:00Z"));
        assert!(entry
            .due_runs(at("2026-01-01T00:10:30Z"), GRACE, 100)
            .is_empty());
        assert_eq!(
            entry.next_due(at("2026-01-01T00:10:30Z"), GRACE),
            Some(at("2026-01-01T00:11:00Z"))
        );
        // All is capped per call; the rest follow on the next call.
        let mut entry = every_minute(CatchUp::All);
        entry.last_run_at = Some(at("2026-01-01T00:01:00Z"));
        assert_eq!(entry.due_runs(now, GRACE, 3).len(), 3);
    }

    #[test]
    fn start_end_disabled_and_clocked_entries() {
        let mut entry = every_minute(CatchUp::All);
        entry.start_time = Some(at("2026-01-01T00:05:00Z"));
        entry.end_time = Some(at("2026-01-01T00:07:00Z"));
        assert_eq!(
            entry.due_runs(at("2026-01-01T00:09:00Z"), GRACE, 100),
            vec![
                at("2026-01-01T00:05:00Z"),
                at("2026-01-01T00:06:00Z"),
                at("2026-01-01T00:07:00Z")
            ]
        );
        entry.last_run_at = Some(at("2026-01-01T00:07:00Z"));
        assert_eq!(entry.next_due(at("2026-01-01T00:09:00Z"), GRACE), None);
        let disabled = every_minute(CatchUp::Once).enabled(false);
        assert!(disabled
            .due_runs(at("2026-01-02T00:00:00Z"), GRACE, 100)
            .is_empty());
        assert_eq!(disabled.next_due(at("2026-01-02T00:00:00Z"), GRACE), None);
        // A clocked entry created after its time still runs once.
        let clocked = Entry::new("c", "t", Clocked::new(at("2026-01-01T00:00:00Z")))
            .created_at(at("2026-01-01T01:00:00Z"));
        assert_eq!(
            clocked.due_runs(at("2026-01-01T01:00:01Z"), GRACE, 100),
            vec![at("2026-01-01T00:00:00Z")]
        );
        // A never-run crontab entry counts from its creation.
        let cron = Entry::new("k", "t", Crontab::parse("0 * * * *").expect("cron"))
            .created_at(at("2026-01-01T00:30:00Z"));
        assert_eq!(
            cron.next_due(at("2026-01-01T00:30:01Z"), GRACE),
            Some(at("2026-01-01T01:00:00Z"))
        );
    }

    #[test]
    fn relative_intervals_are_due_on_a_grid_from_the_last_run_whatever_now_is() {
        let grace = Duration::from_secs(5);
        for policy in [CatchUp::Once, CatchUp::All, CatchUp::Skip] {
            let mut entry = Entry::new(
                "r",
                "t",
                Interval::new(Duration::from_secs(60)).expect("1m"),
            )
            .catch_up(policy)
            .created_at(at("2026-01-01T00:00:00.250Z"));
            // Never run: one period after creation, on time at any `now` around it.
            assert_eq!(
                entry.next_due(at("2026-01-01T00:00:30Z"), grace),
                Some(at("2026-01-01T00:01:00.250Z")),
                "{policy}"
            );
            for now in ["2026-01-01T00:01:00.250Z", "2026-01-01T00:01:03Z"] {
                assert_eq!(
                    entry.due_runs(at(now), grace, 10),
                    vec![at("2026-01-01T00:01:00.250Z")],
                    "{policy} at {now}"
                );
            }
            // After a run, the next one is a period later.
            entry.last_run_at = Some(at("2026-01-01T00:01:00.250Z"));
            assert!(entry
                .due_runs(at("2026-01-01T00:01:59Z"), grace, 10)
                .is_empty());
            assert_eq!(
                entry.next_due(at("2026-01-01T00:01:59Z"), grace),
                Some(at("2026-01-01T00:02:00.250Z")),
                "{policy}"
            );
        }
        // After downtime, the catch-up runs stay on the grid (so replicas agree).
        let mut once = Entry::new(
            "r",
            "t",
            Interval::new(Duration::from_secs(60)).expect("1m"),
        )
        .created_at(at("2026-01-01T00:00:00Z"));
        once.last_run_at = Some(at("2026-01-01T00:01:00Z"));
        for now in ["2026-01-01T00:10:30Z", "2026-01-01T00:10:31.5Z"] {
            assert_eq!(
                once.due_runs(at(now), grace, 10),
                vec![at("2026-01-01T00:10:00Z")],
                "at {now}"
            );
        }
        // A start time after the creation: one period after the start.
        let started = Entry::new(
            "r",
            "t",
            Interval::new(Duration::from_secs(60)).expect("1m"),
        )
        .created_at(at("2026-01-01T00:00:00Z"))
        .start_time(at("2026-01-01T06:00:00Z"));
        assert_eq!(
            started.next_due(at("2026-01-01T00:00:01Z"), grace),
            Some(at("2026-01-01T06:01:00Z"))
        );
    }

    #[test]
    fn send_options_carry_routing_expiry_and_the_beat_header() {
        let mut entry = every_minute(CatchUp::Once)
            .queue("q")
            .expires(Duration::from_secs(30));
        entry.priority = Some(3);
        entry.routing_key = Some("rk".into());
        let due = at("2026-01-01T00:02:00Z");
        let options = entry.send_options(due, "id-1");
        assert_eq!(options.task_id.as_deref(), Some("id-1"));
        assert_eq!(options.queue.as_deref(), Some("q"));
        assert_eq!(options.routing_key.as_deref(), Some("rk"));
        assert_eq!(options.priority, Some(3));
        assert_eq!(options.expires_at, Some(at("2026-01-01T00:02:30Z")));
        assert_eq!(
            options.headers[BEAT_HEADER],
            serde_json::json!({"entry": "e", "due_at": "2026-01-01T00:02:00+00:00"})
        );
    }

    #[test]
    fn entries_are_validated() {
        let ok = every_minute(CatchUp::Once);
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.name = " ".into();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.task = String::new();
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.start_time = Some(at("2026-01-02T00:00:00Z"));
        bad.end_time = Some(at("2026-01-01T00:00:00Z"));
        assert!(bad.validate().is_err());
        assert_eq!("all".parse::<CatchUp>().expect("all"), CatchUp::All);
        assert!("never".parse::<CatchUp>().is_err());
    }
}

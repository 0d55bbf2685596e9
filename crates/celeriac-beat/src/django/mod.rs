//! Schedules in django-celery-beat's own PostgreSQL tables (`django+postgres://...`,
//! feature `django`): periodic tasks created in the Django admin (or with the ORM)
//! run on celeriac beat with no change on the Django side, and entries celeriac
//! writes show up in the admin.
//!
//! # URL
//!
//! `django+postgres://user[:password]@host[:port]/dbname` (also
//! `django+postgresql://`), i.e. libpq's URL with a `django+` prefix saying "the
//! tables of django-celery-beat", and libpq's query parameters. celeriac's own
//! `schema=NAME` parameter sets the connection's `search_path` when the Django
//! tables are not in `public`. TLS is not supported yet. One connection per store
//! handle, opened again after it broke or an operation took longer than 10 s. The
//! database user needs to create tables once (celeriac's two, below).
//!
//! # Tables
//!
//! django-celery-beat's tables, as its migrations (0001-0019, django-celery-beat 2.x)
//! define them, must exist (`python manage.py migrate django_celery_beat`); they are
//! read and written, never created or altered:
//!
//! | celeriac [`Entry`] | django-celery-beat |
//! |---|---|
//! | `name`, `task`, `description`, `enabled`, `one_off`, `start_time`, `queue`, `exchange`, `routing_key`, `priority` | the `django_celery_beat_periodictask` columns of the same names (`''` reads as none) |
//! | `args`, `kwargs`, `headers` | `args`, `kwargs`, `headers`: JSON text |
//! | `end_time` (no run after) | `expires` (a date-time) |
//! | `expires` (each run expires this long after its due time) | `expire_seconds` (whole seconds, rounded up; left empty when `expires` is set, as Django allows only one of them) |
//! | `last_run_at`, `total_run_count` | `last_run_at`, `total_run_count` |
//! | `updated_at` | `date_changed` |
//! | [`Interval`] | `interval_id` → `django_celery_beat_intervalschedule(every, period)`, period `days`, `hours`, `minutes`, `seconds` or `microseconds` |
//! | [`Crontab`] | `crontab_id` → `django_celery_beat_crontabschedule(minute, hour, day_of_week, day_of_month, month_of_year, timezone)` |
//! | [`Clocked`] | `clocked_id` → `django_celery_beat_clockedschedule(clocked_time)`, and `one_off` (Django requires it for clocked tasks) |
//! | [`Solar`] | `solar_id` → `django_celery_beat_solarschedule(event, latitude, longitude)` (6 decimals) |
//!
//! Schedule rows are shared: an upsert reuses a row with the same values or inserts
//! one, as django-celery-beat's `from_schedule` does, and never edits a row another
//! task may use.
//!
//! celeriac adds two tables of its own (`schema.sql`, created if missing):
//! `celeriac_beat_entry` (creation time, catch-up policy, and the exact values the
//! Django columns can only round) and `celeriac_beat_run` (the run claims). Both
//! cascade on the deletion of their periodic task.
//!
//! # Change marker
//!
//! Like django-celery-beat, every edit bumps `django_celery_beat_periodictasks`
//! (`ident = 1`).`last_update`; Django's admin and ORM saves bump it too. The marker
//! beat polls is that time with the count and the latest `date_changed` of the
//! periodic tasks, so a save that skipped the signal is seen as well. (A queryset
//! `.update()` on the Django side changes neither: call
//! `PeriodicTasks.update_changed()` after one, as django-celery-beat asks.)
//!
//! # Claims
//!
//! A claim is one transaction: it locks the periodic task's row (`SELECT … FOR
//! UPDATE`), checks `enabled` and `due > last_run_at`, inserts the run into
//! `celeriac_beat_run` (whose primary key refuses a second claim of the same due
//! time), and advances `last_run_at` and `total_run_count` (disabling a one-off
//! task). `date_changed` is left alone, so claims do not move the marker.
//!
//! # Differences from django-celery-beat's scheduler
//!
//! - Disabling through celeriac keeps `last_run_at` (Django's `save()` clears it).
//!   A task whose `last_run_at` Django cleared while it had runs counts from its
//!   `date_changed`, as django-celery-beat does.
//! - Messages carry celeriac's `celeriac_beat` header, not `periodic_task_name`.
//! - `expires` (the date-time) ends the schedule but does not also become each
//!   message's expiry.

mod queries;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use celeriac_core::{Map, Value};
use chrono::{DateTime, Utc};
use tokio_postgres::{Client, NoTls, Row};

use crate::entry::{CatchUp, Entry};
use crate::schedule::{Clocked, Crontab, Interval, Schedule, Solar, SolarEvent};
use crate::store::{
    ChangeMarker, ClaimParams, FinishParams, ListParams, Run, RunsParams, ScheduleStore,
    TakeOverParams,
};
use crate::BeatError;

/// The statements creating celeriac's tables.
pub const SCHEMA_SQL: &str = include_str!("schema.sql");

/// Published runs kept per periodic task.
const RUNS_KEPT: i64 = 100;
/// Key of the advisory lock held while creating the tables ("celeriacbeat" hashed).
const MIGRATION_LOCK: i64 = 0x6365_6c62_6561_7421;
/// How long one operation may take before its connection is given up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest text django-celery-beat's `CharField(max_length=200)` columns hold.
const MAX_CHARS: usize = 200;

/// Errors of the django-celery-beat store, wrapped in [`BeatError::Storage`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// PostgreSQL or the connection reported an error.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// django-celery-beat's tables are missing.
    #[error("django-celery-beat's tables are missing in this database ({0}); run `python manage.py migrate django_celery_beat`")]
    NoDjangoTables(String),
    /// A periodic task cannot be read as a celeriac entry.
    #[error("periodic task {name:?} cannot be used: {reason}")]
    Unreadable {
        /// The task's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Connecting or an operation took too long.
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    /// An instant outside the years the store can hold (1678-2261).
    #[error("{0} is outside the years the store can hold (1678-2261)")]
    OutOfRange(DateTime<Utc>),
}

impl From<StoreError> for BeatError {
    fn from(error: StoreError) -> BeatError {
        BeatError::storage(error)
    }
}

impl From<tokio_postgres::Error> for BeatError {
    fn from(error: tokio_postgres::Error) -> BeatError {
        BeatError::storage(StoreError::Postgres(error))
    }
}

/// The django-celery-beat store. See the [module docs](self). Cheap to clone;
/// clones share one connection (operations of one handle run one at a time).
#[derive(Clone)]
pub struct DjangoScheduleStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    schema: Option<String>,
    display: String,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl std::fmt::Debug for DjangoScheduleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DjangoScheduleStore")
            .field("url", &self.inner.display)
            .finish_non_exhaustive()
    }
}

/// The URL with its password hidden.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => {
            let auth = &url[start + 3..at];
            match auth.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..start + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Splits celeriac's own `schema=NAME` parameter off a URL.
fn split_schema(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), None);
    };
    let mut schema = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", value)) => schema = Some(value.to_string()),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, schema)
}

impl DjangoScheduleStore {
    /// Connects to `django+postgres://…` (see the [module docs](self)), checks that
    /// django-celery-beat's tables exist and creates celeriac's if missing.
    pub async fn open_url(url: &str) -> Result<DjangoScheduleStore, BeatError> {
        let display = redact(url);
        let invalid = |reason: String| BeatError::InvalidUrl {
            url: display.clone(),
            reason,
        };
        let libpq = url
            .strip_prefix("django+")
            .filter(|rest| rest.starts_with("postgres://") || rest.starts_with("postgresql://"))
            .ok_or_else(|| invalid("expected django+postgres://user@host[:port]/dbname".into()))?;
        let (libpq, schema) = split_schema(libpq);
        if let Some(name) = &schema {
            let plain = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !plain {
                return Err(invalid(format!(
                    "schema {name:?} must be 1-63 letters, digits, '_' or '-'"
                )));
            }
        }
        let mut config = tokio_postgres::Config::from_str(&libpq)
            .map_err(|e| invalid(format!("not a PostgreSQL URL: {e}")))?;
        if config.get_application_name().is_none() {
            config.application_name("celeriac-beat");
        }
        config.connect_timeout(Duration::from_secs(5));
        let store = DjangoScheduleStore {
            inner: Arc::new(Inner {
                config,
                schema,
                display,
                client: tokio::sync::Mutex::new(None),
            }),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Checks django-celery-beat's tables and creates celeriac's.
    async fn migrate(&self) -> Result<(), BeatError> {
        self.with_client(|client| {
            Box::pin(async move {
                let row = client
                    .query_one(
                        "SELECT to_regclass('django_celery_beat_periodictask')::text,
                                to_regclass('django_celery_beat_periodictasks')::text,
                                current_schemas(false)::text",
                        &[],
                    )
                    .await?;
                let (tasks, marker, path): (Option<String>, Option<String>, String) =
                    (row.get(0), row.get(1), row.get(2));
                if tasks.is_none() || marker.is_none() {
                    return Err(StoreError::NoDjangoTables(format!("search_path {path}")).into());
                }
                let tx = client.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                    .await?;
                tx.batch_execute(SCHEMA_SQL).await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    /// Runs `f` on the live connection (opened if needed); a broken connection is
    /// dropped so the next call opens a new one.
    async fn with_client<T, F>(&self, f: F) -> Result<T, BeatError>
    where
        F: for<'c> FnOnce(
            &'c mut Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, BeatError>> + Send + 'c>,
        >,
    {
        let mut slot = self.inner.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.connect().await?);
        }
        let Some(client) = slot.as_mut() else {
            return Err(StoreError::Timeout(RESPONSE_TIMEOUT).into());
        };
        match tokio::time::timeout(RESPONSE_TIMEOUT, f(client)).await {
            Ok(result) => {
                if result.is_err() && client.is_closed() {
                    *slot = None;
                }
                result
            }
            Err(_) => {
                // The server or the network stalled: give the connection up (a
                // transaction left open is rolled back when it closes).
                *slot = None;
                Err(StoreError::Timeout(RESPONSE_TIMEOUT).into())
            }
        }
    }

    async fn connect(&self) -> Result<Client, BeatError> {
        let limit = Duration::from_secs(5);
        let (client, connection) = tokio::time::timeout(limit, self.inner.config.connect(NoTls))
            .await
            .map_err(|_| StoreError::Timeout(limit))??;
        let url = self.inner.display.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %url, "django-celery-beat store connection closed");
            }
        });
        if let Some(schema) = &self.inner.schema {
            client
                .batch_execute(&format!("SET search_path TO \"{schema}\""))
                .await?;
        }
        Ok(client)
    }

    /// Reads entries; unreadable periodic tasks (solar ones) are logged and left out.
    async fn read(
        &self,
        filter: &'static str,
        name: Option<String>,
    ) -> Result<Vec<Entry>, BeatError> {
        let rows = self
            .with_client(move |client| {
                Box::pin(async move {
                    let sql = format!(
                        "{} {filter} ORDER BY t.name COLLATE \"C\"",
                        queries::SELECT_ENTRIES
                    );
                    Ok(client.query(&sql, &[&name]).await?)
                })
            })
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            match read_entry(&row) {
                Ok(entry) => entries.push(entry),
                Err(error) => tracing::warn!(%error, "skipping a django-celery-beat periodic task"),
            }
        }
        Ok(entries)
    }
}

#[async_trait]
impl ScheduleStore for DjangoScheduleStore {
    async fn upsert(&self, entry: &Entry) -> Result<(), BeatError> {
        entry.validate()?;
        let write = EntryWrite::new(entry)?;
        self.with_client(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await?;
                let mut solar_id = None;
                let (interval_id, crontab_id, clocked_id) = match &write.schedule {
                    DjangoSchedule::Interval { every, period } => {
                        let id = schedule_row(
                            &tx,
                            queries::FIND_INTERVAL,
                            queries::INSERT_INTERVAL,
                            &[every, period],
                        )
                        .await?;
                        (Some(id), None, None)
                    }
                    DjangoSchedule::Crontab(fields) => {
                        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                            fields.iter().map(|f| f as _).collect();
                        let id = schedule_row(
                            &tx,
                            queries::FIND_CRONTAB,
                            queries::INSERT_CRONTAB,
                            &params,
                        )
                        .await?;
                        (None, Some(id), None)
                    }
                    DjangoSchedule::Clocked(at) => {
                        let id = schedule_row(
                            &tx,
                            queries::FIND_CLOCKED,
                            queries::INSERT_CLOCKED,
                            &[at],
                        )
                        .await?;
                        (None, None, Some(id))
                    }
                    DjangoSchedule::Solar {
                        event,
                        latitude,
                        longitude,
                    } => {
                        let id = schedule_row(
                            &tx,
                            queries::FIND_SOLAR,
                            queries::INSERT_SOLAR,
                            &[event, latitude, longitude],
                        )
                        .await?;
                        solar_id = Some(id);
                        (None, None, None)
                    }
                };
                let row = tx
                    .query_one(
                        queries::UPSERT_TASK,
                        &[
                            &write.name,
                            &write.task,
                            &write.args,
                            &write.kwargs,
                            &write.queue,
                            &write.exchange,
                            &write.routing_key,
                            &write.end_time,
                            &write.enabled,
                            &write.description,
                            &crontab_id,
                            &interval_id,
                            &write.one_off,
                            &write.start_time,
                            &write.priority,
                            &write.headers,
                            &clocked_id,
                            &write.expire_seconds,
                            &solar_id,
                        ],
                    )
                    .await?;
                let id: i32 = row.get(0);
                tx.execute(
                    queries::UPSERT_EXTRA,
                    &[
                        &id,
                        &write.created_at,
                        &write.catch_up,
                        &write.exact_schedule,
                        &write.expires_secs,
                    ],
                )
                .await?;
                tx.execute(queries::BUMP_MARKER, &[]).await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    async fn get(&self, name: &str) -> Result<Option<Entry>, BeatError> {
        let name = name.to_string();
        let rows = self
            .with_client(move |client| {
                Box::pin(async move {
                    let sql = format!("{} WHERE t.name = $1", queries::SELECT_ENTRIES);
                    Ok(client.query(&sql, &[&name]).await?)
                })
            })
            .await?;
        rows.first().map(read_entry).transpose()
    }

    async fn list(&self, params: &ListParams) -> Result<Vec<Entry>, BeatError> {
        let prefix = params.prefix.clone().filter(|p| !p.is_empty());
        let filter = if prefix.is_some() {
            "WHERE left(t.name, length($1::text)) = $1::text"
        } else {
            "WHERE $1::text IS NULL"
        };
        let mut entries = self.read(filter, prefix).await?;
        if params.enabled_only {
            entries.retain(|e| e.enabled);
        }
        Ok(entries)
    }

    async fn remove(&self, name: &str) -> Result<bool, BeatError> {
        let name = name.to_string();
        self.with_client(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await?;
                let removed = tx.execute(queries::DELETE_TASK, &[&name]).await? == 1;
                if removed {
                    tx.execute(queries::BUMP_MARKER, &[]).await?;
                }
                tx.commit().await?;
                Ok(removed)
            })
        })
        .await
    }

    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<bool, BeatError> {
        let name = name.to_string();
        self.with_client(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await?;
                let found = tx.execute(queries::SET_ENABLED, &[&name, &enabled]).await? == 1;
                if found {
                    tx.execute(queries::BUMP_MARKER, &[]).await?;
                }
                tx.commit().await?;
                Ok(found)
            })
        })
        .await
    }

    async fn change_marker(&self) -> Result<ChangeMarker, BeatError> {
        let row = self
            .with_client(|client| {
                Box::pin(async move { Ok(client.query_one(queries::CHANGE_MARKER, &[]).await?) })
            })
            .await?;
        let last_update: Option<DateTime<Utc>> = row.get(0);
        let count: i64 = row.get(1);
        let latest: Option<DateTime<Utc>> = row.get(2);
        let stamp = |t: Option<DateTime<Utc>>| {
            t.and_then(|t| t.timestamp_nanos_opt())
                .map_or_else(|| "-".to_string(), |ns| ns.to_string())
        };
        Ok(ChangeMarker(format!(
            "{}/{count}/{}",
            stamp(last_update),
            stamp(latest)
        )))
    }

    async fn claim_run(&self, params: &ClaimParams) -> Result<bool, BeatError> {
        let params = params.clone();
        let due = ns(params.due_at)?;
        let now = ns(params.now)?;
        let lease = ns(params.lease_until)?;
        let due_us = truncate_us(params.due_at);
        self.with_client(move |client| {
            Box::pin(async move {
                let tx = client.transaction().await?;
                let Some(task) = tx.query_opt(queries::LOCK_TASK, &[&params.entry]).await? else {
                    return Ok(false);
                };
                let id: i32 = task.get(0);
                let enabled: bool = task.get(1);
                let one_off: bool = task.get(2);
                let last_run_at: Option<DateTime<Utc>> = task.get(3);
                let date_changed: DateTime<Utc> = task.get(4);
                if !enabled {
                    return Ok(false);
                }
                let exact: Option<i64> = tx
                    .query_opt(queries::EXACT_LAST_RUN, &[&id])
                    .await?
                    .and_then(|row| row.get(0));
                if let Some(last) = effective_last_run(last_run_at, exact) {
                    if last >= due {
                        return Ok(false);
                    }
                }
                let inserted = tx
                    .execute(
                        queries::INSERT_RUN,
                        &[&id, &due, &params.claimer, &params.task_id, &now, &lease],
                    )
                    .await?;
                if inserted != 1 {
                    return Ok(false);
                }
                tx.execute(queries::CLAIM_ADVANCE, &[&id, &due_us, &one_off])
                    .await?;
                tx.execute(queries::CLAIM_EXACT, &[&id, &date_changed, &due])
                    .await?;
                if one_off {
                    tx.execute(queries::BUMP_MARKER, &[]).await?;
                }
                tx.execute(queries::PRUNE_RUNS, &[&id, &RUNS_KEPT]).await?;
                tx.commit().await?;
                Ok(true)
            })
        })
        .await
    }

    async fn finish_run(&self, params: &FinishParams) -> Result<bool, BeatError> {
        let params = params.clone();
        let due = ns(params.due_at)?;
        let sent = ns(params.sent_at)?;
        self.with_client(move |client| {
            Box::pin(async move {
                let changed = client
                    .execute(
                        queries::FINISH_RUN,
                        &[&params.entry, &due, &params.claimer, &sent],
                    )
                    .await?;
                Ok(changed == 1)
            })
        })
        .await
    }

    async fn take_over_stale(&self, params: &TakeOverParams) -> Result<Vec<Run>, BeatError> {
        let claimer = params.claimer.clone();
        let now = ns(params.now)?;
        let lease = ns(params.lease_until)?;
        let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
        let rows = self
            .with_client(move |client| {
                Box::pin(async move {
                    Ok(client
                        .query(queries::TAKE_OVER, &[&claimer, &now, &lease, &limit])
                        .await?)
                })
            })
            .await?;
        let mut runs: Vec<Run> = rows.iter().map(read_run).collect();
        runs.sort_by_key(|run| run.due_at);
        Ok(runs)
    }

    async fn runs(&self, params: &RunsParams) -> Result<Vec<Run>, BeatError> {
        let entry = params.entry.clone();
        let limit = i64::try_from(params.limit).unwrap_or(i64::MAX);
        let rows = self
            .with_client(move |client| {
                Box::pin(async move { Ok(client.query(queries::RUNS, &[&entry, &limit]).await?) })
            })
            .await?;
        Ok(rows.iter().map(read_run).collect())
    }

    fn describe(&self) -> String {
        self.inner.display.clone()
    }
}

/// Finds a schedule row with these values or inserts one; returns its id.
async fn schedule_row(
    tx: &tokio_postgres::Transaction<'_>,
    find: &str,
    insert: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<i32, BeatError> {
    if let Some(row) = tx.query_opt(find, params).await? {
        return Ok(row.get(0));
    }
    Ok(tx.query_one(insert, params).await?.get(0))
}

/// A schedule as django-celery-beat's tables hold it.
#[derive(Debug, Clone, PartialEq)]
enum DjangoSchedule {
    /// `every` × `period`.
    Interval { every: i32, period: String },
    /// minute, hour, day_of_week, day_of_month, month_of_year, timezone.
    Crontab([String; 6]),
    /// `clocked_time` (microseconds).
    Clocked(DateTime<Utc>),
    /// `event`, `latitude`, `longitude` (6 decimals).
    Solar {
        event: String,
        latitude: f64,
        longitude: f64,
    },
}

impl DjangoSchedule {
    /// The Django form of a celeriac schedule (an interval's anchor and sub-microsecond
    /// parts are dropped).
    fn from_schedule(schedule: &Schedule) -> Result<DjangoSchedule, BeatError> {
        match schedule {
            Schedule::Interval(interval) => {
                let micros = interval.every.as_micros();
                if interval.every.as_nanos() % 1_000 != 0 {
                    return Err(BeatError::InvalidEntry(format!(
                        "django-celery-beat intervals are whole microseconds, got {:?}",
                        interval.every
                    )));
                }
                for (unit, size) in [
                    ("days", 86_400_000_000u128),
                    ("hours", 3_600_000_000),
                    ("minutes", 60_000_000),
                    ("seconds", 1_000_000),
                    ("microseconds", 1),
                ] {
                    if micros % size == 0 {
                        if let Ok(every) = i32::try_from(micros / size) {
                            return Ok(DjangoSchedule::Interval {
                                every,
                                period: unit.to_string(),
                            });
                        }
                    }
                }
                Err(BeatError::InvalidEntry(format!(
                    "the interval {:?} does not fit django-celery-beat's every + period",
                    interval.every
                )))
            }
            Schedule::Crontab(crontab) => {
                let spec = crontab.spec();
                Ok(DjangoSchedule::Crontab([
                    spec.minute,
                    spec.hour,
                    spec.day_of_week,
                    spec.day_of_month,
                    spec.month_of_year,
                    spec.timezone,
                ]))
            }
            Schedule::Clocked(clocked) => Ok(DjangoSchedule::Clocked(truncate_us(clocked.at))),
            Schedule::Solar(solar) => Ok(DjangoSchedule::Solar {
                event: solar.event().name().to_string(),
                latitude: six_decimals(solar.latitude()),
                longitude: six_decimals(solar.longitude()),
            }),
        }
    }

    /// The celeriac schedule of Django columns.
    fn to_schedule(&self) -> Result<Schedule, String> {
        match self {
            DjangoSchedule::Interval { every, period } => {
                let unit: u64 = match period.as_str() {
                    "days" => 86_400_000_000,
                    "hours" => 3_600_000_000,
                    "minutes" => 60_000_000,
                    "seconds" => 1_000_000,
                    "microseconds" => 1,
                    other => return Err(format!("unknown interval period {other:?}")),
                };
                let every = u64::try_from(*every)
                    .map_err(|_| format!("negative interval {every} {period}"))?;
                let micros = every
                    .checked_mul(unit)
                    .ok_or_else(|| format!("interval {every} {period} is too long"))?;
                Interval::new(Duration::from_micros(micros))
                    .map(Schedule::from)
                    .map_err(|e| e.to_string())
            }
            DjangoSchedule::Crontab([minute, hour, dow, dom, moy, tz]) => {
                Crontab::new(minute, hour, dow, dom, moy)
                    .and_then(|c| c.in_timezone(tz))
                    .map(Schedule::from)
                    .map_err(|e| e.to_string())
            }
            DjangoSchedule::Clocked(at) => Ok(Clocked::new(*at).into()),
            DjangoSchedule::Solar {
                event,
                latitude,
                longitude,
            } => event
                .parse::<SolarEvent>()
                .and_then(|event| Solar::new(event, *latitude, *longitude))
                .map(Schedule::from)
                .map_err(|e| e.to_string()),
        }
    }
}

/// The column values an upsert writes.
struct EntryWrite {
    name: String,
    task: String,
    args: String,
    kwargs: String,
    queue: Option<String>,
    exchange: Option<String>,
    routing_key: Option<String>,
    end_time: Option<DateTime<Utc>>,
    enabled: bool,
    description: String,
    one_off: bool,
    start_time: Option<DateTime<Utc>>,
    priority: Option<i32>,
    headers: String,
    expire_seconds: Option<i32>,
    schedule: DjangoSchedule,
    created_at: DateTime<Utc>,
    catch_up: String,
    exact_schedule: String,
    expires_secs: Option<f64>,
}

impl EntryWrite {
    fn new(entry: &Entry) -> Result<EntryWrite, BeatError> {
        for (what, text) in [
            ("name", Some(&entry.name)),
            ("task", Some(&entry.task)),
            ("queue", entry.queue.as_ref()),
            ("exchange", entry.exchange.as_ref()),
            ("routing_key", entry.routing_key.as_ref()),
        ] {
            if text.is_some_and(|t| t.chars().count() > MAX_CHARS) {
                return Err(BeatError::InvalidEntry(format!(
                    "django-celery-beat holds at most {MAX_CHARS} characters in {what}"
                )));
            }
        }
        let schedule = DjangoSchedule::from_schedule(&entry.schedule)?;
        let expire_seconds = match (entry.expires, entry.end_time) {
            (Some(expires), None) => Some(
                i32::try_from(expires.as_secs() + u64::from(expires.subsec_nanos() > 0)).map_err(
                    |_| BeatError::InvalidEntry(format!("expiry {expires:?} is too long")),
                )?,
            ),
            _ => None,
        };
        Ok(EntryWrite {
            name: entry.name.clone(),
            task: entry.task.clone(),
            args: json(&entry.args)?,
            kwargs: json(&entry.kwargs)?,
            queue: entry.queue.clone().filter(|q| !q.is_empty()),
            exchange: entry.exchange.clone().filter(|q| !q.is_empty()),
            routing_key: entry.routing_key.clone().filter(|q| !q.is_empty()),
            end_time: entry.end_time,
            enabled: entry.enabled,
            description: entry.description.clone(),
            one_off: entry.one_off || matches!(entry.schedule, Schedule::Clocked(_)),
            start_time: entry.start_time,
            priority: entry.priority.map(i32::from),
            headers: json(&entry.headers)?,
            expire_seconds,
            schedule,
            created_at: truncate_us(entry.created_at.unwrap_or_else(Utc::now)),
            catch_up: entry.catch_up.as_str().to_string(),
            exact_schedule: json(&entry.schedule)?,
            expires_secs: entry.expires.map(|e| e.as_secs_f64()),
        })
    }
}

/// JSON text of a value.
fn json<T: serde::Serialize>(value: &T) -> Result<String, BeatError> {
    serde_json::to_string(value).map_err(|e| BeatError::InvalidEntry(e.to_string()))
}

/// Reads an entry from a row of [`queries::SELECT_ENTRIES`].
fn read_entry(row: &Row) -> Result<Entry, BeatError> {
    let name: String = row.try_get("name")?;
    let unreadable = |reason: String| -> BeatError {
        StoreError::Unreadable {
            name: name.clone(),
            reason,
        }
        .into()
    };
    let django = if let Some(every) = row.try_get::<_, Option<i32>>("every")? {
        DjangoSchedule::Interval {
            every,
            period: row
                .try_get::<_, Option<String>>("period")?
                .unwrap_or_default(),
        }
    } else if let Some(minute) = row.try_get::<_, Option<String>>("minute")? {
        let field = |column: &str| -> Result<String, BeatError> {
            Ok(row
                .try_get::<_, Option<String>>(column)?
                .unwrap_or_default())
        };
        DjangoSchedule::Crontab([
            minute,
            field("hour")?,
            field("day_of_week")?,
            field("day_of_month")?,
            field("month_of_year")?,
            field("timezone")?,
        ])
    } else if let Some(at) = row.try_get::<_, Option<DateTime<Utc>>>("clocked_time")? {
        DjangoSchedule::Clocked(at)
    } else if let Some(event) = row.try_get::<_, Option<String>>("event")? {
        let degrees = |column: &str| -> Result<f64, BeatError> {
            row.try_get::<_, Option<f64>>(column)?
                .ok_or_else(|| unreadable(format!("its solar schedule has no {column}")))
        };
        DjangoSchedule::Solar {
            event,
            latitude: degrees("solar_latitude")?,
            longitude: degrees("solar_longitude")?,
        }
    } else {
        return Err(unreadable("it has no schedule".into()));
    };
    let exact: Option<Schedule> = row
        .try_get::<_, Option<String>>("exact_schedule")?
        .and_then(|s| serde_json::from_str(&s).ok());
    let schedule = match exact {
        Some(exact) if DjangoSchedule::from_schedule(&exact).ok().as_ref() == Some(&django) => {
            exact
        }
        _ => django.to_schedule().map_err(&unreadable)?,
    };
    let json_text = |column: &str, default: &str| -> Result<String, BeatError> {
        Ok(row
            .try_get::<_, Option<String>>(column)?
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| default.to_string()))
    };
    let args: Vec<Value> = serde_json::from_str(&json_text("args", "[]")?)
        .map_err(|e| unreadable(format!("args are not a JSON array: {e}")))?;
    let kwargs: Map<String, Value> = serde_json::from_str(&json_text("kwargs", "{}")?)
        .map_err(|e| unreadable(format!("kwargs are not a JSON object: {e}")))?;
    let headers: Map<String, Value> = serde_json::from_str(&json_text("headers", "{}")?)
        .map_err(|e| unreadable(format!("headers are not a JSON object: {e}")))?;
    let text = |column: &str| -> Result<Option<String>, BeatError> {
        Ok(row
            .try_get::<_, Option<String>>(column)?
            .filter(|t| !t.is_empty()))
    };
    let mut entry = Entry::new(name.clone(), row.try_get::<_, String>("task")?, schedule);
    entry.args = args;
    entry.kwargs = kwargs;
    entry.headers = headers;
    entry.queue = text("queue")?;
    entry.exchange = text("exchange")?;
    entry.routing_key = text("routing_key")?;
    entry.priority = row
        .try_get::<_, Option<i32>>("priority")?
        .and_then(|p| u8::try_from(p).ok());
    entry.end_time = row.try_get("expires")?;
    let expire_seconds: Option<i32> = row.try_get("expire_seconds")?;
    let exact_expires: Option<f64> = row.try_get("expires_secs")?;
    entry.expires = match (expire_seconds, exact_expires) {
        (Some(secs), Some(exact)) if exact.ceil() as i64 == i64::from(secs) => {
            Duration::try_from_secs_f64(exact).ok()
        }
        (Some(secs), _) => u64::try_from(secs).ok().map(Duration::from_secs),
        (None, Some(exact)) if entry.end_time.is_some() => Duration::try_from_secs_f64(exact).ok(),
        (None, _) => None,
    };
    entry.enabled = row.try_get("enabled")?;
    entry.one_off = row.try_get("one_off")?;
    entry.start_time = row.try_get("start_time")?;
    entry.description = row.try_get("description")?;
    if let Some(catch_up) = row.try_get::<_, Option<String>>("catch_up")? {
        entry.catch_up = catch_up.parse::<CatchUp>().unwrap_or_default();
    }
    let total: i32 = row.try_get("total_run_count")?;
    entry.total_run_count = u64::try_from(total).unwrap_or(0);
    let date_changed: DateTime<Utc> = row.try_get("date_changed")?;
    let last_run_at: Option<DateTime<Utc>> = row.try_get("last_run_at")?;
    let exact_last: Option<i64> = row.try_get("last_run_ns")?;
    entry.last_run_at =
        effective_last_run(last_run_at, exact_last).map(DateTime::from_timestamp_nanos);
    let created: Option<DateTime<Utc>> = row.try_get("created_at")?;
    entry.created_at = Some(match (created, last_run_at) {
        // Django cleared last_run_at (disabled in the admin) after runs: count from
        // the change, as django-celery-beat does.
        (Some(_), None) if entry.total_run_count > 0 => date_changed,
        (Some(created), _) => created,
        (None, _) => date_changed,
    });
    entry.updated_at = Some(date_changed);
    Ok(entry)
}

/// The last run in nanoseconds: celeriac's exact value while Django's column still
/// says the same (to the microsecond), else Django's column.
fn effective_last_run(django: Option<DateTime<Utc>>, exact: Option<i64>) -> Option<i64> {
    let django = django?;
    let django_ns = django.timestamp_nanos_opt()?;
    match exact {
        Some(exact) if exact.div_euclid(1_000) * 1_000 == django_ns => Some(exact),
        _ => Some(django_ns),
    }
}

/// Reads a run from a row of [`queries::RUN_COLUMNS`].
fn read_run(row: &Row) -> Run {
    let attempts: i32 = row.get("attempts");
    Run {
        entry: row.get("name"),
        due_at: DateTime::from_timestamp_nanos(row.get("due_ns")),
        claimer: row.get("claimer"),
        task_id: row.get("task_id"),
        claimed_at: DateTime::from_timestamp_nanos(row.get("claimed_ns")),
        lease_until: DateTime::from_timestamp_nanos(row.get("lease_ns")),
        sent_at: row
            .get::<_, Option<i64>>("sent_ns")
            .map(DateTime::from_timestamp_nanos),
        attempts: u32::try_from(attempts).unwrap_or(1),
    }
}

/// An instant as Unix nanoseconds.
fn ns(at: DateTime<Utc>) -> Result<i64, StoreError> {
    at.timestamp_nanos_opt().ok_or(StoreError::OutOfRange(at))
}

/// `at` without its sub-microsecond part (what `timestamptz` holds).
fn truncate_us(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// Degrees as Django's `DecimalField(max_digits=9, decimal_places=6)` keeps them.
fn six_decimals(degrees: f64) -> f64 {
    (degrees * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_take_the_largest_exact_period() {
        let cases = [
            (Duration::from_secs(2 * 86_400), 2, "days"),
            (Duration::from_secs(90 * 60), 90, "minutes"),
            (Duration::from_secs(30), 30, "seconds"),
            (Duration::from_millis(1500), 1_500_000, "microseconds"),
        ];
        for (every, expected, period) in cases {
            let schedule = Schedule::from(Interval::new(every).expect("interval"));
            let django = DjangoSchedule::from_schedule(&schedule).expect("fits");
            assert_eq!(
                django,
                DjangoSchedule::Interval {
                    every: expected,
                    period: period.into()
                }
            );
            assert_eq!(django.to_schedule().expect("back"), schedule);
        }
        let nanos =
            Schedule::from(Interval::new(Duration::from_nanos(1_000_500)).expect("1.0005ms"));
        assert!(DjangoSchedule::from_schedule(&nanos).is_err());
        assert!(DjangoSchedule::Interval {
            every: 1,
            period: "fortnights".into()
        }
        .to_schedule()
        .is_err());
    }

    #[test]
    fn exact_last_runs_are_used_only_while_django_agrees() {
        let django = DateTime::from_timestamp_micros(1_767_225_600_123_456);
        assert_eq!(
            effective_last_run(django, Some(1_767_225_600_123_456_789)),
            Some(1_767_225_600_123_456_789)
        );
        assert_eq!(
            effective_last_run(django, Some(1_767_225_000_000_000_000)),
            Some(1_767_225_600_123_456_000),
            "edited on the Django side"
        );
        assert_eq!(effective_last_run(None, Some(5)), None, "cleared by Django");
    }

    #[test]
    fn urls_are_checked_and_passwords_hidden() {
        assert_eq!(
            redact("django+postgres://u:secret@h/db"),
            "django+postgres://u:***@h/db"
        );
        assert_eq!(
            split_schema("postgres://h/db?schema=s1&connect_timeout=3"),
            (
                "postgres://h/db?connect_timeout=3".into(),
                Some("s1".into())
            )
        );
    }

    #[tokio::test]
    async fn bad_urls_are_refused_before_connecting() {
        for url in [
            "postgres://h/db",
            "django+mysql://h/db",
            "django+postgres://h/db?schema=a;drop",
        ] {
            assert!(
                matches!(
                    DjangoScheduleStore::open_url(url).await,
                    Err(BeatError::InvalidUrl { .. })
                ),
                "{url}"
            );
        }
    }
}

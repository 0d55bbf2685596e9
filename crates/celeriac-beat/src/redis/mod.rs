//! Schedules in Redis (`redis://host:port/db`, feature `redis`), for beat processes on
//! several machines (like RedBeat), sharing the Redis a Celery deployment already has.
//!
//! # Keys
//!
//! Every key starts with kombu's `global_keyprefix` (`?global_keyprefix=P` in the URL)
//! followed by the hash tag `{celeriac-beat}`, so all of them live in one Redis
//! Cluster slot and every script's keys are in one slot. `<name>` is the entry's name:
//!
//! | Key | Type | Content |
//! |---|---|---|
//! | `P{celeriac-beat}:entry:<name>` | hash | `config` (the entry as JSON), `enabled`, `one_off` (`1`/`0`), `last_run`, `total`, `created`, `updated` |
//! | `P{celeriac-beat}:index` | sorted set | entry names, score 0 (listed by name) |
//! | `P{celeriac-beat}:changes` | string | the change marker: a counter `INCR`ed by every edit |
//! | `P{celeriac-beat}:runs:<name>` | hash | `<due>\|c` claimer, `<due>\|t` task id, `<due>\|ca` claimed at, `<due>\|l` lease end, `<due>\|s` sent at, `<due>\|a` attempts |
//! | `P{celeriac-beat}:run-index:<name>` | sorted set | the entry's run due times, score 0 |
//! | `P{celeriac-beat}:unsent` | sorted set | `<due>:<name>` of claimed, unpublished runs, scored by lease end (Unix ms) |
//!
//! Times in hashes are *sortable times*: Unix nanoseconds with the sign bit flipped,
//! written as 20 decimal digits, so comparing the strings compares the instants
//! exactly (Lua numbers are doubles and cannot hold nanoseconds).
//!
//! # Atomicity
//!
//! Every write is one Lua script (`src/redis/lua/*.lua`, the KEYS / ARGV / return
//! contract at the top of each): the claim checks `enabled` and `last_run < due` and
//! records the run in one script, so exactly one of any number of beats wins a run.
//! Taking over a stale run re-checks it in a script, so each goes to one beat.

use std::collections::HashMap;
use std::sync::Arc;

use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands, Script};
use async_trait::async_trait;
use celeriac_redis::RedisTarget;
use chrono::{DateTime, Utc};

use crate::entry::Entry;
use crate::store::{
    ChangeMarker, ClaimParams, FinishParams, ListParams, Run, RunsParams, ScheduleStore,
    TakeOverParams,
};
use crate::BeatError;

/// Published runs kept per entry.
const RUNS_KEPT: usize = 100;

/// The hash tag every key carries after the global key prefix.
pub const KEY_TAG: &str = "{celeriac-beat}";

/// The Lua scripts, one per operation (contracts at the top of each file).
pub mod scripts {
    /// Creates or replaces an entry, keeping its run state.
    pub const UPSERT: &str = include_str!("lua/upsert.lua");
    /// Enables or disables an entry.
    pub const SET_ENABLED: &str = include_str!("lua/set_enabled.lua");
    /// Deletes an entry and its runs.
    pub const REMOVE: &str = include_str!("lua/remove.lua");
    /// Claims one run for exactly one caller.
    pub const CLAIM: &str = include_str!("lua/claim.lua");
    /// Records a run as published by its claimer.
    pub const FINISH: &str = include_str!("lua/finish.lua");
    /// Hands one stale run to a new claimer.
    pub const TAKE_OVER: &str = include_str!("lua/take_over.lua");
}

/// Errors of the Redis store, wrapped in [`BeatError::Storage`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Redis failed or refused a command.
    #[error(transparent)]
    Redis(#[from] ::redis::RedisError),
    /// The URL or the connection failed.
    #[error(transparent)]
    Connect(#[from] celeriac_redis::RedisError),
    /// A stored value does not decode.
    #[error("stored entry {name:?} is unreadable: {reason}")]
    Corrupt {
        /// The entry.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An instant outside the years the store can hold (1678-2261).
    #[error("{0} is outside the years the Redis schedule store can hold (1678-2261)")]
    OutOfRange(DateTime<Utc>),
}

impl From<StoreError> for BeatError {
    fn from(error: StoreError) -> BeatError {
        BeatError::storage(error)
    }
}

/// Every key name of the store (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    base: String,
}

impl Keys {
    /// The keys under kombu's `global_keyprefix`.
    pub fn new(global_keyprefix: &str) -> Keys {
        Keys {
            base: format!("{global_keyprefix}{KEY_TAG}:"),
        }
    }

    /// The hash of one entry.
    pub fn entry(&self, name: &str) -> String {
        format!("{}entry:{name}", self.base)
    }

    /// The sorted set of entry names.
    pub fn index(&self) -> String {
        format!("{}index", self.base)
    }

    /// The change counter.
    pub fn changes(&self) -> String {
        format!("{}changes", self.base)
    }

    /// The hash of one entry's runs.
    pub fn runs(&self, name: &str) -> String {
        format!("{}runs:{name}", self.base)
    }

    /// The sorted set of one entry's run due times.
    pub fn run_index(&self, name: &str) -> String {
        format!("{}run-index:{name}", self.base)
    }

    /// The sorted set of unsent runs by lease end.
    pub fn unsent(&self) -> String {
        format!("{}unsent", self.base)
    }
}

/// The Redis schedule store. See the [module docs](self). Cheap to clone; clones
/// share one self-reconnecting connection.
#[derive(Clone)]
pub struct RedisScheduleStore {
    inner: Arc<Inner>,
}

struct Inner {
    target: RedisTarget,
    keys: Keys,
    conn: ConnectionManager,
    upsert: Script,
    set_enabled: Script,
    remove: Script,
    claim: Script,
    finish: Script,
    take_over: Script,
}

impl std::fmt::Debug for RedisScheduleStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisScheduleStore")
            .field("target", &self.inner.target.display)
            .finish_non_exhaustive()
    }
}

impl RedisScheduleStore {
    /// Connects to the Redis named by `url` (`redis://`, `rediss://`,
    /// `redis+socket://`, with `?global_keyprefix=P`). Fails when Redis does not
    /// answer within 5 s.
    pub async fn open_url(url: &str) -> Result<RedisScheduleStore, BeatError> {
        let target = RedisTarget::parse(url).map_err(|e| BeatError::InvalidUrl {
            url: celeriac_redis::redact(url),
            reason: e.to_string(),
        })?;
        let conn = celeriac_redis::connection::commands(
            &target,
            celeriac_redis::connection::Timeouts::default(),
        )
        .await
        .map_err(StoreError::from)?;
        Ok(RedisScheduleStore {
            inner: Arc::new(Inner {
                keys: Keys::new(&target.global_keyprefix),
                target,
                conn,
                upsert: Script::new(scripts::UPSERT),
                set_enabled: Script::new(scripts::SET_ENABLED),
                remove: Script::new(scripts::REMOVE),
                claim: Script::new(scripts::CLAIM),
                finish: Script::new(scripts::FINISH),
                take_over: Script::new(scripts::TAKE_OVER),
            }),
        })
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Reads entries by name (missing ones are left out).
    async fn read_entries(&self, names: &[String]) -> Result<Vec<Entry>, BeatError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for name in names {
            pipe.hgetall(self.inner.keys.entry(name));
        }
        let rows: Vec<HashMap<String, String>> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(StoreError::from)?;
        let mut entries = Vec::with_capacity(rows.len());
        for (name, row) in names.iter().zip(rows) {
            if !row.is_empty() {
                entries.push(read_entry(name, &row)?);
            }
        }
        Ok(entries)
    }

    /// The latest `limit` runs of one entry, newest first.
    async fn entry_runs(&self, name: &str, limit: usize) -> Result<Vec<Run>, BeatError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stop = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        let dues: Vec<String> = self
            .conn()
            .zrevrange(self.inner.keys.run_index(name), 0, stop)
            .await
            .map_err(StoreError::from)?;
        if dues.is_empty() {
            return Ok(Vec::new());
        }
        let mut fields = Vec::with_capacity(dues.len() * 6);
        for due in &dues {
            for suffix in ["c", "t", "ca", "l", "s", "a"] {
                fields.push(format!("{due}|{suffix}"));
            }
        }
        let values: Vec<Option<String>> = ::redis::cmd("HMGET")
            .arg(self.inner.keys.runs(name))
            .arg(&fields)
            .query_async(&mut self.conn())
            .await
            .map_err(StoreError::from)?;
        let mut runs = Vec::with_capacity(dues.len());
        for (due, chunk) in dues.iter().zip(values.chunks(6)) {
            let [claimer, task_id, claimed_at, lease_until, sent_at, attempts] = chunk else {
                continue;
            };
            let (Some(claimer), Some(task_id)) = (claimer, task_id) else {
                continue;
            };
            runs.push(Run {
                entry: name.to_string(),
                due_at: parse_time(name, due)?,
                claimer: claimer.clone(),
                task_id: task_id.clone(),
                claimed_at: parse_opt_time(name, claimed_at.as_deref())?
                    .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
                lease_until: parse_opt_time(name, lease_until.as_deref())?
                    .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
                sent_at: parse_opt_time(name, sent_at.as_deref())?,
                attempts: attempts
                    .as_deref()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(1),
            });
        }
        Ok(runs)
    }
}

#[async_trait]
impl ScheduleStore for RedisScheduleStore {
    async fn upsert(&self, entry: &Entry) -> Result<(), BeatError> {
        entry.validate()?;
        let now = Utc::now();
        let created = entry.created_at.unwrap_or(now);
        let mut config = entry.clone();
        config.last_run_at = None;
        config.total_run_count = 0;
        config.created_at = None;
        config.updated_at = None;
        let config =
            serde_json::to_string(&config).map_err(|e| BeatError::InvalidEntry(e.to_string()))?;
        let keys = &self.inner.keys;
        let _: i64 = self
            .inner
            .upsert
            .key(keys.entry(&entry.name))
            .key(keys.index())
            .key(keys.changes())
            .arg(&entry.name)
            .arg(config)
            .arg(flag(entry.enabled))
            .arg(flag(entry.one_off))
            .arg(sortable(now)?)
            .arg(sortable(created)?)
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }

    async fn get(&self, name: &str) -> Result<Option<Entry>, BeatError> {
        Ok(self
            .read_entries(&[name.to_string()])
            .await?
            .into_iter()
            .next())
    }

    async fn list(&self, params: &ListParams) -> Result<Vec<Entry>, BeatError> {
        let index = self.inner.keys.index();
        let names: Vec<String> = match &params.prefix {
            Some(prefix) if !prefix.is_empty() => {
                // Every name starting with `prefix` sorts between it and it + U+10FFFF.
                let max = format!("({prefix}\u{10FFFF}");
                self.conn()
                    .zrangebylex(index, format!("[{prefix}"), max)
                    .await
            }
            _ => self.conn().zrange(index, 0, -1).await,
        }
        .map_err(StoreError::from)?;
        let mut entries = self.read_entries(&names).await?;
        if let Some(prefix) = &params.prefix {
            entries.retain(|e| e.name.starts_with(prefix.as_str()));
        }
        if params.enabled_only {
            entries.retain(|e| e.enabled);
        }
        Ok(entries)
    }

    async fn remove(&self, name: &str) -> Result<bool, BeatError> {
        let keys = &self.inner.keys;
        let removed: i64 = self
            .inner
            .remove
            .key(keys.entry(name))
            .key(keys.index())
            .key(keys.runs(name))
            .key(keys.run_index(name))
            .key(keys.unsent())
            .key(keys.changes())
            .arg(name)
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::from)?;
        Ok(removed == 1)
    }

    async fn set_enabled(&self, name: &str, enabled: bool) -> Result<bool, BeatError> {
        let keys = &self.inner.keys;
        let found: i64 = self
            .inner
            .set_enabled
            .key(keys.entry(name))
            .key(keys.changes())
            .arg(flag(enabled))
            .arg(sortable(Utc::now())?)
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::from)?;
        Ok(found == 1)
    }

    async fn change_marker(&self) -> Result<ChangeMarker, BeatError> {
        let counter: Option<String> = self
            .conn()
            .get(self.inner.keys.changes())
            .await
            .map_err(StoreError::from)?;
        Ok(ChangeMarker(counter.unwrap_or_else(|| "0".into())))
    }

    async fn claim_run(&self, params: &ClaimParams) -> Result<bool, BeatError> {
        let keys = &self.inner.keys;
        let claimed: i64 = self
            .inner
            .claim
            .key(keys.entry(&params.entry))
            .key(keys.runs(&params.entry))
            .key(keys.run_index(&params.entry))
            .key(keys.unsent())
            .key(keys.changes())
            .arg(sortable(params.due_at)?)
            .arg(&params.claimer)
            .arg(&params.task_id)
            .arg(sortable(params.now)?)
            .arg(sortable(params.lease_until)?)
            .arg(params.lease_until.timestamp_millis())
            .arg(&params.entry)
            .arg(RUNS_KEPT)
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::from)?;
        Ok(claimed == 1)
    }

    async fn finish_run(&self, params: &FinishParams) -> Result<bool, BeatError> {
        let keys = &self.inner.keys;
        let finished: i64 = self
            .inner
            .finish
            .key(keys.runs(&params.entry))
            .key(keys.unsent())
            .arg(sortable(params.due_at)?)
            .arg(&params.claimer)
            .arg(sortable(params.sent_at)?)
            .arg(&params.entry)
            .invoke_async(&mut self.conn())
            .await
            .map_err(StoreError::from)?;
        Ok(finished == 1)
    }

    async fn take_over_stale(&self, params: &TakeOverParams) -> Result<Vec<Run>, BeatError> {
        let keys = &self.inner.keys;
        let limit = isize::try_from(params.limit).unwrap_or(isize::MAX);
        // Candidates by the millisecond score; the script checks the exact lease.
        let candidates: Vec<String> = self
            .conn()
            .zrangebyscore_limit(
                keys.unsent(),
                "-inf",
                params.now.timestamp_millis(),
                0,
                limit,
            )
            .await
            .map_err(StoreError::from)?;
        let now = sortable(params.now)?;
        let lease = sortable(params.lease_until)?;
        let mut runs = Vec::new();
        for member in candidates {
            let Some((due, name)) = member.split_once(':') else {
                continue;
            };
            let taken: Vec<Option<String>> = self
                .inner
                .take_over
                .key(keys.runs(name))
                .key(keys.unsent())
                .arg(due)
                .arg(&params.claimer)
                .arg(&now)
                .arg(&lease)
                .arg(params.lease_until.timestamp_millis())
                .arg(name)
                .invoke_async(&mut self.conn())
                .await
                .map_err(StoreError::from)?;
            let [Some(claimer), Some(task_id), claimed_at, lease_until, attempts] = &taken[..]
            else {
                continue;
            };
            runs.push(Run {
                entry: name.to_string(),
                due_at: parse_time(name, due)?,
                claimer: claimer.clone(),
                task_id: task_id.clone(),
                claimed_at: parse_opt_time(name, claimed_at.as_deref())?.unwrap_or(params.now),
                lease_until: parse_opt_time(name, lease_until.as_deref())?
                    .unwrap_or(params.lease_until),
                sent_at: None,
                attempts: attempts
                    .as_deref()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(2),
            });
        }
        runs.sort_by_key(|run| run.due_at);
        Ok(runs)
    }

    async fn runs(&self, params: &RunsParams) -> Result<Vec<Run>, BeatError> {
        match &params.entry {
            Some(name) => self.entry_runs(name, params.limit).await,
            None => {
                let names: Vec<String> = self
                    .conn()
                    .zrange(self.inner.keys.index(), 0, -1)
                    .await
                    .map_err(StoreError::from)?;
                let mut runs = Vec::new();
                for name in names {
                    runs.extend(self.entry_runs(&name, params.limit).await?);
                }
                runs.sort_by(|a, b| b.due_at.cmp(&a.due_at).then(a.entry.cmp(&b.entry)));
                runs.truncate(params.limit);
                Ok(runs)
            }
        }
    }

    fn describe(&self) -> String {
        self.inner.target.display.clone()
    }
}

/// Reads an entry from its hash.
fn read_entry(name: &str, row: &HashMap<String, String>) -> Result<Entry, BeatError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        name: name.to_string(),
        reason,
    };
    let config = row
        .get("config")
        .ok_or_else(|| corrupt("no config field".into()))?;
    let mut entry: Entry =
        serde_json::from_str(config).map_err(|e| corrupt(format!("config: {e}")))?;
    entry.name = name.to_string();
    entry.enabled = row.get("enabled").map(String::as_str) == Some("1");
    entry.one_off = row.get("one_off").map(String::as_str) == Some("1");
    entry.last_run_at = parse_opt_time(name, row.get("last_run").map(String::as_str))?;
    entry.total_run_count = row
        .get("total")
        .and_then(|t| t.parse().ok())
        .unwrap_or_default();
    entry.created_at = parse_opt_time(name, row.get("created").map(String::as_str))?;
    entry.updated_at = parse_opt_time(name, row.get("updated").map(String::as_str))?;
    Ok(entry)
}

fn flag(value: bool) -> &'static str {
    if value {
        "1"
    } else {
        "0"
    }
}

/// The sign bit flipped, so unsigned order is time order.
const SIGN: u64 = 1 << 63;

/// An instant as a sortable time: Unix nanoseconds, sign bit flipped, 20 digits.
pub fn sortable(at: DateTime<Utc>) -> Result<String, StoreError> {
    let ns = at.timestamp_nanos_opt().ok_or(StoreError::OutOfRange(at))?;
    Ok(format!("{:020}", (ns as u64) ^ SIGN))
}

/// The instant of a sortable time.
pub fn from_sortable(text: &str) -> Option<DateTime<Utc>> {
    if text.len() != 20 {
        return None;
    }
    let raw: u64 = text.parse().ok()?;
    Some(DateTime::from_timestamp_nanos((raw ^ SIGN) as i64))
}

fn parse_time(name: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    from_sortable(text).ok_or_else(|| StoreError::Corrupt {
        name: name.to_string(),
        reason: format!("{text:?} is not a sortable time"),
    })
}

fn parse_opt_time(name: &str, text: Option<&str>) -> Result<Option<DateTime<Utc>>, StoreError> {
    text.map(|t| parse_time(name, t)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sortable_times_order_like_instants_and_round_trip() {
        let times = [
            "1969-12-31T23:59:59.999999999Z",
            "1970-01-01T00:00:00Z",
            "2026-01-01T00:00:00.000000001Z",
            "2026-01-01T00:00:00.1Z",
            "2261-01-01T00:00:00Z",
        ]
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|d| d.with_timezone(&Utc))
                .unwrap_or_else(|e| panic!("{t}: {e}"))
        });
        let texts: Vec<String> = times
            .iter()
            .map(|t| sortable(*t).expect("in range"))
            .collect();
        for pair in texts.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?}");
        }
        for (time, text) in times.iter().zip(&texts) {
            assert_eq!(text.len(), 20);
            assert_eq!(from_sortable(text), Some(*time));
        }
        assert_eq!(from_sortable("12"), None);
    }

    #[test]
    fn keys_carry_the_prefix_and_one_hash_tag() {
        let keys = Keys::new("app1_");
        assert_eq!(keys.entry("tick"), "app1_{celeriac-beat}:entry:tick");
        assert_eq!(keys.index(), "app1_{celeriac-beat}:index");
        assert_eq!(keys.changes(), "app1_{celeriac-beat}:changes");
        assert_eq!(keys.runs("tick"), "app1_{celeriac-beat}:runs:tick");
        assert_eq!(
            keys.run_index("tick"),
            "app1_{celeriac-beat}:run-index:tick"
        );
        assert_eq!(keys.unsent(), "app1_{celeriac-beat}:unsent");
    }
}

//! The schedule store conformance suite: one test per behaviour of the
//! [`ScheduleStore`] contract, run by every implementation (SQLite now; Redis and the
//! django-celery-beat PostgreSQL store later).
//!
//! An implementation provides a [`StoreHarness`] and expands
//! [`schedule_store_conformance_tests!`](crate::schedule_store_conformance_tests) in
//! one of its integration test files:
//!
//! ```ignore
//! // tests/sqlite_conformance.rs
//! celeriac_beat::schedule_store_conformance_tests!(celeriac_beat::testing::SqliteHarness::new());
//! ```
//!
//! [`StoreHarness::store`] returns a new handle to the same store on every call (its
//! own connection), which is how the suite stands in for several beat processes.
//! Every test names its entries with a UUID prefix, so the tests run in parallel, also
//! against one shared store. Times are explicit instants (claims take `now` from the
//! caller), so nothing waits on the wall clock.
//!
//! The test functions are public so an implementation can also call single ones.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::entry::{CatchUp, Entry};
use crate::schedule::{Clocked, Crontab, Interval};
use crate::store::{
    ClaimParams, FinishParams, ListParams, RunsParams, ScheduleStore, TakeOverParams,
};
use crate::BeatError;

/// Builds handles to one schedule store for the conformance suite.
#[async_trait]
pub trait StoreHarness: Send + Sync {
    /// A new handle to the same store on every call (as another process would open
    /// it). Panics if the store cannot be opened.
    async fn store(&self) -> Arc<dyn ScheduleStore>;
}

/// A SQLite file in a temporary directory, deleted on drop.
#[cfg(feature = "sqlite")]
#[derive(Debug)]
pub struct SqliteHarness(celeriac_sqlite::testing::TempDatabase);

#[cfg(feature = "sqlite")]
impl SqliteHarness {
    /// A harness on a new, empty file. Panics if no temporary directory can be made.
    pub fn new() -> SqliteHarness {
        SqliteHarness(celeriac_sqlite::testing::TempDatabase::new("beat.db"))
    }

    /// The database file.
    pub fn path(&self) -> std::path::PathBuf {
        self.0.path()
    }
}

#[cfg(feature = "sqlite")]
impl Default for SqliteHarness {
    fn default() -> Self {
        SqliteHarness::new()
    }
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl StoreHarness for SqliteHarness {
    async fn store(&self) -> Arc<dyn ScheduleStore> {
        let store = crate::sqlite::SqliteScheduleStore::open(
            self.path(),
            crate::sqlite::SqliteStoreOptions::default(),
        )
        .await
        .expect("the SQLite harness opens its file");
        Arc::new(store)
    }
}

/// A Redis store under a key prefix of its own (`celeriac-test-<uuid>:`), so tests
/// run in parallel on one server. Its keys are deleted on drop.
#[cfg(feature = "redis")]
#[derive(Debug)]
pub struct RedisHarness {
    url: String,
}

#[cfg(feature = "redis")]
impl RedisHarness {
    /// A harness on `base_url` (`redis://127.0.0.1:6379/0`) with a fresh key prefix.
    pub fn new(base_url: &str) -> RedisHarness {
        let prefix = format!("celeriac-test-{}:", uuid::Uuid::new_v4().simple());
        let separator = if base_url.contains('?') { '&' } else { '?' };
        RedisHarness {
            url: format!("{base_url}{separator}global_keyprefix={prefix}"),
        }
    }

    /// The store URL, with its key prefix.
    pub fn url(&self) -> &str {
        &self.url
    }
}

#[cfg(feature = "redis")]
impl Drop for RedisHarness {
    fn drop(&mut self) {
        celeriac_redis::testing::delete_prefixed_keys(&self.url);
    }
}

#[cfg(feature = "redis")]
#[async_trait]
impl StoreHarness for RedisHarness {
    async fn store(&self) -> Arc<dyn ScheduleStore> {
        Arc::new(
            crate::redis::RedisScheduleStore::open_url(&self.url)
                .await
                .expect("the Redis harness connects"),
        )
    }
}

/// The PostgreSQL URL for service tests (`CELERIAC_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`) if a server answers there. Otherwise:
/// panics when `CELERIAC_REQUIRE_SERVICES=1`, or prints why the test is skipped and
/// returns `None`.
#[cfg(feature = "django")]
pub fn postgres_url_or_skip(test: &str) -> Option<String> {
    let url = std::env::var("CELERIAC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let answers = url
        .parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|config| {
            let host = match config.get_hosts().first()? {
                tokio_postgres::config::Host::Tcp(host) => host.clone(),
                #[allow(unreachable_patterns)]
                _ => return None,
            };
            let port = config.get_ports().first().copied().unwrap_or(5432);
            std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                .ok()?
                .next()
        })
        .is_some_and(|address| {
            std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
        });
    if answers {
        return Some(url);
    }
    let required = std::env::var("CELERIAC_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: PostgreSQL does not answer at {url} and CELERIAC_REQUIRE_SERVICES=1"
    );
    eprintln!(
        "skipped {test}: PostgreSQL does not answer at {url} (set CELERIAC_TEST_POSTGRES_URL)"
    );
    None
}

/// django-celery-beat's tables as its migrations create them on PostgreSQL
/// (`tests/fixtures/django_celery_beat.sql`, dumped after a real `migrate`).
#[cfg(feature = "django")]
pub const DJANGO_CELERY_BEAT_TABLES: &str =
    include_str!("../tests/fixtures/django_celery_beat.sql");

/// A new schema in the test PostgreSQL database holding django-celery-beat's tables
/// ([`DJANGO_CELERY_BEAT_TABLES`]); dropped with its tables on drop.
#[cfg(feature = "django")]
#[derive(Debug)]
pub struct DjangoHarness {
    base_url: String,
    schema: String,
}

#[cfg(feature = "django")]
impl DjangoHarness {
    /// Creates the schema and the tables on `base_url` (`postgres://...`). Panics
    /// when PostgreSQL refuses.
    pub async fn new(base_url: &str) -> DjangoHarness {
        let schema = format!("celeriac_test_{}", uuid::Uuid::new_v4().simple());
        let (client, connection) = tokio_postgres::connect(base_url, tokio_postgres::NoTls)
            .await
            .expect("the Django harness connects");
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\";\n{DJANGO_CELERY_BEAT_TABLES}"
            ))
            .await
            .expect("the Django harness creates django-celery-beat's tables");
        drop(client);
        let _ = driver.await;
        DjangoHarness {
            base_url: base_url.to_string(),
            schema,
        }
    }

    /// The store URL: `django+<base>?schema=<schema>`.
    pub fn url(&self) -> String {
        let separator = if self.base_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("django+{}{separator}schema={}", self.base_url, self.schema)
    }

    /// The private schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }
}

#[cfg(feature = "django")]
impl Drop for DjangoHarness {
    fn drop(&mut self) {
        let url = self.base_url.clone();
        let sql = format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        );
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    let driver = tokio::spawn(connection);
                    let _ = client.batch_execute(&sql).await;
                    drop(client);
                    let _ = driver.await;
                }
            });
        })
        .join();
    }
}

#[cfg(feature = "django")]
#[async_trait]
impl StoreHarness for DjangoHarness {
    async fn store(&self) -> Arc<dyn ScheduleStore> {
        Arc::new(
            crate::django::DjangoScheduleStore::open_url(&self.url())
                .await
                .expect("the Django harness connects"),
        )
    }
}

/// Expands to one `#[tokio::test]` per conformance behaviour. The argument is an
/// expression building a [`StoreHarness`]; it is evaluated once per test. The calling
/// crate needs `tokio` (with `macros` and `rt-multi-thread`).
#[macro_export]
macro_rules! schedule_store_conformance_tests {
    ($harness:expr) => {
        $crate::schedule_store_conformance_tests!(@tests $harness;
            upsert_and_get_round_trip_every_field,
            upsert_replaces_configuration_and_keeps_run_state,
            list_orders_by_name_and_filters,
            remove_and_set_enabled_report_whether_the_entry_exists,
            change_marker_moves_on_every_edit_and_only_then,
            claim_succeeds_exactly_once_under_concurrent_claimers,
            claims_advance_run_state_and_refuse_older_due_times,
            disabled_entries_are_not_due_and_cannot_be_claimed,
            one_off_entries_are_disabled_by_their_run,
            unsent_runs_are_taken_over_once_after_their_lease,
            finish_run_only_by_the_current_claimer,
            runs_are_listed_newest_first_and_removed_with_their_entry,
            catch_up_policies_with_stored_run_state,
            invalid_entries_are_refused,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $harness;
                ::tokio::time::timeout(
                    ::std::time::Duration::from_secs(60),
                    $crate::testing::$name(&harness),
                )
                .await
                .expect(concat!(stringify!($name), " finishes within 60 s"));
            }
        )*
    };
}

/// A name prefix no other test uses.
fn unique(label: &str) -> String {
    format!("conformance-{label}-{}", uuid::Uuid::new_v4().simple())
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad test time {text:?}: {e}"))
        .with_timezone(&Utc)
}

/// An entry due every minute on the minute from 2026-01-01 (created then).
fn minutely(name: &str) -> Entry {
    Entry::new(
        name,
        "tests.tick",
        Interval::new(Duration::from_secs(60))
            .expect("1m")
            .anchored(at("2026-01-01T00:00:00Z")),
    )
    .created_at(at("2026-01-01T00:00:00Z"))
}

fn claim(entry: &str, due: DateTime<Utc>, claimer: &str) -> ClaimParams {
    ClaimParams::new(
        entry,
        due,
        claimer,
        format!("task-{claimer}-{}", due.timestamp_nanos_opt().unwrap_or(0)),
        due,
        due + chrono::Duration::seconds(30),
    )
}

async fn get(store: &Arc<dyn ScheduleStore>, name: &str) -> Entry {
    store
        .get(name)
        .await
        .expect("get succeeds")
        .unwrap_or_else(|| panic!("entry {name} exists"))
}

async fn marker(store: &Arc<dyn ScheduleStore>) -> crate::ChangeMarker {
    store.change_marker().await.expect("change marker")
}

/// Every configuration field survives upsert and get; the store fills `created_at`
/// and `updated_at` and starts the run state empty.
pub async fn upsert_and_get_round_trip_every_field(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    let name = unique("fields");
    let mut entry = Entry::new(
        name.clone(),
        "proj.tasks.report",
        Crontab::parse("*/5 9-17 * * mon-fri")
            .and_then(|c| c.in_timezone("Asia/Seoul"))
            .expect("crontab"),
    )
    .args(vec![json!(1), json!("two"), json!({"three": [3]})])
    .queue("reports")
    .expires(Duration::from_millis(90_500))
    .catch_up(CatchUp::All)
    .start_time(at("2026-02-01T00:00:00Z"))
    .description("weekday reports, Seoul office hours");
    entry.kwargs.insert("verbose".into(), json!(true));
    entry.exchange = Some("reports-x".into());
    entry.routing_key = Some("reports.daily".into());
    entry.priority = Some(7);
    entry.headers.insert("origin".into(), json!("conformance"));
    entry.one_off = true;
    entry.end_time = Some(at("2027-01-01T00:00:00Z"));
    store.upsert(&entry).await.expect("upsert");

    let stored = get(&store, &name).await;
    assert!(stored.created_at.is_some() && stored.updated_at.is_some());
    assert_eq!(stored.last_run_at, None);
    assert_eq!(stored.total_run_count, 0);
    let mut expected = entry.clone();
    expected.created_at = stored.created_at;
    expected.updated_at = stored.updated_at;
    assert_eq!(stored, expected);

    let other = harness.store().await;
    assert_eq!(
        get(&other, &name).await,
        stored,
        "visible to another handle"
    );
    assert!(store
        .get(&unique("missing"))
        .await
        .expect("get succeeds")
        .is_none());

    // Each schedule kind round-trips.
    let interval = Entry::new(
        unique("interval"),
        "t",
        Interval::new(Duration::from_millis(1500)).expect("1.5s"),
    );
    let clocked = Entry::new(
        unique("clocked"),
        "t",
        Clocked::new(at("2026-05-01T12:00:00.123456789Z")),
    );
    for e in [interval, clocked] {
        store.upsert(&e).await.expect("upsert");
        assert_eq!(get(&store, &e.name).await.schedule, e.schedule);
    }
}

/// A second upsert replaces the configuration but keeps `last_run_at`,
/// `total_run_count` and `created_at`.
pub async fn upsert_replaces_configuration_and_keeps_run_state(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    let name = unique("replace");
    store.upsert(&minutely(&name)).await.expect("upsert");
    let due = at("2026-01-01T00:01:00Z");
    assert!(store
        .claim_run(&claim(&name, due, "a"))
        .await
        .expect("claim"));
    let before = get(&store, &name).await;

    let mut edited = minutely(&name).queue("elsewhere");
    edited.task = "tests.tock".into();
    edited.created_at = Some(at("2030-01-01T00:00:00Z"));
    edited.last_run_at = None;
    edited.total_run_count = 0;
    store.upsert(&edited).await.expect("upsert again");
    let after = get(&store, &name).await;
    assert_eq!(after.task, "tests.tock");
    assert_eq!(after.queue.as_deref(), Some("elsewhere"));
    assert_eq!(after.last_run_at, Some(due), "run state kept");
    assert_eq!(after.total_run_count, 1);
    assert_eq!(after.created_at, before.created_at, "creation time kept");
}

/// `list` returns entries by name; `enabled_only` and `prefix` filter.
pub async fn list_orders_by_name_and_filters(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    let prefix = unique("list");
    for suffix in ["c", "a", "b"] {
        store
            .upsert(&minutely(&format!("{prefix}-{suffix}")))
            .await
            .expect("upsert");
    }
    store
        .upsert(&minutely(&format!("{prefix}-d")).enabled(false))
        .await
        .expect("upsert");
    let names = |entries: Vec<Entry>| -> Vec<String> {
        entries
            .into_iter()
            .map(|e| e.name)
            .filter(|n| n.starts_with(&prefix))
            .collect()
    };
    let all = names(store.list(&ListParams::all()).await.expect("list"));
    assert_eq!(
        all,
        ["a", "b", "c", "d"]
            .map(|s| format!("{prefix}-{s}"))
            .to_vec()
    );
    let enabled = names(
        store
            .list(&ListParams::all().enabled_only())
            .await
            .expect("list"),
    );
    assert_eq!(
        enabled,
        ["a", "b", "c"].map(|s| format!("{prefix}-{s}")).to_vec()
    );
    let prefixed = store
        .list(&ListParams::all().prefix(format!("{prefix}-b")))
        .await
        .expect("list");
    assert_eq!(prefixed.len(), 1);
    assert_eq!(prefixed[0].name, format!("{prefix}-b"));
}

/// `remove` and `set_enabled` return whether the entry exists; removal is final.
pub async fn remove_and_set_enabled_report_whether_the_entry_exists(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    let name = unique("remove");
    store.upsert(&minutely(&name)).await.expect("upsert");
    assert!(store.set_enabled(&name, false).await.expect("disable"));
    assert!(!get(&store, &name).await.enabled);
    assert!(store.set_enabled(&name, true).await.expect("enable"));
    assert!(get(&store, &name).await.enabled);
    assert!(store.remove(&name).await.expect("remove"));
    assert!(!store.remove(&name).await.expect("remove again"));
    assert!(store.get(&name).await.expect("get").is_none());
    assert!(!store
        .set_enabled(&name, true)
        .await
        .expect("enable missing"));
}

/// The change marker moves on upsert, enable / disable and remove (seen from another
/// handle), and not on reads, claims or run bookkeeping.
pub async fn change_marker_moves_on_every_edit_and_only_then(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    let watcher = harness.store().await;
    let name = unique("marker");
    let mut last = marker(&watcher).await;
    let mut moved = |what: &str, now: crate::ChangeMarker| {
        assert_ne!(now, last, "the change marker moves on {what}");
        last = now;
    };
    store.upsert(&minutely(&name)).await.expect("upsert");
    moved("insert", marker(&watcher).await);
    store
        .upsert(&minutely(&name).queue("q2"))
        .await
        .expect("update");
    moved("update", marker(&watcher).await);
    store.set_enabled(&name, false).await.expect("disable");
    moved("disable", marker(&watcher).await);
    store.set_enabled(&name, true).await.expect("enable");
    moved("enable", marker(&watcher).await);

    let quiet = marker(&watcher).await;
    store.get(&name).await.expect("get");
    store.list(&ListParams::all()).await.expect("list");
    let due = at("2026-01-01T00:01:00Z");
    assert!(store
        .claim_run(&claim(&name, due, "a"))
        .await
        .expect("claim"));
    store
        .finish_run(&FinishParams::new(name.clone(), due, "a", due))
        .await
        .expect("finish");
    store
        .runs(&RunsParams::of(name.clone(), 10))
        .await
        .expect("runs");
    assert_eq!(
        marker(&watcher).await,
        quiet,
        "reads, claims and run bookkeeping leave the marker alone"
    );

    store.remove(&name).await.expect("remove");
    moved("remove", marker(&watcher).await);
}

/// Eight claimers on eight handles race for the same run, twenty rounds: exactly one
/// wins each round, and the entry's run count equals the number of rounds.
pub async fn claim_succeeds_exactly_once_under_concurrent_claimers(harness: &dyn StoreHarness) {
    const CLAIMERS: usize = 8;
    const ROUNDS: usize = 20;
    let name = unique("race");
    let mut stores = Vec::with_capacity(CLAIMERS);
    for _ in 0..CLAIMERS {
        stores.push(harness.store().await);
    }
    stores[0].upsert(&minutely(&name)).await.expect("upsert");
    for round in 0..ROUNDS {
        let due = at("2026-01-01T00:00:00Z") + chrono::Duration::minutes(round as i64 + 1);
        let start = Arc::new(tokio::sync::Barrier::new(CLAIMERS));
        let attempts: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(i, store)| {
                let store = Arc::clone(store);
                let start = Arc::clone(&start);
                let params = claim(&name, due, &format!("claimer-{i}"));
                tokio::spawn(async move {
                    start.wait().await;
                    (i, store.claim_run(&params).await.expect("claim succeeds"))
                })
            })
            .collect();
        let mut winners = Vec::new();
        for attempt in attempts {
            let (i, won) = attempt.await.expect("claimer task");
            if won {
                winners.push(i);
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one of {CLAIMERS} claimers wins, got {winners:?}"
        );
        let runs = stores[0]
            .runs(&RunsParams::of(name.clone(), 1))
            .await
            .expect("runs");
        assert_eq!(runs[0].due_at, due);
        assert_eq!(runs[0].claimer, format!("claimer-{}", winners[0]));
    }
    let entry = get(&stores[0], &name).await;
    assert_eq!(entry.total_run_count, ROUNDS as u64);
    assert_eq!(
        entry.last_run_at,
        Some(at("2026-01-01T00:00:00Z") + chrono::Duration::minutes(ROUNDS as i64))
    );
}

/// A claim sets `last_run_at` to its due time and counts the run; a due time at or
/// before `last_run_at` is refused (also from a beat that has not seen the newer
/// claim yet); an unknown entry cannot be claimed.
pub async fn claims_advance_run_state_and_refuse_older_due_times(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    let stale_beat = harness.store().await;
    let name = unique("advance");
    store.upsert(&minutely(&name)).await.expect("upsert");
    let first = at("2026-01-01T00:01:00Z");
    let third = at("2026-01-01T00:03:00Z");
    assert!(store
        .claim_run(&claim(&name, first, "a"))
        .await
        .expect("claim"));
    assert!(store
        .claim_run(&claim(&name, third, "a"))
        .await
        .expect("claim"));
    let entry = get(&store, &name).await;
    assert_eq!((entry.last_run_at, entry.total_run_count), (Some(third), 2));
    for older in [first, at("2026-01-01T00:02:00Z"), third] {
        assert!(
            !stale_beat
                .claim_run(&claim(&name, older, "b"))
                .await
                .expect("claim"),
            "{older} is not after the last run"
        );
    }
    assert_eq!(get(&store, &name).await.total_run_count, 2);
    assert!(!store
        .claim_run(&claim(&unique("unknown"), first, "a"))
        .await
        .expect("claim of an unknown entry"));
}

/// A disabled entry has no due runs and its runs cannot be claimed; enabled again,
/// it can.
pub async fn disabled_entries_are_not_due_and_cannot_be_claimed(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    let name = unique("disabled");
    store
        .upsert(&minutely(&name).enabled(false))
        .await
        .expect("upsert");
    let due = at("2026-01-01T00:01:00Z");
    let entry = get(&store, &name).await;
    assert!(entry
        .due_runs(at("2026-01-01T00:10:00Z"), Duration::from_secs(5), 100)
        .is_empty());
    assert!(!store
        .claim_run(&claim(&name, due, "a"))
        .await
        .expect("claim"));
    assert!(store.set_enabled(&name, true).await.expect("enable"));
    assert!(store
        .claim_run(&claim(&name, due, "a"))
        .await
        .expect("claim"));
}

/// A one-off entry is disabled in the transaction of its first claim (the change
/// marker moves), so its next due time cannot be claimed.
pub async fn one_off_entries_are_disabled_by_their_run(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    let name = unique("one-off");
    store
        .upsert(&minutely(&name).one_off(true))
        .await
        .expect("upsert");
    let before = marker(&store).await;
    assert!(store
        .claim_run(&claim(&name, at("2026-01-01T00:01:00Z"), "a"))
        .await
        .expect("claim"));
    let entry = get(&store, &name).await;
    assert!(!entry.enabled, "disabled by its run");
    assert_eq!(entry.total_run_count, 1);
    assert_ne!(marker(&store).await, before, "beats reload the entry");
    assert!(!store
        .claim_run(&claim(&name, at("2026-01-01T00:02:00Z"), "a"))
        .await
        .expect("claim"));

    let clocked = unique("clocked");
    let when = at("2026-03-01T09:00:00Z");
    store
        .upsert(&Entry::new(clocked.clone(), "t", Clocked::new(when)).one_off(true))
        .await
        .expect("upsert");
    let entry = get(&store, &clocked).await;
    assert_eq!(
        entry.due_runs(
            when + chrono::Duration::seconds(1),
            Duration::from_secs(5),
            10
        ),
        vec![when]
    );
    assert!(store
        .claim_run(&claim(&clocked, when, "a"))
        .await
        .expect("claim"));
    let entry = get(&store, &clocked).await;
    assert!(!entry.enabled);
    assert_eq!(
        entry.next_due(when + chrono::Duration::days(1), Duration::from_secs(5)),
        None
    );
}

/// A run claimed and never finished is handed, once its lease ended, to exactly one
/// of several concurrent takers, with its original task id; finished runs and runs
/// within their lease are never taken over.
pub async fn unsent_runs_are_taken_over_once_after_their_lease(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    let name = unique("take-over");
    store.upsert(&minutely(&name)).await.expect("upsert");
    let due = at("2026-01-01T00:01:00Z");
    let params = claim(&name, due, "dead-beat");
    assert!(store.claim_run(&params).await.expect("claim"));
    let finished_due = at("2026-01-01T00:02:00Z");
    assert!(store
        .claim_run(&claim(&name, finished_due, "live-beat"))
        .await
        .expect("claim"));
    assert!(store
        .finish_run(&FinishParams::new(
            name.clone(),
            finished_due,
            "live-beat",
            finished_due
        ))
        .await
        .expect("finish"));

    let mine = |runs: Vec<crate::Run>| -> Vec<crate::Run> {
        runs.into_iter().filter(|r| r.entry == name).collect()
    };
    // Within the lease: nothing to take over.
    let early = store
        .take_over_stale(&TakeOverParams::new(
            "taker",
            params.lease_until - chrono::Duration::seconds(1),
            params.lease_until + chrono::Duration::seconds(30),
            100,
        ))
        .await
        .expect("take over");
    assert!(mine(early).is_empty(), "the lease still holds");

    // After it: exactly one of eight concurrent takers gets it.
    let after = params.lease_until + chrono::Duration::seconds(1);
    let mut takers = Vec::new();
    for i in 0..8 {
        let store = harness.store().await;
        takers.push(tokio::spawn(async move {
            let taken = store
                .take_over_stale(&TakeOverParams::new(
                    format!("taker-{i}"),
                    after,
                    after + chrono::Duration::seconds(30),
                    100,
                ))
                .await
                .expect("take over");
            (i, taken)
        }));
    }
    let mut taken = Vec::new();
    for taker in takers {
        let (i, runs) = taker.await.expect("taker task");
        for run in mine(runs) {
            taken.push((i, run));
        }
    }
    assert_eq!(taken.len(), 1, "taken over exactly once: {taken:?}");
    let (taker, run) = &taken[0];
    assert_eq!(run.due_at, due);
    assert_eq!(run.task_id, params.task_id, "the original task id is kept");
    assert_eq!(run.claimer, format!("taker-{taker}"));
    assert_eq!(run.attempts, 2);
    assert_eq!(run.sent_at, None);
    // The new claimer finishes it; it is never taken over again.
    assert!(store
        .finish_run(&FinishParams::new(
            name.clone(),
            due,
            format!("taker-{taker}"),
            after
        ))
        .await
        .expect("finish"));
    let later = store
        .take_over_stale(&TakeOverParams::new(
            "late",
            after + chrono::Duration::days(1),
            after + chrono::Duration::days(2),
            100,
        ))
        .await
        .expect("take over");
    assert!(mine(later).is_empty());
}

/// `finish_run` succeeds only for the run's current claimer, once.
pub async fn finish_run_only_by_the_current_claimer(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    let name = unique("finish");
    store.upsert(&minutely(&name)).await.expect("upsert");
    let due = at("2026-01-01T00:01:00Z");
    assert!(store
        .claim_run(&claim(&name, due, "owner"))
        .await
        .expect("claim"));
    let finish = |claimer: &str| FinishParams::new(name.clone(), due, claimer, due);
    assert!(!store
        .finish_run(&finish("someone-else"))
        .await
        .expect("finish"));
    assert!(store.finish_run(&finish("owner")).await.expect("finish"));
    assert!(
        !store.finish_run(&finish("owner")).await.expect("again"),
        "already finished"
    );
    let runs = store
        .runs(&RunsParams::of(name.clone(), 10))
        .await
        .expect("runs");
    assert_eq!(runs[0].sent_at, Some(due));
    assert!(!store
        .finish_run(&FinishParams::new(
            name.clone(),
            at("2026-01-01T00:09:00Z"),
            "owner",
            due
        ))
        .await
        .expect("finish of an unknown run"));
}

/// `runs` lists newest first, per entry or for all, within the limit; removing an
/// entry removes its runs.
pub async fn runs_are_listed_newest_first_and_removed_with_their_entry(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    let name = unique("runs");
    store.upsert(&minutely(&name)).await.expect("upsert");
    let mut dues = Vec::new();
    for minute in 1..=5 {
        let due = at("2026-01-01T00:00:00Z") + chrono::Duration::minutes(minute);
        assert!(store
            .claim_run(&claim(&name, due, "a"))
            .await
            .expect("claim"));
        dues.push(due);
    }
    let runs = store
        .runs(&RunsParams::of(name.clone(), 3))
        .await
        .expect("runs");
    let listed: Vec<_> = runs.iter().map(|r| r.due_at).collect();
    assert_eq!(listed, vec![dues[4], dues[3], dues[2]]);
    assert!(runs.iter().all(|r| r.entry == name && r.claimer == "a"));
    let all = store.runs(&RunsParams::default()).await.expect("runs");
    assert!(all.iter().filter(|r| r.entry == name).count() >= 5);
    assert!(store.remove(&name).await.expect("remove"));
    assert!(store
        .runs(&RunsParams::of(name.clone(), 10))
        .await
        .expect("runs")
        .is_empty());
    // A new entry of the same name starts afresh.
    store.upsert(&minutely(&name)).await.expect("upsert");
    assert!(store
        .claim_run(&claim(&name, dues[0], "a"))
        .await
        .expect("claim"));
}

/// The catch-up policy is stored, and with the run state a store keeps, a beat back
/// after downtime sends one run (`once`), every run (`all`) or none (`skip`) of the
/// missed due times; claiming them leaves nothing due.
pub async fn catch_up_policies_with_stored_run_state(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    let grace = Duration::from_secs(5);
    // Last run at 00:01; beat is back at 00:10:30: 00:02 .. 00:10 were missed.
    let back = at("2026-01-01T00:10:30Z");
    for (policy, expected_runs) in [(CatchUp::Once, 1), (CatchUp::All, 9), (CatchUp::Skip, 0)] {
        let name = unique(&format!("catch-up-{policy}"));
        store
            .upsert(&minutely(&name).catch_up(policy))
            .await
            .expect("upsert");
        assert!(store
            .claim_run(&claim(&name, at("2026-01-01T00:01:00Z"), "before-downtime"))
            .await
            .expect("claim"));
        let entry = get(&store, &name).await;
        assert_eq!(entry.catch_up, policy);
        let due = entry.due_runs(back, grace, 100);
        assert_eq!(due.len(), expected_runs, "{policy}: {due:?}");
        if policy == CatchUp::Once {
            assert_eq!(
                due,
                vec![at("2026-01-01T00:10:00Z")],
                "the latest missed run"
            );
        }
        for d in &due {
            assert!(store
                .claim_run(&claim(&name, *d, "after-downtime"))
                .await
                .expect("claim"));
        }
        let entry = get(&store, &name).await;
        assert!(
            entry.due_runs(back, grace, 100).is_empty(),
            "{policy}: caught up"
        );
        assert_eq!(
            entry.next_due(back, grace),
            Some(at("2026-01-01T00:11:00Z")),
            "{policy}: the next run is the next future due time"
        );
        assert_eq!(entry.total_run_count, 1 + expected_runs as u64);
    }
}

/// Entries without a name or task, or ending before they start, are refused with
/// [`BeatError::InvalidEntry`], and nothing is stored.
pub async fn invalid_entries_are_refused(harness: &dyn StoreHarness) {
    let store = harness.store().await;
    let before = marker(&store).await;
    let mut no_task = minutely(&unique("no-task"));
    no_task.task = String::new();
    let mut backwards = minutely(&unique("backwards"));
    backwards.start_time = Some(at("2026-02-01T00:00:00Z"));
    backwards.end_time = Some(at("2026-01-01T00:00:00Z"));
    for bad in [minutely(""), no_task, backwards] {
        let result = store.upsert(&bad).await;
        assert!(
            matches!(result, Err(BeatError::InvalidEntry(_))),
            "{:?}: {result:?}",
            bad.name
        );
        if !bad.name.is_empty() {
            assert!(store.get(&bad.name).await.expect("get").is_none());
        }
    }
    assert_eq!(marker(&store).await, before, "nothing changed");
}

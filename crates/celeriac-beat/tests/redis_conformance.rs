//! The schedule store conformance suite against Redis (skipped with a printed reason
//! when Redis does not answer; failed instead with `CELERIAC_REQUIRE_SERVICES=1`),
//! plus the Redis key layout.
#![cfg(feature = "redis")]

use celeriac_beat::redis::{from_sortable, RedisScheduleStore};
use celeriac_beat::testing::{RedisHarness, StoreHarness};
use celeriac_beat::{ClaimParams, Entry, FinishParams, Interval, ScheduleStore};
use celeriac_redis::testing::redis_url_or_skip;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;

/// Expands the suite with a harness that skips each test when Redis is absent.
macro_rules! redis_conformance {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(url) = redis_url_or_skip(stringify!($name)) else { return };
                let harness = RedisHarness::new(&url);
                tokio::time::timeout(
                    std::time::Duration::from_secs(60),
                    celeriac_beat::testing::$name(&harness),
                )
                .await
                .expect(concat!(stringify!($name), " finishes within 60 s"));
            }
        )*
    };
}

redis_conformance!(
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

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("test time")
        .with_timezone(&Utc)
}

/// The documented keys hold what the module docs say after an upsert, a claim and a
/// finish; removing the entry leaves no key behind but the change counter and index.
#[tokio::test]
async fn scripts_leave_the_documented_keys() {
    let Some(url) = redis_url_or_skip("scripts_leave_the_documented_keys") else {
        return;
    };
    let harness = RedisHarness::new(&url);
    let store = RedisScheduleStore::open_url(harness.url())
        .await
        .expect("connect");
    let keys = store.keys().clone();
    let every = Interval::new(std::time::Duration::from_secs(60)).expect("1m");
    store
        .upsert(&Entry::new("tick", "proj.tick", every).created_at(at("2026-01-01T00:00:00Z")))
        .await
        .expect("upsert");
    let due = at("2026-01-01T00:01:00Z");
    let claim = ClaimParams::new(
        "tick",
        due,
        "beat-a",
        "task-1",
        due,
        due + chrono::Duration::seconds(30),
    );
    assert!(store.claim_run(&claim).await.expect("claim"));

    let client = redis::Client::open(
        celeriac_redis::RedisTarget::parse(harness.url())
            .expect("url")
            .client_url,
    )
    .expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("inspect");
    let entry: std::collections::HashMap<String, String> =
        conn.hgetall(keys.entry("tick")).await.expect("entry hash");
    assert_eq!(entry["enabled"], "1");
    assert_eq!(entry["total"], "1");
    assert_eq!(from_sortable(&entry["last_run"]), Some(due));
    assert_eq!(
        from_sortable(&entry["created"]),
        Some(at("2026-01-01T00:00:00Z"))
    );
    let config: serde_json::Value = serde_json::from_str(&entry["config"]).expect("config JSON");
    assert_eq!(config["task"], "proj.tick");
    let names: Vec<String> = conn.zrange(keys.index(), 0, -1).await.expect("index");
    assert_eq!(names, vec!["tick".to_string()]);
    let unsent: Vec<(String, i64)> = conn
        .zrange_withscores(keys.unsent(), 0, -1)
        .await
        .expect("unsent");
    let due_text = celeriac_beat::redis::sortable(due).expect("due");
    assert_eq!(
        unsent,
        vec![(
            format!("{due_text}:tick"),
            claim.lease_until.timestamp_millis()
        )]
    );
    let runs: std::collections::HashMap<String, String> =
        conn.hgetall(keys.runs("tick")).await.expect("runs hash");
    assert_eq!(runs[&format!("{due_text}|c")], "beat-a");
    assert_eq!(runs[&format!("{due_text}|t")], "task-1");
    assert!(!runs.contains_key(&format!("{due_text}|s")));

    assert!(store
        .finish_run(&FinishParams::new("tick", due, "beat-a", due))
        .await
        .expect("finish"));
    let unsent: i64 = conn.zcard(keys.unsent()).await.expect("unsent");
    assert_eq!(unsent, 0, "a published run leaves the unsent index");
    let marker_before: i64 = conn.get(keys.changes()).await.expect("counter");
    assert!(store.remove("tick").await.expect("remove"));
    let marker_after: i64 = conn.get(keys.changes()).await.expect("counter");
    assert_eq!(marker_after, marker_before + 1);
    for key in [
        keys.entry("tick"),
        keys.runs("tick"),
        keys.run_index("tick"),
    ] {
        let exists: bool = conn.exists(&key).await.expect("exists");
        assert!(!exists, "{key} is deleted with its entry");
    }
}

/// `connect` dispatches redis:// URLs to this store.
#[tokio::test]
async fn connect_opens_redis_urls() {
    let Some(url) = redis_url_or_skip("connect_opens_redis_urls") else {
        return;
    };
    let harness = RedisHarness::new(&url);
    let store = celeriac_beat::connect(harness.url()).await.expect("redis");
    assert!(
        store.describe().starts_with("redis://"),
        "{}",
        store.describe()
    );
    let other = harness.store().await;
    assert_eq!(
        store.change_marker().await.expect("marker"),
        other.change_marker().await.expect("marker")
    );
}

//! The lock manager conformance suite against PostgreSQL (each test in a schema of
//! its own, skipped with a printed reason when PostgreSQL does not answer), plus
//! PostgreSQL-only checks: the documented tables, and surviving a dropped
//! connection.

use std::time::Duration;

use celeriac_lock::postgres::PostgresLockManager;
use celeriac_lock::testing::PostgresHarness;
use celeriac_lock::{AcquireParams, LockManager};

celeriac_lock::lock_conformance_tests!(optional PostgresHarness::connect_or_skip);

async fn raw(harness: &PostgresHarness) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(harness.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn locks_live_in_the_documented_tables() {
    let Some(harness) = PostgresHarness::connect_or_skip("postgres_documented_tables") else {
        return;
    };
    let manager = PostgresLockManager::open_url(&harness.store_url())
        .await
        .expect("open");
    let _again = PostgresLockManager::open_url(&harness.store_url())
        .await
        .expect("reopen");
    let alias = harness
        .store_url()
        .replacen("postgres://", "postgresql://", 1);
    let dispatched = celeriac_lock::connect(&alias)
        .await
        .expect("connect dispatches postgresql:// to PostgreSQL");
    assert!(
        dispatched.describe().contains(harness.schema()),
        "{}",
        dispatched.describe()
    );
    let lease = manager
        .acquire(&AcquireParams::new(
            "single:billing.charge",
            Duration::from_secs(30),
            "w1 pid=7",
        ))
        .await
        .expect("acquire")
        .expect("free");
    let client = raw(&harness).await;
    let schema = harness.schema();
    let row = client
        .query_one(
            &format!("SELECT key, token, owner, fencing, expires_at > now() FROM \"{schema}\".celeriac_locks"),
            &[],
        )
        .await
        .expect("operators can read the locks with SQL");
    assert_eq!(row.get::<_, String>(0), "single:billing.charge");
    assert_eq!(row.get::<_, String>(1), lease.token);
    assert_eq!(row.get::<_, String>(2), "w1 pid=7");
    assert_eq!(row.get::<_, i64>(3), lease.fencing as i64);
    assert!(row.get::<_, bool>(4));
    // Deleting the row (an operator's forced release) frees the key; the sequence
    // keeps the fencing numbers growing.
    client
        .execute(&format!("DELETE FROM \"{schema}\".celeriac_locks"), &[])
        .await
        .expect("delete");
    assert!(!manager.release(&lease).await.expect("release"));
    let next = manager
        .acquire(&AcquireParams::new(
            "single:billing.charge",
            Duration::from_secs(30),
            "w2",
        ))
        .await
        .expect("acquire")
        .expect("free after DELETE");
    assert!(next.fencing > lease.fencing);
    assert!(manager.release(&next).await.expect("release"));
    assert!(
        manager.describe().contains(schema),
        "{}",
        manager.describe()
    );
}

#[tokio::test]
async fn a_dropped_connection_is_replaced() {
    let Some(harness) = PostgresHarness::connect_or_skip("postgres_dropped_connection") else {
        return;
    };
    let name = format!("celeriac-lock-test-{}", uuid_like());
    let url = format!("{}&application_name={name}", harness.store_url());
    let manager = PostgresLockManager::open_url(&url).await.expect("open");
    let lease = manager
        .acquire(&AcquireParams::new(
            "single:t",
            Duration::from_secs(30),
            "me",
        ))
        .await
        .expect("acquire")
        .expect("free");
    let admin = raw(&harness).await;
    let killed = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .expect("terminate");
    assert_eq!(killed.get::<_, i64>(0), 1, "the manager's one connection");
    // The next operations run on a new connection, without an error.
    assert!(manager
        .renew(&lease, Duration::from_secs(30))
        .await
        .expect("renew after the kill"));
    let listed = manager.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(manager.release(&lease).await.expect("release"));
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

//! Locks in PostgreSQL (`postgres://` or `postgresql://`, as libpq writes them), so
//! apps whose broker is Redis or SQLite can keep their locks in a database they
//! already run, and operators can read them with SQL.
//!
//! # Tables
//!
//! Created if missing when a manager connects (`schema.sql` next to this file), in
//! the connection's `search_path`, or in the schema named by the URL's
//! `schema=NAME` parameter (created too):
//!
//! - `celeriac_locks(key, token, owner, fencing, acquired_at, expires_at)`: one row
//!   per lock acquired and not released; a row past `expires_at` is lapsed, free for
//!   everyone, and replaced by the next acquisition of its key.
//! - sequence `celeriac_lock_fencing`: every acquisition takes the next number, so a
//!   key's fencing numbers grow across releases, expiries and forced releases.
//!
//! ```sql
//! SELECT key, owner, fencing, expires_at - now() AS left FROM celeriac_locks
//! WHERE expires_at > now() ORDER BY key;
//! DELETE FROM celeriac_locks WHERE key = 'single:billing.charge';  -- force release
//! ```
//!
//! # Atomicity and clocks
//!
//! Every operation is one statement. Acquire is
//! `INSERT … ON CONFLICT (key) DO UPDATE … WHERE celeriac_locks.expires_at <= now`:
//! PostgreSQL locks the conflicting row and re-checks the condition on its newest
//! version, so of concurrent acquirers exactly one gets a free (or lapsed) key.
//! Renew and release match the key *and* the token. Times are the server's
//! `clock_timestamp()`, so the clocks of the clients do not matter.
//!
//! # Connection
//!
//! One connection per manager (clones share it), opened lazily and replaced when it
//! breaks: a statement that fails because the connection is gone (or takes longer
//! than the response timeout) is retried once on a new connection. Retrying is safe:
//! an acquisition whose first attempt did commit finds the key held and returns
//! `None` (the lock lapses at its TTL), and a repeated release or renew changes
//! nothing. TLS is not supported yet (`sslmode=require` fails to connect).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

use crate::{AcquireParams, Lease, LockError, LockInfo, LockManager};

/// The statements creating the tables (`{schema}` stands for the schema prefix).
pub const SCHEMA_SQL: &str = include_str!("schema.sql");

/// Longest lease accepted (100 years).
const MAX_TTL_MS: i64 = 100 * 365 * 24 * 3600 * 1000;
/// Lapsed locks of other keys deleted per acquisition.
const CLEANUP_BATCH: i64 = 64;
/// Key of the advisory lock held while creating the tables.
const MIGRATION_LOCK: i64 = 0x6365_6c65_7269_6163; // "celeriac"

/// Errors of the PostgreSQL store, wrapped in [`LockError::Storage`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// PostgreSQL or the connection reported an error.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// Connecting or a statement took longer than allowed.
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
}

impl From<StoreError> for LockError {
    fn from(error: StoreError) -> LockError {
        LockError::storage(error)
    }
}

/// Settings of a [`PostgresLockManager`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresLockOptions {
    /// The schema holding the tables (created if missing); `None` uses the
    /// connection's `search_path` (normally `public`).
    pub schema: Option<String>,
    /// How long connecting may take (default 5 s).
    pub connection_timeout: Duration,
    /// How long a statement may take before its connection is given up (default 10 s).
    pub response_timeout: Duration,
}

impl Default for PostgresLockOptions {
    fn default() -> Self {
        PostgresLockOptions {
            schema: None,
            connection_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
        }
    }
}

/// The SQL of every operation, with the schema prefix filled in.
struct Statements {
    acquire: String,
    cleanup: String,
    renew: String,
    release: String,
    force_release: String,
    list: String,
}

impl Statements {
    fn new(prefix: &str) -> Statements {
        let t = format!("{prefix}celeriac_locks");
        let seq = format!("{prefix}celeriac_lock_fencing");
        Statements {
            acquire: format!(
                "INSERT INTO {t} AS held (key, token, owner, fencing, acquired_at, expires_at)
                 SELECT $1, $2, $3, nextval('{seq}'), now.t,
                        now.t + ($4::bigint)::float8 * interval '1 millisecond'
                 FROM (SELECT clock_timestamp() AS t) AS now
                 ON CONFLICT (key) DO UPDATE SET
                     token = EXCLUDED.token, owner = EXCLUDED.owner,
                     fencing = EXCLUDED.fencing, acquired_at = EXCLUDED.acquired_at,
                     expires_at = EXCLUDED.expires_at
                 WHERE held.expires_at <= EXCLUDED.acquired_at
                 RETURNING fencing, expires_at"
            ),
            cleanup: format!(
                "DELETE FROM {t} WHERE expires_at <= clock_timestamp() AND key IN (
                     SELECT key FROM {t} WHERE expires_at <= clock_timestamp()
                     LIMIT {CLEANUP_BATCH} FOR UPDATE SKIP LOCKED)"
            ),
            renew: format!(
                "UPDATE {t}
                 SET expires_at = clock_timestamp() + ($3::bigint)::float8 * interval '1 millisecond'
                 WHERE key = $1 AND token = $2 AND expires_at > clock_timestamp()
                 RETURNING expires_at"
            ),
            release: format!(
                "DELETE FROM {t} WHERE key = $1 AND token = $2
                 RETURNING expires_at > clock_timestamp()"
            ),
            force_release: format!(
                "DELETE FROM {t} WHERE key = $1 RETURNING expires_at > clock_timestamp()"
            ),
            list: format!(
                "SELECT key, owner, fencing, acquired_at, expires_at FROM {t}
                 WHERE expires_at > clock_timestamp()
                 ORDER BY key COLLATE \"C\""
            ),
        }
    }
}

/// The PostgreSQL lock store. See the [module docs](self). Cheap to clone; clones
/// share one connection.
#[derive(Clone)]
pub struct PostgresLockManager {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    display: String,
    options: PostgresLockOptions,
    schema_prefix: String,
    sql: Statements,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl std::fmt::Debug for PostgresLockManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLockManager")
            .field("url", &self.inner.display)
            .field("schema", &self.inner.options.schema)
            .finish_non_exhaustive()
    }
}

/// Splits celeriac's own `schema=NAME` parameter off a PostgreSQL URL.
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

/// Whether a schema name is plain enough to quote safely.
fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl PostgresLockManager {
    /// Opens the store named by a URL (`postgres://user[:password]@host[:port]/db`,
    /// libpq's parameters, plus `schema=NAME` for the tables' schema) with default
    /// options, creating the tables if missing.
    pub async fn open_url(url: &str) -> Result<PostgresLockManager, LockError> {
        let (url, schema) = split_schema(url);
        let options = PostgresLockOptions {
            schema,
            ..PostgresLockOptions::default()
        };
        PostgresLockManager::open(&url, options).await
    }

    /// Connects to a PostgreSQL URL (without `schema=`; use
    /// [`PostgresLockOptions::schema`]) and creates the tables if missing.
    pub async fn open(
        url: &str,
        options: PostgresLockOptions,
    ) -> Result<PostgresLockManager, LockError> {
        let display = redact(url);
        let invalid = |reason: String| LockError::InvalidUrl {
            url: display.clone(),
            reason,
        };
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|error: tokio_postgres::Error| {
                invalid(format!("not a PostgreSQL URL: {error}"))
            })?;
        if config.get_application_name().is_none() {
            config.application_name("celeriac-lock");
        }
        config.connect_timeout(options.connection_timeout);
        let schema_prefix = match &options.schema {
            None => String::new(),
            Some(name) if valid_schema(name) => format!("\"{name}\"."),
            Some(name) => {
                return Err(invalid(format!(
                    "schema {name:?} must be 1-63 letters, digits, '_' or '-'"
                )))
            }
        };
        let manager = PostgresLockManager {
            inner: Arc::new(Inner {
                config,
                display,
                sql: Statements::new(&schema_prefix),
                schema_prefix,
                options,
                client: tokio::sync::Mutex::new(None),
            }),
        };
        manager.migrate().await?;
        Ok(manager)
    }

    /// The schema holding the tables, if one was named.
    pub fn schema(&self) -> Option<&str> {
        self.inner.options.schema.as_deref()
    }

    /// Creates the schema (if named), the table and the sequence if missing.
    async fn migrate(&self) -> Result<(), LockError> {
        let mut batch = format!("BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK});\n");
        if let Some(schema) = &self.inner.options.schema {
            batch.push_str(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\";\n"));
        }
        batch.push_str(&SCHEMA_SQL.replace("{schema}", &self.inner.schema_prefix));
        batch.push_str("\nCOMMIT;");
        let client = self.client().await?;
        let result = self.bounded(client.batch_execute(&batch)).await;
        if result.is_err() {
            // The transaction may be left open: start over on a new connection.
            self.forget(&client).await;
        }
        result
    }

    /// The live connection, opening one if there is none or it broke.
    async fn client(&self) -> Result<Arc<Client>, LockError> {
        let mut slot = self.inner.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(client));
        }
        let connect = self.inner.config.connect(NoTls);
        let (client, connection) =
            tokio::time::timeout(self.inner.options.connection_timeout, connect)
                .await
                .map_err(|_| StoreError::Timeout(self.inner.options.connection_timeout))?
                .map_err(StoreError::Postgres)?;
        let url = self.inner.display.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %url, "PostgreSQL lock store connection closed");
            }
        });
        let client = Arc::new(client);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Drops `client` if it is still the current connection.
    async fn forget(&self, client: &Arc<Client>) {
        let mut slot = self.inner.client.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            *slot = None;
        }
    }

    /// Runs `future` within the response timeout.
    async fn bounded<T>(
        &self,
        future: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, LockError> {
        let limit = self.inner.options.response_timeout;
        match tokio::time::timeout(limit, future).await {
            Ok(result) => result.map_err(|error| StoreError::Postgres(error).into()),
            Err(_) => Err(StoreError::Timeout(limit).into()),
        }
    }

    /// Runs one statement, retrying once on a new connection when the connection
    /// failed (not when PostgreSQL refused the statement).
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, LockError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = self.client().await?;
            let outcome = tokio::time::timeout(
                self.inner.options.response_timeout,
                client.query(sql, params),
            )
            .await;
            let error = match outcome {
                Ok(Ok(rows)) => return Ok(rows),
                Ok(Err(error)) if !connection_lost(&error) && !client.is_closed() => {
                    return Err(StoreError::Postgres(error).into())
                }
                Ok(Err(error)) => StoreError::Postgres(error),
                Err(_) => StoreError::Timeout(self.inner.options.response_timeout),
            };
            self.forget(&client).await;
            if attempt >= 2 {
                return Err(error.into());
            }
            tracing::debug!(%error, url = %self.inner.display, "PostgreSQL lock store connection lost; reconnecting");
        }
    }
}

#[async_trait]
impl LockManager for PostgresLockManager {
    async fn acquire(&self, params: &AcquireParams) -> Result<Option<Lease>, LockError> {
        params.validate()?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let ttl = millis(params.ttl);
        let rows = self
            .query(
                &self.inner.sql.acquire,
                &[&params.key, &token, &params.owner, &ttl],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let fencing: i64 = row.try_get(0).map_err(StoreError::Postgres)?;
        let expires_at: DateTime<Utc> = row.try_get(1).map_err(StoreError::Postgres)?;
        if let Err(error) = self.query(&self.inner.sql.cleanup, &[]).await {
            tracing::debug!(%error, "deleting lapsed locks failed; the next acquisition tries again");
        }
        Ok(Some(Lease {
            key: params.key.clone(),
            token,
            fencing: u64::try_from(fencing).unwrap_or(0),
            expires_at,
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, LockError> {
        if ttl < Duration::from_millis(1) {
            return Err(LockError::InvalidParams(format!(
                "the TTL of lock {:?} must be at least 1 ms, got {ttl:?}",
                lease.key
            )));
        }
        let rows = self
            .query(
                &self.inner.sql.renew,
                &[&lease.key, &lease.token, &millis(ttl)],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LockError> {
        let rows = self
            .query(&self.inner.sql.release, &[&lease.key, &lease.token])
            .await?;
        live_deleted(&rows)
    }

    async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        let rows = self.query(&self.inner.sql.list, &[]).await?;
        rows.iter()
            .map(|row| {
                let fencing: i64 = row.try_get(2)?;
                Ok(LockInfo {
                    key: row.try_get(0)?,
                    owner: row.try_get(1)?,
                    fencing: u64::try_from(fencing).unwrap_or(0),
                    acquired_at: row.try_get(3)?,
                    expires_at: row.try_get(4)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|error| StoreError::Postgres(error).into())
    }

    async fn force_release(&self, key: &str) -> Result<bool, LockError> {
        let rows = self.query(&self.inner.sql.force_release, &[&key]).await?;
        live_deleted(&rows)
    }

    fn describe(&self) -> String {
        match &self.inner.options.schema {
            Some(schema) => format!("{} (schema {schema})", self.inner.display),
            None => self.inner.display.clone(),
        }
    }
}

/// Whether an error means the connection is gone rather than the statement refused:
/// no server error at all (I/O, closed), or a server error of class 08 (connection
/// exception) or 57P (the server is shutting down or the backend was terminated).
fn connection_lost(error: &tokio_postgres::Error) -> bool {
    match error.code() {
        None => error.as_db_error().is_none(),
        Some(code) => {
            let code = code.code();
            code.starts_with("08") || code.starts_with("57P")
        }
    }
}

/// Whether a `DELETE … RETURNING expires_at > now` deleted a live lock.
fn live_deleted(rows: &[Row]) -> Result<bool, LockError> {
    match rows.first() {
        None => Ok(false),
        Some(row) => Ok(row.try_get::<_, bool>(0).map_err(StoreError::Postgres)?),
    }
}

/// A duration in whole milliseconds, rounded up, at most [`MAX_TTL_MS`].
fn millis(duration: Duration) -> i64 {
    let ms = duration.as_nanos().div_ceil(1_000_000);
    i64::try_from(ms).unwrap_or(i64::MAX).min(MAX_TTL_MS)
}

/// Hides the password of a URL.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parameter_is_celeriacs_own() {
        assert_eq!(
            split_schema("postgres://u@h/db?schema=locks_a&application_name=x"),
            (
                "postgres://u@h/db?application_name=x".to_string(),
                Some("locks_a".to_string())
            )
        );
        assert_eq!(
            split_schema("postgresql://u@h/db"),
            ("postgresql://u@h/db".to_string(), None)
        );
        assert!(valid_schema("celeriac_test-1"));
        assert!(!valid_schema("a\"; DROP TABLE x; --"));
        assert!(!valid_schema(""));
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[tokio::test]
    async fn bad_urls_and_schemas_are_refused() {
        for bad in [
            "postgres://h/db?no_such_option=1",
            "postgres://h/db?schema=bad%22name",
        ] {
            assert!(
                matches!(
                    PostgresLockManager::open_url(bad).await,
                    Err(LockError::InvalidUrl { .. })
                ),
                "{bad} is refused"
            );
        }
    }
}

//! Configuration with Celery's setting names.
//!
//! Layers, later wins: the values the app's builder sets in code, then
//! `celeriac.toml` (or the file named by `CELERIAC_CONFIG`), then `CELERIAC_<SETTING>`
//! environment variables (e.g. `CELERIAC_BROKER_URL`, `CELERIAC_RESULT_BACKEND`,
//! `CELERIAC_WORKER_PREFETCH_MULTIPLIER`; nested keys with `__`, as in
//! `CELERIAC_BROKER_TRANSPORT_OPTIONS__LEASE`), then command-line flags.
//! Durations are seconds, as in Celery.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::routing::{Exchange, ExchangeKind, Queue, Route};

mod use_ssl;
pub use use_ssl::{SslOptions, UseSsl};

/// Configuration errors, with the offending source named.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("{path} is not valid TOML: {message}")]
    Toml {
        /// File path.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A setting has the wrong type.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// Transport options (Celery's `broker_transport_options`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransportOptions {
    /// Lease of a held message, in seconds. celeriac workers renew it every third of
    /// it while they hold a message; when a worker dies its messages come back after
    /// at most this long.
    pub lease: f64,
    /// kombu's visibility timeout, in seconds (Celery's default 3600): on Redis, a
    /// message held by a *Python* worker is restored after this long. celeriac renews
    /// its own messages, so they are never restored while their worker lives.
    pub visibility_timeout: f64,
    /// Idle poll interval of the SQLite broker across processes, in seconds.
    pub polling_interval: f64,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            lease: 30.0,
            visibility_timeout: 3600.0,
            polling_interval: 0.01,
        }
    }
}

/// When a send (`delay`, `send_task`) returns: after the broker confirmed its
/// message, or at once with the broker's confirm deferred (`task_publish_confirms`,
/// `CELERIAC_TASK_PUBLISH_CONFIRMS=deferred`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishConfirms {
    /// Every send waits for the broker to store its message (one round trip each).
    #[default]
    Each,
    /// Sends hand their message to the app's background publisher and return at
    /// once; messages handed over while a publish is in flight go out together in
    /// the next one. A failed publish is reported by the next send and by the app's
    /// `flush()`.
    Deferred,
}

/// Default of [`Settings::task_publish_buffer`].
pub const DEFAULT_PUBLISH_BUFFER: usize = 10_000;

/// A queue in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// Exchange name (default: `celery`, or `tasks` for a pattern routing key).
    #[serde(default)]
    pub exchange: Option<String>,
    /// Exchange kind: `direct`, `topic` or `fanout`.
    #[serde(default)]
    pub exchange_type: Option<ExchangeKind>,
    /// Binding key.
    #[serde(default)]
    pub routing_key: Option<String>,
    /// Worker slots.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Prefetch multiplier.
    #[serde(default)]
    pub prefetch_multiplier: Option<usize>,
    /// Late acks.
    #[serde(default)]
    pub acks_late: Option<bool>,
}

impl QueueConfig {
    /// The queue this entry declares.
    pub fn to_queue(&self) -> Queue {
        let mut queue = Queue::new(&self.name);
        if let Some(key) = &self.routing_key {
            queue = queue.routing_key(key);
        }
        if self.exchange.is_some() || self.exchange_type.is_some() {
            queue.exchange = Exchange {
                name: self
                    .exchange
                    .clone()
                    .unwrap_or_else(|| queue.exchange.name.clone()),
                kind: self.exchange_type.unwrap_or(queue.exchange.kind),
            };
        }
        queue.concurrency = self.concurrency;
        queue.prefetch_multiplier = self.prefetch_multiplier;
        queue.acks_late = self.acks_late;
        queue
    }

    /// The config entry of a declared queue.
    pub fn from_queue(queue: &Queue) -> QueueConfig {
        QueueConfig {
            name: queue.name.clone(),
            exchange: Some(queue.exchange.name.clone()),
            exchange_type: Some(queue.exchange.kind),
            routing_key: Some(queue.routing_key.clone()),
            concurrency: queue.concurrency,
            prefetch_multiplier: queue.prefetch_multiplier,
            acks_late: queue.acks_late,
        }
    }
}

/// The default of [`Settings::task_max_message_bytes`]: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A secret setting (a signing key): read and written as a plain string, never shown
/// by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is unset.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(unset)")
        } else {
            f.write_str("Secret(***)")
        }
    }
}

/// All settings, with Celery's names where Celery has one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Settings {
    /// Broker URL: `sqlite://path` (embedded default), later `redis://`, `amqp://`.
    pub broker_url: String,
    /// Result backend URL; empty = the broker's SQLite file when the broker is SQLite.
    pub result_backend: String,
    /// Lock store URL (single-instance tasks, unique enqueue); empty = the broker's
    /// (`sqlite://`, `redis://`). E.g. `postgres://…` for PostgreSQL locks.
    pub lock_store: String,
    /// Queue of tasks that have no route.
    pub task_default_queue: String,
    /// Ack after the task finished (for all tasks that do not say otherwise).
    pub task_acks_late: bool,
    /// With late ack, put a message back when its task fails instead of acking it.
    pub task_reject_on_failure: bool,
    /// Store STARTED when a task starts.
    pub task_track_started: bool,
    /// Store no results unless a task asks.
    pub task_ignore_result: bool,
    /// Largest message accepted, in bytes (`CELERIAC_TASK_MAX_MESSAGE_BYTES`): workers
    /// dead-letter larger ones with the reason, producers refuse to send them.
    pub task_max_message_bytes: usize,
    /// Shared HMAC-SHA256 key for message signing (`CELERIAC_SIGNING_KEY`); empty =
    /// off. When set, producers sign every task message and workers dead-letter
    /// unsigned or badly signed ones (see [`crate::signing`]). At least 16 bytes.
    pub signing_key: Secret,
    /// Results expire after this many seconds (0 = never).
    pub result_expires: f64,
    /// Slots per queue when the queue does not say (0 = number of CPUs).
    pub worker_concurrency: usize,
    /// Messages reserved per slot.
    pub worker_prefetch_multiplier: usize,
    /// On shutdown, running tasks get this many seconds to finish.
    pub worker_shutdown_timeout: f64,
    /// Worker node name (`name@host`); default `celeriac@<hostname>`.
    pub worker_hostname: String,
    /// Transport options.
    pub broker_transport_options: TransportOptions,
    /// Declared queues.
    pub task_queues: Vec<QueueConfig>,
    /// Task-name glob → queue name or `{queue, exchange, routing_key}`.
    pub task_routes: Map<String, Value>,
    /// Workers send task events (`task-received`, `task-succeeded`, ...; Celery's
    /// `-E`). Worker events (online, heartbeat, offline) are always sent.
    pub worker_send_task_events: bool,
    /// Clients send a `task-sent` event for every task they publish.
    pub task_send_sent_event: bool,
    /// Whether a send waits for the broker's confirm (`each`, the default) or
    /// returns at once and leaves it to a background publisher (`deferred`;
    /// `CELERIAC_TASK_PUBLISH_CONFIRMS`).
    pub task_publish_confirms: PublishConfirms,
    /// With deferred confirms, how many sends may wait for the publisher; a send
    /// to a full buffer waits for room (`CELERIAC_TASK_PUBLISH_BUFFER`).
    pub task_publish_buffer: usize,
    /// Exchange of monitoring events.
    pub event_exchange: String,
    /// Namespace of remote control: requests on `<name>.pidbox`, replies through
    /// `reply.<name>.pidbox`.
    pub control_exchange: String,
    /// TLS for a `redis://` or `amqp://` broker URL: `true`, or a table of kombu's
    /// `ssl_*` options (Celery's `broker_use_ssl`; see [`UseSsl`]). Applied by
    /// [`Settings::with_tls_applied`].
    pub broker_use_ssl: UseSsl,
    /// The same for a `redis://` result backend (Celery's `redis_backend_use_ssl`).
    pub redis_backend_use_ssl: UseSsl,
    /// Compress the bodies of tasks sent: `gzip` or `zlib` (kombu's zlib codec,
    /// which Python workers read); empty = none (Celery's `task_compression`).
    pub task_compression: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            broker_url: "sqlite://celeriac.db".into(),
            result_backend: String::new(),
            lock_store: String::new(),
            task_default_queue: "celery".into(),
            task_acks_late: false,
            task_reject_on_failure: false,
            task_track_started: false,
            task_ignore_result: false,
            task_max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            signing_key: Secret::default(),
            result_expires: 86400.0,
            worker_concurrency: 0,
            worker_prefetch_multiplier: 4,
            worker_shutdown_timeout: 30.0,
            worker_hostname: String::new(),
            broker_transport_options: TransportOptions::default(),
            task_queues: Vec::new(),
            task_routes: Map::new(),
            worker_send_task_events: false,
            task_send_sent_event: false,
            task_publish_confirms: PublishConfirms::Each,
            task_publish_buffer: DEFAULT_PUBLISH_BUFFER,
            event_exchange: crate::event::EVENT_EXCHANGE.into(),
            control_exchange: crate::pidbox::DEFAULT_NAMESPACE.into(),
            broker_use_ssl: UseSsl::default(),
            redis_backend_use_ssl: UseSsl::default(),
            task_compression: String::new(),
        }
    }
}

impl Settings {
    /// Applies `celeriac.toml` (or `CELERIAC_CONFIG`) and `CELERIAC_*` variables on
    /// top of `self`.
    pub fn load_layers(self) -> Result<Settings, ConfigError> {
        let path = std::env::var_os("CELERIAC_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("celeriac.toml"));
        let explicit = std::env::var_os("CELERIAC_CONFIG").is_some();
        let with_file = if explicit || path.exists() {
            self.merge_toml_file(&path)?
        } else {
            self
        };
        with_file.merge_env(std::env::vars())
    }

    /// Merges a TOML file over these settings.
    pub fn merge_toml_file(self, path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.merge_toml_str(&text).map_err(|e| match e {
            ConfigError::Toml { message, .. } => ConfigError::Toml {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Merges TOML text over these settings.
    pub fn merge_toml_str(self, text: &str) -> Result<Settings, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: PathBuf::from("<toml>"),
            message: e.to_string(),
        })?;
        let overlay =
            serde_json::to_value(table).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.merge_value(overlay)
    }

    /// Merges `CELERIAC_<SETTING>` variables (only names of known settings).
    pub fn merge_env<I: IntoIterator<Item = (String, String)>>(
        self,
        vars: I,
    ) -> Result<Settings, ConfigError> {
        let known = match serde_json::to_value(&self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let mut overlay = Map::new();
        for (name, raw) in vars {
            let Some(setting) = name.strip_prefix("CELERIAC_") else {
                continue;
            };
            let path: Vec<String> = setting
                .split("__")
                .map(|p| p.to_ascii_lowercase())
                .collect();
            let Some(first) = path.first() else { continue };
            let Some(current) = known.get(first) else {
                continue;
            };
            let value = env_value(&raw, current, &path[1..]);
            insert_path(&mut overlay, &path, value);
        }
        self.merge_value(Value::Object(overlay))
    }

    /// Merges a JSON object of settings (used for flags and tests).
    pub fn merge_value(self, overlay: Value) -> Result<Settings, ConfigError> {
        let mut base =
            serde_json::to_value(&self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        merge(&mut base, overlay);
        serde_json::from_value(base).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Lease length of held messages, never longer than the visibility timeout:
    /// workers renew every third of the lease, and each renewal on Redis refreshes
    /// kombu's `unacked_index`, so a held message never looks older than the
    /// visibility timeout to a Python worker's scan.
    pub fn lease(&self) -> Duration {
        let lease = self.broker_transport_options.lease.max(0.1);
        Duration::from_secs_f64(lease).min(self.visibility_timeout())
    }

    /// kombu's visibility timeout (Python workers' messages on Redis).
    pub fn visibility_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.broker_transport_options.visibility_timeout.max(1.0))
    }

    /// Result expiry (`None` = never).
    pub fn result_expires(&self) -> Option<Duration> {
        (self.result_expires > 0.0).then(|| Duration::from_secs_f64(self.result_expires))
    }

    /// Shutdown grace period.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.worker_shutdown_timeout.max(0.0))
    }

    /// These settings with `broker_use_ssl` and `redis_backend_use_ssl` written into
    /// the broker and result backend URLs (TLS scheme, `ssl_*` query options the
    /// URLs do not have yet). Applying it twice changes nothing more.
    pub fn with_tls_applied(mut self) -> Result<Settings, ConfigError> {
        self.broker_url = self
            .broker_use_ssl
            .apply(&self.broker_url, "broker_use_ssl")?;
        if self.redis_backend_use_ssl.is_on() {
            if !(self.result_backend.starts_with("redis://")
                || self.result_backend.starts_with("rediss://"))
            {
                return Err(ConfigError::Invalid(format!(
                    "redis_backend_use_ssl needs a redis:// result_backend, not {:?}",
                    self.result_backend.split("://").next().unwrap_or_default()
                )));
            }
            self.result_backend = self
                .redis_backend_use_ssl
                .apply(&self.result_backend, "redis_backend_use_ssl")?;
        }
        Ok(self)
    }

    /// The result backend URL: the explicit one, or the broker's SQLite file.
    pub fn effective_result_backend(&self) -> Option<String> {
        if !self.result_backend.is_empty() {
            return Some(self.result_backend.clone());
        }
        self.broker_url
            .starts_with("sqlite:")
            .then(|| self.broker_url.clone())
    }

    /// The lock store URL: the explicit one, or the broker's.
    pub fn effective_lock_store(&self) -> String {
        if self.lock_store.is_empty() {
            self.broker_url.clone()
        } else {
            self.lock_store.clone()
        }
    }

    /// Slots per queue when the queue does not say.
    pub fn default_concurrency(&self) -> usize {
        if self.worker_concurrency > 0 {
            self.worker_concurrency
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }

    /// Declared queues.
    pub fn queues(&self) -> Vec<Queue> {
        self.task_queues.iter().map(QueueConfig::to_queue).collect()
    }

    /// `task_routes` as routes, in file order.
    pub fn routes(&self) -> Result<Vec<Route>, ConfigError> {
        self.task_routes
            .iter()
            .map(|(pattern, target)| match target {
                Value::String(queue) => Ok(Route::to_queue(pattern.clone(), queue.clone())),
                Value::Object(fields) => {
                    let get = |k: &str| fields.get(k).and_then(Value::as_str).map(str::to_string);
                    Ok(Route {
                        pattern: pattern.clone(),
                        queue: get("queue"),
                        exchange: get("exchange"),
                        routing_key: get("routing_key"),
                    })
                }
                other => Err(ConfigError::Invalid(format!(
                    "task_routes[{pattern:?}] must be a queue name or {{queue, exchange, routing_key}}, found {other}"
                ))),
            })
            .collect()
    }
}

fn env_value(raw: &str, current: &Value, rest: &[String]) -> Value {
    let mut target = current;
    for key in rest {
        match target.get(key) {
            Some(inner) => target = inner,
            None => break,
        }
    }
    if target.is_string() {
        return Value::String(raw.to_string());
    }
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

fn insert_path(map: &mut Map<String, Value>, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            map.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = map
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing)
                        if existing.is_object() && value.is_object() && key != "task_routes" =>
                    {
                        merge(existing, value)
                    }
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_ssl_comes_from_env_and_toml_and_rewrites_the_urls() {
        let env = |vars: &[(&str, &str)]| {
            Settings::default()
                .merge_env(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                .expect("env")
                .with_tls_applied()
        };
        let on = env(&[
            ("CELERIAC_BROKER_URL", "amqp://u:p@mq//"),
            ("CELERIAC_BROKER_USE_SSL", "true"),
        ])
        .expect("applied");
        assert_eq!(on.broker_url, "amqps://u:p@mq//");
        let options = env(&[
            ("CELERIAC_BROKER_URL", "redis://h/0"),
            ("CELERIAC_BROKER_USE_SSL__SSL_CA_CERTS", "/etc/ca.pem"),
            ("CELERIAC_BROKER_USE_SSL__SSL_CERT_REQS", "CERT_REQUIRED"),
            ("CELERIAC_RESULT_BACKEND", "redis://h/1"),
            ("CELERIAC_REDIS_BACKEND_USE_SSL", "true"),
        ])
        .expect("applied");
        assert_eq!(
            options.broker_url,
            "rediss://h/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
        );
        assert_eq!(options.result_backend, "rediss://h/1");
        // Applying again changes nothing.
        assert_eq!(options.clone().with_tls_applied().expect("again"), options);
        let toml = Settings::default()
            .merge_toml_str(
                "broker_url = \"redis://h/0\"\n[broker_use_ssl]\nca_certs = \"/ca.pem\"\n",
            )
            .expect("toml")
            .with_tls_applied()
            .expect("applied");
        assert_eq!(toml.broker_url, "rediss://h/0?ssl_ca_certs=/ca.pem");
        let backend = env(&[
            ("CELERIAC_REDIS_BACKEND_USE_SSL", "true"),
            ("CELERIAC_RESULT_BACKEND", "postgres://db/results"),
        ])
        .expect_err("not a Redis backend");
        assert!(backend
            .to_string()
            .contains("redis_backend_use_ssl needs a redis://"));
    }

    #[test]
    fn the_lock_store_defaults_to_the_broker_and_is_set_by_env() {
        let settings = Settings {
            broker_url: "redis://h:6379/0".into(),
            ..Settings::default()
        };
        assert_eq!(settings.effective_lock_store(), "redis://h:6379/0");
        let env = settings
            .merge_env(vec![(
                "CELERIAC_LOCK_STORE".into(),
                "postgres://u@db/app".into(),
            )])
            .expect("env");
        assert_eq!(env.effective_lock_store(), "postgres://u@db/app");
    }

    #[test]
    fn layers_apply_in_order_env_over_file_over_code() {
        let code = Settings {
            broker_url: "sqlite://code.db".into(),
            ..Settings::default()
        };
        let file = code
            .merge_toml_str(
                r#"
                broker_url = "sqlite://file.db"
                worker_prefetch_multiplier = 1
                [broker_transport_options]
                lease = 5
                [[task_queues]]
                name = "long-task"
                routing_key = "long.#"
                concurrency = 2
                acks_late = true
                [task_routes]
                "files.*" = "long-task"
                "notify.*" = { routing_key = "short.notify" }
                "#,
            )
            .expect("toml");
        assert_eq!(file.broker_url, "sqlite://file.db");
        assert_eq!(file.lease(), Duration::from_secs(5));
        assert_eq!(file.visibility_timeout(), Duration::from_secs(3600));
        assert_eq!(file.broker_transport_options.polling_interval, 0.01);
        let env = file
            .merge_env(vec![
                ("CELERIAC_BROKER_URL".into(), "sqlite://env.db".into()),
                (
                    "CELERIAC_RESULT_BACKEND".into(),
                    "sqlite://results.db".into(),
                ),
                ("CELERIAC_WORKER_PREFETCH_MULTIPLIER".into(), "8".into()),
                (
                    "CELERIAC_BROKER_TRANSPORT_OPTIONS__LEASE".into(),
                    "7.5".into(),
                ),
                ("CELERIAC_REQUIRE_SERVICES".into(), "1".into()),
                ("PATH".into(), "/bin".into()),
            ])
            .expect("env");
        assert_eq!(env.broker_url, "sqlite://env.db");
        assert_eq!(
            env.effective_result_backend().as_deref(),
            Some("sqlite://results.db")
        );
        assert_eq!(env.worker_prefetch_multiplier, 8);
        assert_eq!(env.lease(), Duration::from_millis(7500));
        let queues = env.queues();
        assert_eq!(queues[0].exchange, Exchange::topic("tasks"));
        assert_eq!(queues[0].concurrency, Some(2));
        let routes = env.routes().expect("routes");
        assert_eq!(routes[0], Route::to_queue("files.*", "long-task"));
        assert_eq!(routes[1].routing_key.as_deref(), Some("short.notify"));
    }

    #[test]
    fn bad_types_are_reported() {
        let err = Settings::default()
            .merge_toml_str("worker_prefetch_multiplier = \"many\"")
            .expect_err("invalid");
        assert!(err.to_string().contains("invalid"));
        assert!(Settings::default().merge_toml_str("not toml [").is_err());
    }

    #[test]
    fn the_lease_never_exceeds_the_visibility_timeout() {
        let mut s = Settings::default();
        assert_eq!(s.lease(), Duration::from_secs(30));
        s.broker_transport_options.visibility_timeout = 2.0;
        assert_eq!(s.lease(), Duration::from_secs(2));
        s.broker_transport_options.lease = 1.5;
        assert_eq!(s.lease(), Duration::from_millis(1500));
    }

    #[test]
    fn the_signing_key_and_size_limit_come_from_the_environment_and_never_print() {
        let s = Settings::default()
            .merge_env(vec![
                (
                    "CELERIAC_SIGNING_KEY".into(),
                    "a-long-shared-secret-key".into(),
                ),
                ("CELERIAC_TASK_MAX_MESSAGE_BYTES".into(), "65536".into()),
            ])
            .expect("env");
        assert_eq!(s.signing_key.expose(), "a-long-shared-secret-key");
        assert_eq!(s.task_max_message_bytes, 65536);
        let shown = format!("{s:?}");
        assert!(!shown.contains("a-long-shared-secret-key"), "{shown}");
        assert!(shown.contains("Secret(***)"), "{shown}");
        assert_eq!(
            Settings::default().task_max_message_bytes,
            DEFAULT_MAX_MESSAGE_BYTES
        );
    }

    #[test]
    fn sqlite_broker_doubles_as_backend() {
        let s = Settings::default();
        assert_eq!(
            s.effective_result_backend().as_deref(),
            Some("sqlite://celeriac.db")
        );
    }

    #[test]
    fn publish_confirms_from_env_and_toml() {
        assert_eq!(
            Settings::default().task_publish_confirms,
            PublishConfirms::Each
        );
        let env = Settings::default()
            .merge_env(vec![
                ("CELERIAC_TASK_PUBLISH_CONFIRMS".into(), "deferred".into()),
                ("CELERIAC_TASK_PUBLISH_BUFFER".into(), "64".into()),
            ])
            .expect("env");
        assert_eq!(env.task_publish_confirms, PublishConfirms::Deferred);
        assert_eq!(env.task_publish_buffer, 64);
        let file = Settings::default()
            .merge_toml_str("task_publish_confirms = \"each\"")
            .expect("toml");
        assert_eq!(file.task_publish_confirms, PublishConfirms::Each);
        assert!(Settings::default()
            .merge_toml_str("task_publish_confirms = \"later\"")
            .is_err());
    }
}

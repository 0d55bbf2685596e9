//! The application: configuration, registered tasks, routing, and the connections to
//! the broker and the result backend. One builder configures everything.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use celeriac_backend::ResultBackend;
use celeriac_broker::{Broker, Publish};
use celeriac_core::config::PublishConfirms;
use celeriac_core::routing::Route;
use celeriac_core::{
    Map, Queue, Router, SendOptions, Settings, Signature, Task, TaskMessage, TaskOptions,
    TaskRegistry, TaskSender, Value,
};
use celeriac_lock::{keys, AcquireParams, Lease, LockError, LockManager};
use chrono::Utc;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::publisher::Publisher;
use crate::result::{AsyncResult, GroupResult};

/// Calls of an [`App::send_batch`] prepared and published at a time when the batch is
/// large and plain (no unique or publish-once calls).
pub const BATCH_CHUNK: usize = 256;

/// One task to send in a batch ([`App::send_batch`]).
#[derive(Debug, Clone)]
pub struct TaskCall {
    /// Task name.
    pub name: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Send options.
    pub options: SendOptions,
}

impl TaskCall {
    /// A call of `name` with positional `args`.
    pub fn new(name: impl Into<String>, args: Vec<Value>) -> TaskCall {
        TaskCall {
            name: name.into(),
            args,
            kwargs: Map::new(),
            options: SendOptions::default(),
        }
    }

    /// Sets the send options.
    pub fn options(mut self, options: SendOptions) -> TaskCall {
        self.options = options;
        self
    }
}

/// Builds an [`App`].
#[derive(Clone)]
pub struct AppBuilder {
    name: String,
    settings: Settings,
    overrides: Vec<Value>,
    queues: Vec<Queue>,
    routes: Vec<Route>,
    tasks: Vec<Arc<dyn Task>>,
    load_environment: bool,
    config_file: Option<PathBuf>,
    locks: Option<Arc<dyn LockManager>>,
    broker_instance: Option<Arc<dyn Broker>>,
}

impl AppBuilder {
    /// Sets the broker URL (`sqlite://celeriac.db`). `CELERIAC_BROKER_URL` overrides it.
    pub fn broker(mut self, url: impl Into<String>) -> Self {
        self.settings.broker_url = url.into();
        self
    }
    /// Uses this broker instead of opening `broker_url` (a custom broker, or one
    /// wrapped to observe or inject faults). `broker_url` still names the default
    /// result backend and lock store.
    pub fn broker_instance(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker_instance = Some(broker);
        self
    }
    /// Chooses when `send_task`, `send_declared` and `delay` return
    /// (`task_publish_confirms`; `CELERIAC_TASK_PUBLISH_CONFIRMS=each|deferred`
    /// overrides it):
    ///
    /// - [`PublishConfirms::Each`] (default): after the broker stored the message,
    ///   one round trip per send (≈ 12k sends/s on a local Redis).
    /// - [`PublishConfirms::Deferred`]: at once, with the message handed to the
    ///   app's background publisher; the sends waiting while a publish is in flight
    ///   go out together in the next one (up to 1,000 per publish), so one-at-a-time
    ///   sends cost a fraction of a round trip each. A publish that fails after the
    ///   broker's own retries is logged with its task ids and returned as
    ///   [`Error::PublishFailed`] by the next send and by [`App::flush`]. Call
    ///   [`App::flush`] where you need to know that everything sent so far is
    ///   stored (before exiting, before replying "accepted" to a client); dropping
    ///   the app's last handle also stores what is buffered (see [`App::flush`]).
    ///   Deferred sends keep their order; unique sends, `publish_once` sends,
    ///   [`App::send_batch`] and workflows always wait for the broker, after the
    ///   deferred sends made before them (they never overtake them).
    pub fn publish_confirms(mut self, confirms: PublishConfirms) -> Self {
        self.settings.task_publish_confirms = confirms;
        self
    }
    /// With [`PublishConfirms::Deferred`], how many sends may wait for the
    /// publisher (default 10,000; `task_publish_buffer`); a send to a full buffer
    /// waits for room, never drops.
    pub fn publish_buffer(mut self, sends: usize) -> Self {
        self.settings.task_publish_buffer = sends;
        self
    }
    /// Sets the result backend URL. `CELERIAC_RESULT_BACKEND` overrides it.
    pub fn backend(mut self, url: impl Into<String>) -> Self {
        self.settings.result_backend = url.into();
        self
    }
    /// Declares a queue (with optional per-queue worker settings).
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queues.retain(|q| q.name != queue.name);
        self.queues.push(queue);
        self
    }
    /// Adds a `task_routes` entry.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }
    /// Registers a task.
    pub fn task<T: Task>(mut self, task: T) -> Self {
        self.tasks.push(Arc::new(task));
        self
    }
    /// Registers a shared task object.
    pub fn task_arc(mut self, task: Arc<dyn Task>) -> Self {
        self.tasks.push(task);
        self
    }
    /// Edits the settings in code (before the file and environment layers).
    pub fn configure(mut self, edit: impl FnOnce(&mut Settings)) -> Self {
        edit(&mut self.settings);
        self
    }
    /// Applies settings given as JSON after every other layer (used for CLI flags).
    pub fn override_settings(mut self, overlay: Value) -> Self {
        self.overrides.push(overlay);
        self
    }
    /// Reads this config file instead of `celeriac.toml` / `CELERIAC_CONFIG`.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }
    /// Uses this lock store for single-instance tasks and unique enqueue instead of
    /// the default (the broker's own SQLite file; none for other brokers yet).
    pub fn lock_manager(mut self, locks: Arc<dyn LockManager>) -> Self {
        self.locks = Some(locks);
        self
    }
    /// Ignores `celeriac.toml` and `CELERIAC_*` (for tests that must not see the host).
    pub fn without_environment(mut self) -> Self {
        self.load_environment = false;
        self
    }

    /// The settings after every layer, without connecting.
    pub fn resolve_settings(&self) -> Result<Settings, Error> {
        let mut settings = self.settings.clone();
        if self.load_environment {
            settings = match &self.config_file {
                Some(path) => settings
                    .merge_toml_file(path)?
                    .merge_env(std::env::vars())?,
                None => settings.load_layers()?,
            };
        }
        for overlay in &self.overrides {
            settings = settings.merge_value(overlay.clone())?;
        }
        Ok(settings.with_tls_applied()?)
    }

    /// Resolves the configuration, connects to the broker and result backend, and
    /// declares the queues.
    pub async fn build(self) -> Result<App, Error> {
        let settings = self.resolve_settings()?;
        if !settings.task_compression.is_empty()
            && celeriac_core::message::compression_type(&settings.task_compression).is_none()
        {
            return Err(celeriac_core::ConfigError::Invalid(format!(
                "task_compression = {:?}: celeriac writes gzip or zlib (kombu's zlib codec)",
                settings.task_compression
            ))
            .into());
        }
        let mut queues = self.queues.clone();
        for queue in settings.queues() {
            queues.retain(|q| q.name != queue.name);
            queues.push(queue);
        }
        if !queues.iter().any(|q| q.name == settings.task_default_queue) {
            queues.push(Queue::new(settings.task_default_queue.clone()));
        }
        let mut routes = settings.routes()?;
        routes.extend(self.routes.iter().cloned());
        let router = Router::new(queues.clone(), routes, settings.task_default_queue.clone());
        let mut registry = TaskRegistry::new();
        for task in &self.tasks {
            registry.register(task.clone());
        }
        let mut connect = celeriac_broker::ConnectOptions::default();
        connect.poll_interval = Duration::from_secs_f64(
            settings
                .broker_transport_options
                .polling_interval
                .max(0.001),
        );
        connect.visibility_timeout = settings.visibility_timeout();
        let broker = match &self.broker_instance {
            Some(broker) => broker.clone(),
            None => celeriac_broker::connect_with(&settings.broker_url, &connect).await?,
        };
        for queue in &queues {
            broker.declare_queue(queue).await?;
        }
        let backend = match settings.effective_result_backend() {
            Some(url) => Some(celeriac_backend::connect(&url).await?),
            None => None,
        };
        let locks = match &self.locks {
            Some(locks) => Some(locks.clone()),
            None => match celeriac_lock::connect(&settings.effective_lock_store()).await {
                Ok(locks) => Some(locks),
                Err(LockError::Unsupported { what }) if settings.lock_store.is_empty() => {
                    tracing::debug!(%what, "no lock store: single-instance tasks and unique enqueue are unavailable");
                    None
                }
                Err(error) => return Err(error.into()),
            },
        };
        let signing =
            celeriac_core::signing::SigningKey::from_setting(settings.signing_key.expose())
                .map_err(|e| celeriac_core::ConfigError::Invalid(e.to_string()))?;
        let hostname = if settings.worker_hostname.is_empty() {
            format!("{}@{}", self.name, host_name())
        } else {
            settings.worker_hostname.clone()
        };
        let publisher = match settings.task_publish_confirms {
            PublishConfirms::Each => None,
            PublishConfirms::Deferred => Some(Publisher::start(
                broker.clone(),
                settings.task_publish_buffer,
            )),
        };
        Ok(App {
            inner: Arc::new(AppInner {
                publisher,
                origin: format!("gen{}@{}", std::process::id(), host_name()),
                name: self.name.clone(),
                hostname,
                settings,
                registry,
                router,
                broker,
                backend,
                locks,
                signing,
                builder: self,
            }),
        })
    }
}

/// The machine's host name.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

struct AppInner {
    name: String,
    hostname: String,
    origin: String,
    settings: Settings,
    registry: TaskRegistry,
    router: Router,
    broker: Arc<dyn Broker>,
    backend: Option<Arc<dyn ResultBackend>>,
    locks: Option<Arc<dyn LockManager>>,
    /// Signs every task message sent (`signing_key`), when set.
    signing: Option<celeriac_core::signing::SigningKey>,
    /// The background publisher of deferred sends ([`PublishConfirms::Deferred`]).
    /// Dropped with the last handle: it stores what is buffered, then stops.
    publisher: Option<Publisher>,
    builder: AppBuilder,
}

/// A configured, connected celeriac application. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("name", &self.inner.name)
            .field("broker", &self.inner.broker.describe())
            .field("tasks", &self.inner.registry)
            .finish()
    }
}

impl App {
    /// Starts building an app called `name` (the default node name is `name@host`).
    pub fn builder(name: impl Into<String>) -> AppBuilder {
        AppBuilder {
            name: name.into(),
            settings: Settings::default(),
            overrides: Vec::new(),
            queues: Vec::new(),
            routes: Vec::new(),
            tasks: Vec::new(),
            load_environment: true,
            config_file: None,
            locks: None,
            broker_instance: None,
        }
    }

    /// The builder this app was made from (to rebuild it with overrides).
    pub fn to_builder(&self) -> AppBuilder {
        self.inner.builder.clone()
    }

    /// The app name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }
    /// The default worker node name (`name@host`).
    pub fn hostname(&self) -> &str {
        &self.inner.hostname
    }
    /// The resolved settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }
    /// The registered tasks.
    pub fn registry(&self) -> &TaskRegistry {
        &self.inner.registry
    }
    /// The router (declared queues and routes).
    pub fn router(&self) -> &Router {
        &self.inner.router
    }
    /// The broker.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }
    /// The result backend, if one is configured.
    pub fn backend(&self) -> Option<&Arc<dyn ResultBackend>> {
        self.inner.backend.as_ref()
    }
    /// The lock store (single-instance tasks, unique enqueue, `locks` commands): the
    /// `lock_store` setting's, else the broker's (SQLite file or Redis), or `None` for
    /// brokers that have none.
    pub fn locks(&self) -> Option<&Arc<dyn LockManager>> {
        self.inner.locks.as_ref()
    }
    /// The lock store, or an error saying that locks need a supported store.
    pub fn require_locks(&self) -> Result<&Arc<dyn LockManager>, Error> {
        self.inner.locks.as_ref().ok_or_else(|| {
            Error::Lock(LockError::Unsupported {
                what: format!("the broker {}", self.inner.broker.describe()),
            })
        })
    }

    /// When sends return: after the broker's confirm, or at once
    /// ([`AppBuilder::publish_confirms`]).
    pub fn publish_confirms(&self) -> PublishConfirms {
        self.inner.settings.task_publish_confirms
    }

    /// Waits until every send handed to the deferred publisher before this call is
    /// stored by the broker (or failed), and returns the first failure since the
    /// last flush ([`Error::PublishFailed`], with the task ids that were not sent).
    /// With [`PublishConfirms::Each`] every send is confirmed already: returns `Ok`.
    ///
    /// Dropping the app's last handle stores what is buffered too (on a
    /// multi-threaded runtime the drop waits for it, up to 10 s), but only `flush`
    /// tells you whether it worked, and a runtime that ends first (the end of a
    /// `current_thread` `main`) cancels the publisher: flush before that.
    pub async fn flush(&self) -> Result<(), Error> {
        match &self.inner.publisher {
            Some(publisher) => publisher.flush().await,
            None => Ok(()),
        }
    }

    /// Deferred sends handed over and not yet confirmed by the broker (0 with
    /// [`PublishConfirms::Each`]).
    pub fn unconfirmed_sends(&self) -> usize {
        self.inner.publisher.as_ref().map_or(0, Publisher::pending)
    }

    /// A handle to the result of `task_id`.
    pub fn result<R: DeserializeOwned>(&self, task_id: impl Into<String>) -> AsyncResult<R> {
        AsyncResult::new(task_id.into(), self.inner.backend.clone())
    }

    /// Sends a workflow (see [`crate::canvas`]): a plain signature, a chain, a group
    /// or a chord. Returns the handle of its result: the task's, the last chain
    /// step's, or the chord body's (for a group, use [`App::apply_group`]).
    pub async fn apply(&self, signature: Signature) -> Result<AsyncResult<Value>, Error> {
        let applied = self.apply_signature(signature).await?;
        Ok(self.result(applied.id))
    }

    /// Sends a group signature; returns its [`GroupResult`] (results in order).
    pub async fn apply_group(&self, group: Signature) -> Result<GroupResult, Error> {
        if group.subtask_type.as_deref() != Some("group") {
            return Err(Error::Workflow(format!(
                "apply_group needs a group signature, got {}",
                group.subtask_type.as_deref().unwrap_or("a plain task")
            )));
        }
        let applied = self.apply_signature(group).await?;
        let results = applied.members.into_iter().map(|id| self.result(id));
        Ok(GroupResult::new(applied.id, results.collect()))
    }

    async fn apply_signature(
        &self,
        signature: Signature,
    ) -> Result<celeriac_worker::apply::Applied, Error> {
        let ctx = celeriac_worker::apply::ApplyContext {
            sender: self,
            backend: self.inner.backend.as_deref(),
            parent_id: None,
            root_id: None,
            chord_expires: self.inner.settings.result_expires(),
        };
        celeriac_worker::apply::apply(&ctx, &signature, None, Vec::new())
            .await
            .map_err(Error::Workflow)
    }

    /// Sends a task by name (it may be registered only in another process, Python
    /// workers included).
    ///
    /// With [`PublishConfirms::Deferred`] it returns once the message is handed to
    /// the app's publisher (see [`AppBuilder::publish_confirms`]); if an earlier
    /// deferred publish failed and no send reported it yet, this call returns that
    /// [`Error::PublishFailed`] instead and sends nothing.
    pub async fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: SendOptions,
    ) -> Result<AsyncResult<Value>, Error> {
        let task_options = self.inner.registry.get(name).map(|t| t.options().clone());
        self.send_with(name, task_options.as_ref(), args, kwargs, options, true)
            .await
    }

    /// Sends a task declared in this program with typed result `R` (used by
    /// `#[task]`'s `delay` and `apply_async`). Publish confirms as for
    /// [`App::send_task`].
    pub async fn send_declared<R: DeserializeOwned>(
        &self,
        task: &dyn Task,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: SendOptions,
    ) -> Result<AsyncResult<R>, Error> {
        let result = self
            .send_with(
                task.name(),
                Some(task.options()),
                args,
                kwargs,
                options,
                true,
            )
            .await?;
        Ok(AsyncResult::new(
            result.id().to_string(),
            self.inner.backend.clone(),
        ))
    }

    /// Sends many tasks; returns their ids in order. With unique calls
    /// ([`SendOptions::unique`]) or publish-once calls, the batch is one broker
    /// publish after all are prepared, and a duplicate refuses the whole batch
    /// (nothing is sent) with [`Error::Duplicate`]. A batch of plain calls larger than
    /// [`BATCH_CHUNK`] goes out in chunks of that size, each published while the next
    /// is prepared; if a chunk fails, the chunks before it are sent (as with a
    /// pipeline that breaks) and the error is returned.
    pub async fn send_batch(&self, calls: Vec<TaskCall>) -> Result<Vec<String>, Error> {
        self.after_deferred_sends().await?;
        if calls.len() > BATCH_CHUNK
            && calls
                .iter()
                .all(|c| c.options.unique.is_none() && c.options.publish_once.is_none())
        {
            return self.send_batch_in_chunks(calls).await;
        }
        let mut ids = Vec::with_capacity(calls.len());
        let mut publishes = Vec::with_capacity(calls.len());
        let mut claimed = Vec::new();
        let mut once = Vec::new();
        let prepared: Result<(), Error> = async {
            for mut call in calls {
                if let Some(lease) = self
                    .claim_unique(&call.name, &call.args, &call.kwargs, &mut call.options)
                    .await?
                {
                    claimed.push(lease);
                }
                let publish_once = call.options.publish_once;
                let (id, mut batch) = self.prepare_call(call)?;
                match publish_once {
                    Some(window) => once.push((id.clone(), window, batch)),
                    None => publishes.append(&mut batch),
                }
                ids.push(id);
            }
            self.publish_chunk(publishes).await?;
            for (id, window, batch) in once {
                self.publish_send(&id, Some(window), batch).await?;
            }
            Ok(())
        }
        .await;
        if let Err(error) = prepared {
            for lease in &claimed {
                self.release_claim(lease).await;
            }
            return Err(error);
        }
        Ok(ids)
    }

    /// [`App::send_batch`] of plain calls: chunk `k + 1` is prepared (messages built
    /// and serialized on this task) while chunk `k`'s publish is with the broker, so
    /// the producer's CPU and the broker's work overlap instead of taking turns.
    async fn send_batch_in_chunks(&self, calls: Vec<TaskCall>) -> Result<Vec<String>, Error> {
        let mut ids = Vec::with_capacity(calls.len());
        let mut calls = calls.into_iter();
        let mut in_flight = None;
        loop {
            let chunk: Vec<TaskCall> = calls.by_ref().take(BATCH_CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            let prepared = match in_flight.take() {
                None => self.prepare_chunk(chunk, &mut ids),
                Some(publish) => {
                    // `join!` polls the publish first: it is handed to the broker
                    // before the next chunk is prepared.
                    let (published, prepared) =
                        futures::join!(publish, async { self.prepare_chunk(chunk, &mut ids) });
                    published?;
                    prepared
                }
            }?;
            in_flight = Some(self.publish_chunk(prepared));
        }
        if let Some(publish) = in_flight {
            publish.await?;
        }
        Ok(ids)
    }

    /// Builds the messages of plain calls (no unique, no publish-once), adding their
    /// ids to `ids`.
    fn prepare_chunk(
        &self,
        calls: Vec<TaskCall>,
        ids: &mut Vec<String>,
    ) -> Result<Vec<Publish>, Error> {
        let mut publishes = Vec::with_capacity(calls.len());
        for call in calls {
            let (id, mut batch) = self.prepare_call(call)?;
            publishes.append(&mut batch);
            ids.push(id);
        }
        Ok(publishes)
    }

    /// The id and messages of one batch call, with the options of the task when it
    /// is declared in this program.
    fn prepare_call(&self, call: TaskCall) -> Result<(String, Vec<Publish>), Error> {
        let task_options = self
            .inner
            .registry
            .get(&call.name)
            .map(|t| t.options().clone());
        self.prepare(
            &call.name,
            task_options.as_ref(),
            call.args,
            call.kwargs,
            call.options,
        )
    }

    /// Publishes prepared messages (a chunk, or a whole batch) and their `task-sent`
    /// events.
    async fn publish_chunk(&self, publishes: Vec<Publish>) -> Result<(), Error> {
        let sent_events = crate::control::sent_events(self, &publishes);
        self.inner.broker.publish(publishes).await?;
        crate::control::send_events(self, sent_events).await;
        Ok(())
    }

    async fn send_with(
        &self,
        name: &str,
        task_options: Option<&TaskOptions>,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        mut options: SendOptions,
        may_defer: bool,
    ) -> Result<AsyncResult<Value>, Error> {
        self.report_deferred_failure()?;
        if let (Some(publisher), true) = (&self.inner.publisher, may_defer) {
            // Unique and publish-once sends need the broker's answer: they take the
            // confirmed path below.
            if options.unique.is_none() && options.publish_once.is_none() {
                let (id, publishes) = self.prepare(name, task_options, args, kwargs, options)?;
                let events = crate::control::sent_events(self, &publishes);
                publisher.hand_over(id.clone(), publishes, events).await?;
                return Ok(AsyncResult::new(id, self.inner.backend.clone()));
            }
        }
        self.after_deferred_sends().await?;
        let claimed = self
            .claim_unique(name, &args, &kwargs, &mut options)
            .await?;
        let publish_once = options.publish_once;
        let sent = match self.prepare(name, task_options, args, kwargs, options) {
            Ok((id, publishes)) => self
                .publish_send(&id, publish_once, publishes)
                .await
                .map(|()| id),
            Err(error) => Err(error),
        };
        match sent {
            Ok(id) => Ok(AsyncResult::new(id, self.inner.backend.clone())),
            Err(error) => {
                if let Some(lease) = &claimed {
                    self.release_claim(lease).await;
                }
                Err(error)
            }
        }
    }

    /// Before a confirmed send: waits for the deferred sends handed over before it
    /// (so it does not overtake them), then returns a deferred failure no send has
    /// returned yet.
    async fn after_deferred_sends(&self) -> Result<(), Error> {
        if let Some(publisher) = &self.inner.publisher {
            publisher.barrier().await?;
        }
        self.report_deferred_failure()
    }

    /// With deferred confirms, the first publish failure no send has returned yet.
    fn report_deferred_failure(&self) -> Result<(), Error> {
        match self
            .inner
            .publisher
            .as_ref()
            .and_then(Publisher::take_unreported)
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Publishes one send's messages and its `task-sent` events; with `publish_once`,
    /// at most once per task id within that window ([`SendOptions::publish_once`]).
    async fn publish_send(
        &self,
        id: &str,
        publish_once: Option<Duration>,
        publishes: Vec<Publish>,
    ) -> Result<(), Error> {
        let sent_events = crate::control::sent_events(self, &publishes);
        let stored = match publish_once {
            Some(window) => {
                let key = format!("task:{id}");
                self.inner
                    .broker
                    .publish_once(&key, window, publishes)
                    .await?
            }
            None => {
                self.inner.broker.publish(publishes).await?;
                true
            }
        };
        if stored {
            crate::control::send_events(self, sent_events).await;
        } else {
            tracing::debug!(task_id = %id, "already published within its publish-once window; not sent again");
        }
        Ok(())
    }

    /// Unique enqueue: takes `unique:<key>` for the TTL and names it in the message's
    /// `celeriac_unique` header (the worker releases it at the task's final outcome),
    /// or refuses with [`Error::Duplicate`]. Assigns the task id now, so the lock's
    /// owner names it.
    async fn claim_unique(
        &self,
        name: &str,
        args: &[Value],
        kwargs: &Map<String, Value>,
        options: &mut SendOptions,
    ) -> Result<Option<Lease>, Error> {
        let Some(unique) = options.unique.clone() else {
            return Ok(None);
        };
        let locks = self.require_locks()?;
        let key = keys::unique(name, unique.key.as_deref(), args, kwargs);
        let id = options
            .task_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let owner = format!("{} sent {name}[{id}]", self.inner.origin);
        match locks
            .acquire(&AcquireParams::new(key.clone(), unique.ttl, owner))
            .await?
        {
            Some(lease) => {
                options.headers.insert(
                    keys::UNIQUE_HEADER.into(),
                    keys::unique_header(&lease.key, &lease.token),
                );
                Ok(Some(lease))
            }
            None => Err(Error::Duplicate {
                key,
                task: name.to_string(),
            }),
        }
    }

    /// Gives back a unique lock whose send failed.
    async fn release_claim(&self, lease: &Lease) {
        if let Some(locks) = &self.inner.locks {
            if let Err(error) = locks.release(lease).await {
                tracing::warn!(%error, key = %lease.key, "releasing the unique lock of a failed send failed; it lapses at its TTL");
            }
        }
    }

    /// Builds the message(s) of one send: one per destination queue. Takes no unique
    /// lock: [`SendOptions::unique`] is honoured by the `send_*` methods.
    pub fn prepare(
        &self,
        name: &str,
        task_options: Option<&TaskOptions>,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: SendOptions,
    ) -> Result<(String, Vec<Publish>), Error> {
        let destinations = self.inner.router.resolve(name, task_options, &options)?;
        let id = options
            .task_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut message = TaskMessage::new(name, id.clone(), args, kwargs);
        let now = Utc::now();
        let headers = &mut message.headers;
        headers.eta = options.eta.or_else(|| {
            options
                .countdown
                .and_then(|c| chrono::Duration::from_std(c).ok())
                .map(|c| now + c)
        });
        let expires_in = options
            .expires_in
            .or_else(|| task_options.and_then(|t| t.expires));
        headers.expires = options.expires_at.or_else(|| {
            expires_in
                .and_then(|e| chrono::Duration::from_std(e).ok())
                .map(|e| now + e)
        });
        let hard = options
            .time_limit
            .or_else(|| task_options.and_then(|t| t.time_limit));
        let soft = options
            .soft_time_limit
            .or_else(|| task_options.and_then(|t| t.soft_time_limit));
        headers.timelimit = [
            hard.and_then(|d| serde_json::Number::from_f64(d.as_secs_f64())),
            soft.and_then(|d| serde_json::Number::from_f64(d.as_secs_f64())),
        ];
        headers.ignore_result = Some(
            options
                .ignore_result
                .or_else(|| task_options.map(|t| t.ignore_result))
                .unwrap_or(self.inner.settings.task_ignore_result),
        );
        headers.shadow = options.shadow.clone();
        headers.retries = options.retries.unwrap_or(0);
        headers.parent_id = options.parent_id.clone();
        if let Some(root) = &options.root_id {
            headers.root_id = Some(root.clone());
        }
        headers.group = options.group_id.clone();
        headers.group_index = options.group_index;
        headers.argsrepr = Some(python_repr_args(&message.args));
        headers.kwargsrepr = Some(python_repr_kwargs(&message.kwargs));
        headers.origin = Some(self.inner.origin.clone());
        for (key, value) in &options.headers {
            headers.extra.insert(key.clone(), value.clone());
        }
        if let Some(embed) = &options.embed {
            message.embed = embed.clone();
        }
        message.properties.priority = options
            .priority
            .or_else(|| task_options.and_then(|t| t.priority))
            .or(Some(0));
        if let Some(expires) = message.headers.expires {
            let ms = (expires - now).num_milliseconds().max(0);
            message.properties.expiration = Some(ms.to_string());
        }
        let limit = self.inner.settings.task_max_message_bytes;
        // `task_compression` was checked when the app was built; a per-send
        // `compression` is checked here.
        let compress = match options.compression.as_deref() {
            Some(name) if celeriac_core::message::compression_type(name).is_none() => {
                return Err(Error::Encode(format!(
                    "compression {name:?} is not one celeriac writes (gzip or zlib)"
                )));
            }
            Some(_) => true,
            None => !self.inner.settings.task_compression.is_empty(),
        };
        let not_before = message.headers.eta;
        let mut publishes = Vec::with_capacity(destinations.len());
        for destination in destinations {
            message.properties.delivery_info = Some(celeriac_core::message::DeliveryInfo {
                exchange: destination.exchange.clone(),
                routing_key: destination.routing_key.clone(),
                redelivered: None,
            });
            message.properties.delivery_tag = Some(uuid::Uuid::new_v4().to_string());
            let mut envelope = message.encode();
            if envelope.body.len() > limit {
                return Err(Error::TooLarge {
                    size: envelope.body.len(),
                    limit,
                });
            }
            if compress {
                celeriac_core::message::compress_body(&mut envelope);
            }
            if let Some(key) = &self.inner.signing {
                key.sign(&mut envelope);
            }
            publishes.push(Publish {
                queue: destination.queue,
                envelope,
                not_before,
            });
        }
        Ok((id, publishes))
    }
}

/// Sends of workflows ([`App::apply`]) and of workers (chain steps, callbacks, a
/// late-ack task's follow-ups before its ack) always wait for the broker's confirm,
/// whatever [`PublishConfirms`] says.
impl TaskSender for App {
    fn send_task(
        &self,
        name: &str,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        options: SendOptions,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        let name = name.to_string();
        Box::pin(async move {
            let task_options = self.inner.registry.get(&name).map(|t| t.options().clone());
            self.send_with(&name, task_options.as_ref(), args, kwargs, options, false)
                .await
                .map(|r| r.id().to_string())
                .map_err(|e| e.to_string())
        })
    }
}

/// A Python-style `repr` of positional arguments, truncated to 1024 characters.
fn python_repr_args(args: &[Value]) -> String {
    let inner: Vec<String> = args.iter().map(python_repr).collect();
    let text = if inner.len() == 1 {
        format!("({},)", inner[0])
    } else {
        format!("({})", inner.join(", "))
    };
    truncate(text)
}

fn python_repr_kwargs(kwargs: &Map<String, Value>) -> String {
    let inner: Vec<String> = kwargs
        .iter()
        .map(|(k, v)| format!("'{}': {}", k, python_repr(v)))
        .collect();
    truncate(format!("{{{}}}", inner.join(", ")))
}

fn python_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(python_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => python_repr_kwargs(map),
    }
}

fn truncate(mut text: String) -> String {
    if text.len() > 1024 {
        let mut cut = 1021;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

impl App {
    /// A worker config consuming every declared queue with its own settings.
    pub fn worker_config(&self) -> celeriac_worker::WorkerConfig {
        celeriac_worker::WorkerConfig::from_settings(
            &self.inner.settings,
            self.inner.hostname.clone(),
            self.inner.router.queues(),
        )
    }

    /// A worker for this app's tasks, broker, backend and lock store; running tasks
    /// can send follow-up tasks through the app.
    pub fn worker(&self, config: celeriac_worker::WorkerConfig) -> celeriac_worker::Worker {
        let worker = celeriac_worker::Worker::new(
            config,
            self.inner.registry.clone(),
            self.inner.broker.clone(),
            self.inner.backend.clone(),
        )
        .with_sender(Arc::new(self.clone()));
        match &self.inner.locks {
            Some(locks) => worker.with_locks(locks.clone()),
            None => worker,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reprs_look_like_python() {
        assert_eq!(python_repr_args(&[json!(2), json!(3)]), "(2, 3)");
        assert_eq!(python_repr_args(&[json!("a")]), "('a',)");
        let mut kw = Map::new();
        kw.insert("x".into(), json!(null));
        assert_eq!(python_repr_kwargs(&kw), "{'x': None}");
    }
}

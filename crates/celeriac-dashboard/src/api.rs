//! The HTTP routes: the page, the JSON API, the event stream and the metrics.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use celeriac_backend::{BackendError, ResultQuery};
use celeriac_beat::{Entry, ListParams};
use celeriac_broker::{DeadLetterQuery, WorkerInfo};
use celeriac_core::TaskState;
use chrono::Utc;
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{metrics, DashboardState};

/// The dashboard page.
const PAGE: &str = include_str!("ui.html");
/// The OpenAPI description.
const OPENAPI: &str = include_str!("openapi.json");

/// The dashboard's routes over `state`.
pub fn router(state: DashboardState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/openapi.json", get(openapi))
        .route("/api/overview", get(overview))
        .route("/api/workers", get(workers))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{id}", get(task))
        .route("/api/queues", get(queues))
        .route("/api/queues/rates", get(queue_rates))
        .route("/api/queues/{name}/dead-letters", get(dead_letters))
        .route("/api/queues/{name}/purge", post(purge))
        .route("/api/schedules", get(schedules).post(put_schedule))
        .route(
            "/api/schedules/{name}",
            get(schedule).put(replace_schedule).delete(remove_schedule),
        )
        .route("/api/schedules/{name}/enable", post(enable_schedule))
        .route("/api/schedules/{name}/disable", post(disable_schedule))
        .route("/api/schedules/{name}/run", post(run_schedule))
        .route("/api/locks", get(locks))
        .route("/api/locks/{key}", axum::routing::delete(release_lock))
        .route("/api/tasks/{id}/revoke", post(revoke))
        .route("/api/control/rate-limit", post(rate_limit))
        .route("/api/workers/{hostname}/shutdown", post(shutdown))
        .route("/api/workers/{hostname}/inspect/{what}", get(inspect))
        .route("/api/stream", get(stream))
        .route("/metrics", get(prometheus))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::guard,
        ))
        .with_state(state)
}

/// An error answered as `{"error": "..."}` with a status.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String);

impl ApiError {
    fn not_found(what: impl Into<String>) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, what.into())
    }
    fn bad_request(what: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, what.into())
    }
    fn unavailable(what: &str) -> ApiError {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no {what} is configured for this dashboard"),
        )
    }
    pub(crate) fn internal(error: impl std::fmt::Display) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// A worker as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct WorkerView {
    #[serde(flatten)]
    info: WorkerInfo,
    /// Seconds since its last heartbeat.
    heartbeat_age: f64,
    /// Online and heard from within two heartbeats.
    alive: bool,
}

pub(crate) async fn worker_views(state: &DashboardState) -> Result<Vec<WorkerView>, ApiError> {
    let now = Utc::now();
    let mut workers = state.broker.workers().await.map_err(ApiError::internal)?;
    workers.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    Ok(workers
        .into_iter()
        .map(|info| WorkerView {
            heartbeat_age: (now - info.last_heartbeat).num_milliseconds() as f64 / 1000.0,
            alive: info.is_alive(now),
            info,
        })
        .collect())
}

impl WorkerView {
    pub(crate) fn alive(&self) -> bool {
        self.alive
    }
    pub(crate) fn hostname(&self) -> &str {
        &self.info.hostname
    }
    pub(crate) fn active(&self) -> u64 {
        self.info.active
    }
    pub(crate) fn processed(&self) -> u64 {
        self.info.processed
    }
    pub(crate) fn heartbeat_age(&self) -> f64 {
        self.heartbeat_age
    }
}

async fn workers(State(state): State<DashboardState>) -> ApiResult<Vec<WorkerView>> {
    Ok(Json(worker_views(&state).await?))
}

/// Tasks by state, or an empty map when the backend cannot count.
pub(crate) async fn task_counts(state: &DashboardState) -> Result<BTreeMap<String, u64>, ApiError> {
    let Some(backend) = &state.backend else {
        return Ok(BTreeMap::new());
    };
    match backend.count_by_state().await {
        Ok(counts) => Ok(counts
            .into_iter()
            .map(|(state, n)| (state.as_str().to_string(), n))
            .collect()),
        Err(BackendError::Unsupported { .. }) => Ok(BTreeMap::new()),
        Err(error) => Err(ApiError::internal(error)),
    }
}

async fn overview_value(state: &DashboardState) -> Result<Value, ApiError> {
    let workers = worker_views(state).await?;
    let queues = state
        .broker
        .queue_stats(&[])
        .await
        .map_err(ApiError::internal)?;
    let counts = task_counts(state).await?;
    Ok(json!({
        "time": Utc::now().to_rfc3339(),
        "workers": {
            "alive": workers.iter().filter(|w| w.alive).count(),
            "total": workers.len(),
            "active": workers.iter().filter(|w| w.alive).map(|w| w.info.active).sum::<u64>(),
        },
        "queues": queues,
        "tasks": counts,
        "workers_list": workers,
    }))
}

async fn overview(State(state): State<DashboardState>) -> ApiResult<Value> {
    Ok(Json(overview_value(&state).await?))
}

/// `GET /api/tasks` filters.
#[derive(Debug, Deserialize)]
struct TaskFilter {
    /// Only this state (`SUCCESS`, `FAILURE`, ...).
    state: Option<String>,
    /// Only this task name (results stored with `result_extended`).
    name: Option<String>,
    /// Only this queue (results stored with `result_extended`).
    queue: Option<String>,
    /// Task id (exact) or part of it.
    q: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

async fn tasks(
    State(state): State<DashboardState>,
    Query(filter): Query<TaskFilter>,
) -> ApiResult<Vec<Value>> {
    let limit = filter.limit.unwrap_or(100).min(1000);
    if let Some(history) = state.history.as_ref().filter(|h| !h.is_empty()) {
        // Task events give the richest view (received, started, runtime, worker).
        let records = history.list(limit, |r| {
            filter.state.as_ref().is_none_or(|s| &r.status == s)
                && filter
                    .name
                    .as_ref()
                    .is_none_or(|n| r.name.as_ref() == Some(n))
                && filter
                    .queue
                    .as_ref()
                    .is_none_or(|q| r.routing_key.as_ref() == Some(q))
                && filter
                    .q
                    .as_ref()
                    .is_none_or(|q| r.task_id.contains(q.as_str()))
        });
        return Ok(Json(
            records
                .into_iter()
                .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
                .collect(),
        ));
    }
    let backend = state
        .backend
        .as_ref()
        .ok_or(ApiError::unavailable("result backend"))?;
    if let Some(id) = filter.q.as_deref().filter(|q| q.len() >= 32) {
        // A whole task id: read it directly (works on backends without listings).
        let found = backend.get(id).await.map_err(ApiError::internal)?;
        return Ok(Json(found.into_iter().map(meta_json).collect()));
    }
    let query = ResultQuery {
        state: filter.state.as_deref().map(TaskState::parse),
        // Filters by name / queue / id fragment are applied here; read more to fill.
        limit: if filter.name.is_some() || filter.queue.is_some() || filter.q.is_some() {
            5000
        } else {
            limit
        },
    };
    let metas = match backend.recent(&query).await {
        Ok(metas) => metas,
        Err(BackendError::Unsupported { .. }) => {
            return Err(ApiError(
                StatusCode::NOT_IMPLEMENTED,
                format!(
                    "{} keeps no index of results: search by task id (q=ID)",
                    backend.describe()
                ),
            ))
        }
        Err(error) => return Err(ApiError::internal(error)),
    };
    let matching = metas
        .into_iter()
        .filter(|m| {
            filter
                .name
                .as_ref()
                .is_none_or(|n| m.name.as_ref() == Some(n))
        })
        .filter(|m| {
            filter
                .queue
                .as_ref()
                .is_none_or(|q| m.queue.as_ref() == Some(q))
        })
        .filter(|m| {
            filter
                .q
                .as_ref()
                .is_none_or(|q| m.task_id.contains(q.as_str()))
        })
        .take(limit)
        .map(meta_json)
        .collect();
    Ok(Json(matching))
}

fn meta_json(meta: celeriac_core::TaskMeta) -> Value {
    serde_json::to_value(meta).unwrap_or(Value::Null)
}

async fn task(State(state): State<DashboardState>, Path(id): Path<String>) -> ApiResult<Value> {
    let events = state
        .history
        .as_ref()
        .and_then(|h| h.get(&id))
        .map(|r| serde_json::to_value(r).unwrap_or(Value::Null));
    let stored = match &state.backend {
        Some(backend) => backend.get(&id).await.map_err(ApiError::internal)?,
        None => None,
    };
    match (stored, events) {
        (Some(meta), events) => {
            let mut value = meta_json(meta);
            if let (Value::Object(fields), Some(events)) = (&mut value, events) {
                fields.insert("events".into(), events);
            }
            Ok(Json(value))
        }
        (None, Some(events)) => Ok(Json(events)),
        (None, None) => Err(ApiError::not_found(format!(
            "no result stored for task {id} (PENDING: unknown, queued, or expired)"
        ))),
    }
}

async fn queues(State(state): State<DashboardState>) -> ApiResult<Value> {
    let stats = state
        .broker
        .queue_stats(&[])
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!(stats)))
}

async fn queue_rates(State(state): State<DashboardState>) -> ApiResult<Value> {
    let rates = state
        .rates
        .as_ref()
        .ok_or(ApiError::unavailable("queue rate sampler"))?;
    Ok(Json(json!({
        "interval_seconds": crate::rates::SAMPLE_INTERVAL.as_secs_f64(),
        "queues": rates.series(),
        "unattributed": rates.unattributed(),
    })))
}

async fn dead_letters(
    State(state): State<DashboardState>,
    Path(name): Path<String>,
) -> ApiResult<Vec<Value>> {
    let query = DeadLetterQuery {
        queue: Some(name),
        limit: 100,
    };
    let letters = state
        .broker
        .dead_letters(&query)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        letters
            .into_iter()
            .map(|d| {
                json!({"id": d.id, "queue": d.queue, "reason": d.reason, "at": d.at.to_rfc3339(),
                       "payload": String::from_utf8_lossy(&d.payload)})
            })
            .collect(),
    ))
}

async fn purge(State(state): State<DashboardState>, Path(name): Path<String>) -> ApiResult<Value> {
    let deleted = state
        .broker
        .purge(&name)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({"queue": name, "purged": deleted})))
}

fn schedule_store(
    state: &DashboardState,
) -> Result<&std::sync::Arc<dyn celeriac_beat::ScheduleStore>, ApiError> {
    state
        .schedules
        .as_ref()
        .ok_or(ApiError::unavailable("schedule store"))
}

/// An entry with its next due time.
fn entry_json(entry: &Entry) -> Value {
    let mut value = serde_json::to_value(entry).unwrap_or(Value::Null);
    let next = entry
        .schedule
        .next_after(Utc::now())
        .map(|at| at.to_rfc3339());
    if let Value::Object(fields) = &mut value {
        fields.insert("next_run_at".into(), json!(next));
    }
    value
}

async fn schedules(State(state): State<DashboardState>) -> ApiResult<Vec<Value>> {
    let store = schedule_store(&state)?;
    let entries = store
        .list(&ListParams::all())
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(entries.iter().map(entry_json).collect()))
}

async fn schedule(
    State(state): State<DashboardState>,
    Path(name): Path<String>,
) -> ApiResult<Value> {
    let store = schedule_store(&state)?;
    match store.get(&name).await.map_err(ApiError::internal)? {
        Some(entry) => Ok(Json(entry_json(&entry))),
        None => Err(ApiError::not_found(format!("no schedule entry {name:?}"))),
    }
}

async fn put_schedule(
    State(state): State<DashboardState>,
    Json(body): Json<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let entry: Entry = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("not a schedule entry: {e}")))?;
    save_entry(&state, entry).await
}

async fn replace_schedule(
    State(state): State<DashboardState>,
    Path(name): Path<String>,
    Json(mut body): Json<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if let Value::Object(fields) = &mut body {
        fields.insert("name".into(), Value::String(name));
    }
    let entry: Entry = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("not a schedule entry: {e}")))?;
    save_entry(&state, entry).await
}

async fn save_entry(
    state: &DashboardState,
    entry: Entry,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if entry.name.trim().is_empty() || entry.task.trim().is_empty() {
        return Err(ApiError::bad_request("an entry needs a name and a task"));
    }
    let store = schedule_store(state)?;
    store.upsert(&entry).await.map_err(|e| match e {
        celeriac_beat::BeatError::Schedule(_) | celeriac_beat::BeatError::InvalidEntry(_) => {
            ApiError::bad_request(e.to_string())
        }
        other => ApiError::internal(other),
    })?;
    let saved = store
        .get(&entry.name)
        .await
        .map_err(ApiError::internal)?
        .unwrap_or(entry);
    Ok((StatusCode::OK, Json(entry_json(&saved))))
}

async fn remove_schedule(
    State(state): State<DashboardState>,
    Path(name): Path<String>,
) -> ApiResult<Value> {
    let store = schedule_store(&state)?;
    if store.remove(&name).await.map_err(ApiError::internal)? {
        Ok(Json(json!({"removed": name})))
    } else {
        Err(ApiError::not_found(format!("no schedule entry {name:?}")))
    }
}

async fn set_enabled(state: &DashboardState, name: &str, enabled: bool) -> ApiResult<Value> {
    let store = schedule_store(state)?;
    if store
        .set_enabled(name, enabled)
        .await
        .map_err(ApiError::internal)?
    {
        Ok(Json(json!({"name": name, "enabled": enabled})))
    } else {
        Err(ApiError::not_found(format!("no schedule entry {name:?}")))
    }
}

async fn enable_schedule(
    State(state): State<DashboardState>,
    Path(name): Path<String>,
) -> ApiResult<Value> {
    set_enabled(&state, &name, true).await
}

async fn disable_schedule(
    State(state): State<DashboardState>,
    Path(name): Path<String>,
) -> ApiResult<Value> {
    set_enabled(&state, &name, false).await
}

async fn run_schedule(
    State(state): State<DashboardState>,
    Path(name): Path<String>,
) -> ApiResult<Value> {
    let store = schedule_store(&state)?;
    let sender = state
        .sender
        .as_ref()
        .ok_or(ApiError::unavailable("task sender"))?;
    let entry = store
        .get(&name)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no schedule entry {name:?}")))?;
    let id = uuid::Uuid::new_v4().to_string();
    let options = entry.send_options(Utc::now(), &id);
    let sent = sender
        .send_task(
            &entry.task,
            entry.args.clone(),
            entry.kwargs.clone(),
            options,
        )
        .await
        .map_err(|e| ApiError::internal(format!("sending {} failed: {e}", entry.task)))?;
    Ok(Json(json!({"name": name, "task_id": sent})))
}

async fn locks(State(state): State<DashboardState>) -> ApiResult<Vec<Value>> {
    let store = state
        .locks
        .as_ref()
        .ok_or(ApiError::unavailable("lock store"))?;
    let now = Utc::now();
    let locks = store.list().await.map_err(ApiError::internal)?;
    Ok(Json(
        locks
            .into_iter()
            .map(|lock| {
                let left = (lock.expires_at - now).num_milliseconds() as f64 / 1000.0;
                let mut value = serde_json::to_value(&lock).unwrap_or(Value::Null);
                if let Value::Object(fields) = &mut value {
                    fields.insert("lease_left".into(), json!(left.max(0.0)));
                }
                value
            })
            .collect(),
    ))
}

async fn release_lock(
    State(state): State<DashboardState>,
    Path(key): Path<String>,
) -> ApiResult<Value> {
    let store = state
        .locks
        .as_ref()
        .ok_or(ApiError::unavailable("lock store"))?;
    if store
        .force_release(&key)
        .await
        .map_err(ApiError::internal)?
    {
        Ok(Json(json!({"released": key})))
    } else {
        Err(ApiError::not_found(format!("no live lock {key:?}")))
    }
}

fn controller(state: &DashboardState) -> Result<&std::sync::Arc<dyn crate::Controller>, ApiError> {
    state
        .control
        .as_ref()
        .ok_or(ApiError::unavailable("remote control"))
}

/// Replies as `{"replies": {node: reply}}`.
fn replies(pairs: Vec<(String, Value)>) -> Value {
    let map: serde_json::Map<String, Value> = pairs.into_iter().collect();
    json!({"replies": map})
}

fn object(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// `POST /api/tasks/{id}/revoke` body.
#[derive(Debug, Default, Deserialize)]
struct RevokeBody {
    /// Also stop it if it is running.
    #[serde(default)]
    terminate: bool,
}

async fn revoke(
    State(state): State<DashboardState>,
    Path(id): Path<String>,
    body: Option<Json<RevokeBody>>,
) -> ApiResult<Value> {
    let control = controller(&state)?;
    let terminate = body.map(|Json(b)| b.terminate).unwrap_or(false);
    let arguments = object(json!({"task_id": id, "terminate": terminate, "signal": "SIGTERM"}));
    let pairs = control
        .command("revoke", arguments, None)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(replies(pairs)))
}

/// `POST /api/control/rate-limit` body.
#[derive(Debug, Deserialize)]
struct RateLimitBody {
    /// The task type.
    task: String,
    /// `"10/m"`, `"5/s"`; `"0"` removes the limit.
    rate: String,
    /// Only these workers.
    #[serde(default)]
    destination: Option<Vec<String>>,
}

async fn rate_limit(
    State(state): State<DashboardState>,
    Json(body): Json<RateLimitBody>,
) -> ApiResult<Value> {
    if body.task.trim().is_empty() {
        return Err(ApiError::bad_request("a task name is required"));
    }
    if body.rate.trim() != "0" && celeriac_core::RateLimit::parse(&body.rate).is_err() {
        return Err(ApiError::bad_request(format!(
            "{:?} is not a rate limit (e.g. 10/m, 5/s, 100/h; 0 removes it)",
            body.rate
        )));
    }
    let control = controller(&state)?;
    let arguments = object(json!({"task_name": body.task, "rate_limit": body.rate}));
    let pairs = control
        .command("rate_limit", arguments, body.destination)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(replies(pairs)))
}

async fn shutdown(
    State(state): State<DashboardState>,
    Path(hostname): Path<String>,
) -> ApiResult<Value> {
    let control = controller(&state)?;
    let pairs = control
        .command("shutdown", serde_json::Map::new(), Some(vec![hostname]))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(replies(pairs)))
}

/// The inspect commands the API forwards.
const INSPECT: &[&str] = &[
    "active",
    "reserved",
    "scheduled",
    "registered",
    "stats",
    "revoked",
    "active_queues",
];

async fn inspect(
    State(state): State<DashboardState>,
    Path((hostname, what)): Path<(String, String)>,
) -> ApiResult<Value> {
    if !INSPECT.contains(&what.as_str()) {
        return Err(ApiError::bad_request(format!(
            "unknown inspect command {what:?} (one of {})",
            INSPECT.join(", ")
        )));
    }
    let control = controller(&state)?;
    let pairs = control
        .command(&what, serde_json::Map::new(), Some(vec![hostname]))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(replies(pairs)))
}

async fn stream(
    State(state): State<DashboardState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticks = futures::stream::unfold((state, true), |(state, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let event = match overview_value(&state).await {
            Ok(value) => Event::default().event("overview").data(value.to_string()),
            Err(ApiError(_, message)) => Event::default()
                .event("problem")
                .data(json!({"error": message}).to_string()),
        };
        Some((Ok(event), (state, false)))
    });
    Sse::new(ticks).keep_alive(KeepAlive::default())
}

async fn prometheus(State(state): State<DashboardState>) -> Response {
    match metrics::render(&state).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}

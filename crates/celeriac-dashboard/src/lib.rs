//! The celeriac dashboard: one page that shows and steers the whole system, and the
//! JSON REST API behind every screen.
//!
//! | path | what |
//! |---|---|
//! | `GET /` | the dashboard page (workers, tasks, queues, schedules, locks; live) |
//! | `GET /api/overview` | workers alive, queue totals, tasks by state |
//! | `GET /api/workers` | every worker with heartbeat age and liveness |
//! | `GET /api/tasks?state=&name=&q=&limit=` | recent results, filtered |
//! | `GET /api/tasks/{id}` | one task's stored meta |
//! | `GET /api/queues` | depth, scheduled, held, dead letters per queue |
//! | `GET /api/queues/rates` | per-queue in / out rates over the last five minutes ([`rates`]) |
//! | `GET /api/queues/{name}/dead-letters` | a queue's dead letters with reasons |
//! | `POST /api/queues/{name}/purge` | deletes a queue's ready messages |
//! | `GET, POST /api/schedules` | list / create-or-replace schedule entries |
//! | `GET, PUT, DELETE /api/schedules/{name}` | one entry |
//! | `POST /api/schedules/{name}/enable`, `/disable`, `/run` | toggle, or send now |
//! | `GET /api/locks`, `DELETE /api/locks/{key}` | live locks, force release |
//! | `POST /api/tasks/{id}/revoke` (`{"terminate": bool}`) | revoke (and stop) a task on every worker |
//! | `POST /api/control/rate-limit` (`{"task", "rate", "destination"?}`) | change a task type's rate limit |
//! | `POST /api/workers/{hostname}/shutdown` | graceful shutdown of one worker |
//! | `GET /api/workers/{hostname}/inspect/{what}` | `active`, `reserved`, `scheduled`, `registered`, `stats`, `revoked`, `active_queues` |
//! | `GET /api/stream` | Server-Sent Events: an `overview` event every second |
//! | `GET /api/openapi.json` | the OpenAPI 3 description of this API |
//! | `GET /metrics` | Prometheus text format |
//!
//! Access: see [`Credentials`] — loopback needs no login, any other address needs
//! credentials, and control actions always do.
//!
//! Every screen reads the broker, the result backend, the schedule store and the
//! lock store it is given ([`DashboardState`]), so any number of dashboards can run
//! against one system. The dashboard's own state is what it learns from task events:
//! the task history ([`history`], in memory, or in a SQLite table so it survives a
//! restart) and the queue rates ([`rates`], in memory: the last five minutes).

mod api;
mod auth;
pub mod history;
mod metrics;
pub mod rates;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use celeriac_backend::ResultBackend;
use celeriac_beat::ScheduleStore;
use celeriac_broker::Broker;
use celeriac_core::TaskSender;
use celeriac_lock::LockManager;
use tokio_util::sync::CancellationToken;

pub use api::router;
pub use auth::Credentials;

/// The default address, Flower's port on loopback.
pub const DEFAULT_ADDR: &str = "127.0.0.1:5555";

/// What the dashboard reads and steers. Only the broker is required; screens of the
/// parts that are `None` say they are not configured.
#[derive(Clone)]
pub struct DashboardState {
    /// The broker: workers, queues, dead letters.
    pub broker: Arc<dyn Broker>,
    /// The result backend: tasks.
    pub backend: Option<Arc<dyn ResultBackend>>,
    /// The schedule store: schedules.
    pub schedules: Option<Arc<dyn ScheduleStore>>,
    /// The lock store: locks.
    pub locks: Option<Arc<dyn LockManager>>,
    /// Sends tasks (schedule "run now").
    pub sender: Option<Arc<dyn TaskSender>>,
    /// Remote control of the workers (revoke, terminate, rate limit, shutdown,
    /// inspect).
    pub control: Option<Arc<dyn Controller>>,
    /// Who may use the dashboard (see [`Credentials`]); control actions are refused
    /// without.
    pub credentials: Option<Credentials>,
    /// Task history from task events ([`history::follow`] fills it).
    pub history: Option<Arc<history::TaskHistory>>,
    /// Per-queue in / out rates ([`rates::sample_queues`] and [`history::follow`]
    /// fill them).
    pub rates: Option<Arc<rates::QueueRates>>,
}

/// Celery remote control as the dashboard uses it (the facade's `Control`
/// implements it over the broker's pidbox broadcast).
#[async_trait]
pub trait Controller: Send + Sync {
    /// Sends the remote-control `method` with `arguments` to `destination` (`None`
    /// = every worker) and returns the replies as `(node, reply)` pairs.
    async fn command(
        &self,
        method: &str,
        arguments: serde_json::Map<String, serde_json::Value>,
        destination: Option<Vec<String>>,
    ) -> Result<Vec<(String, serde_json::Value)>, String>;
}

impl DashboardState {
    /// A state with only a broker.
    pub fn new(broker: Arc<dyn Broker>) -> DashboardState {
        DashboardState {
            broker,
            backend: None,
            schedules: None,
            locks: None,
            sender: None,
            control: None,
            credentials: None,
            history: None,
            rates: None,
        }
    }
}

/// Errors of [`serve`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DashboardError {
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A non-loopback address without credentials.
    #[error("refusing to serve the dashboard on {addr} without credentials: set --token or --user/--password (or listen on 127.0.0.1)")]
    NeedsCredentials {
        /// The address.
        addr: SocketAddr,
    },
    /// The server failed.
    #[error("dashboard server error: {0}")]
    Serve(#[source] std::io::Error),
}

/// A bound dashboard, ready to serve.
pub struct Dashboard {
    listener: tokio::net::TcpListener,
    state: DashboardState,
}

impl Dashboard {
    /// Binds `addr` (port 0 picks a free port). A non-loopback address needs
    /// credentials in `state`.
    pub async fn bind(
        addr: SocketAddr,
        state: DashboardState,
    ) -> Result<Dashboard, DashboardError> {
        if !addr.ip().is_loopback() && state.credentials.is_none() {
            return Err(DashboardError::NeedsCredentials { addr });
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DashboardError::Bind { addr, source })?;
        Ok(Dashboard { listener, state })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `stop` is cancelled.
    pub async fn serve(self, stop: CancellationToken) -> Result<(), DashboardError> {
        let app = router(self.state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .map_err(DashboardError::Serve)
    }
}

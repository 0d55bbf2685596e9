//! Shared helpers of the integration tests: an isolated app on a temp SQLite file, a
//! worker running in the background, and waiting on conditions with a timeout.
#![allow(dead_code, missing_docs)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celeriac::core::{FnTask, Map, Queue, Task, TaskContext, TaskError, TaskOptions, Value};
use celeriac::worker::{StatsSnapshot, WorkerConfig, WorkerHandle};
use celeriac::{App, AppBuilder};

/// An app on its own SQLite file, ignoring the host's celeriac.toml and CELERIAC_*.
pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl TestApp {
    pub fn new() -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("celeriac.db").display());
        TestApp { dir, url }
    }

    /// A builder on this file with a short lease and shutdown timeout.
    pub fn builder(&self) -> AppBuilder {
        App::builder("test")
            .without_environment()
            .broker(self.url.clone())
            .configure(|s| {
                s.broker_transport_options.lease = 2.0;
                s.worker_shutdown_timeout = 5.0;
                s.worker_concurrency = 2;
            })
    }
}

/// A worker running in the background until stopped.
pub struct RunningWorker {
    pub handle: WorkerHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<StatsSnapshot>,
}

impl RunningWorker {
    pub fn start(app: &App, config: WorkerConfig) -> RunningWorker {
        let worker = app.worker(config);
        let handle = worker.handle();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let join = tokio::spawn(worker.run_until(async {
            let _ = rx.await;
        }));
        RunningWorker {
            handle,
            stop: Some(tx),
            join,
        }
    }

    /// Starts a worker consuming every declared queue.
    pub fn start_default(app: &App) -> RunningWorker {
        RunningWorker::start(app, app.worker_config())
    }

    /// Shuts down gracefully and returns the final counters.
    pub async fn stop(mut self) -> StatsSnapshot {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.join)
            .await
            .expect("worker stops within 30 s")
            .expect("worker task")
    }
}

/// Waits until `check` holds, polling every 5 ms; panics after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A task from a closure.
pub fn task<F, Fut>(name: &str, options: TaskOptions, f: F) -> FnTask<F>
where
    F: Fn(TaskContext, Vec<Value>, Map<String, Value>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
{
    FnTask::new(name, options, f)
}

/// Options with a few fields set.
pub fn options(edit: impl FnOnce(&mut TaskOptions)) -> TaskOptions {
    let mut o = TaskOptions::default();
    edit(&mut o);
    o
}

pub fn shared<T: Task>(t: T) -> Arc<dyn Task> {
    Arc::new(t)
}

pub fn queue(name: &str) -> Queue {
    Queue::new(name)
}

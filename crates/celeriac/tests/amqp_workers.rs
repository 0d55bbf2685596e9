//! On RabbitMQ, `Broker::workers` (the dashboard's workers screen, `celeriac workers`)
//! lists the workers from their `worker-*` events on `celeryev`, as Flower does:
//! a running celeriac worker is listed alive with its pid, and offline after it
//! stops.
//!
//! Skipped, with the reason printed, when RabbitMQ does not answer at
//! `CELERIAC_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672//`); failed
//! instead with `CELERIAC_REQUIRE_SERVICES=1`.

mod support;

use std::time::Duration;

use celeriac::core::Queue;
use celeriac::App;
use support::{wait_for, RunningWorker};

fn amqp_url_or_skip(test: &str) -> Option<String> {
    let url = std::env::var("CELERIAC_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672//".to_string());
    let answers = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], 5672)),
        Duration::from_secs(1),
    )
    .is_ok()
        || std::env::var("CELERIAC_TEST_AMQP_URL").is_ok();
    if answers {
        return Some(url);
    }
    let required = std::env::var("CELERIAC_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: RabbitMQ does not answer and CELERIAC_REQUIRE_SERVICES=1"
    );
    eprintln!("skipped {test}: RabbitMQ does not answer on 127.0.0.1:5672");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_rabbitmq_is_listed_from_its_events() {
    let Some(url) = amqp_url_or_skip("a_worker_on_rabbitmq_is_listed_from_its_events") else {
        return;
    };
    let queue = format!(
        "amqp-workers-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let separator = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{separator}queue_expires=60000");
    let app = App::builder("amqpworkers")
        .without_environment()
        .broker(url.clone())
        .backend(String::new())
        .configure({
            let queue = queue.clone();
            move |s| s.task_default_queue = queue
        })
        .queue(Queue::new(queue.as_str()))
        .build()
        .await
        .expect("app");
    let mut config = app.worker_config();
    let hostname = format!("amqpworkers-{}@test", std::process::id());
    config.hostname = hostname.clone();
    let worker = RunningWorker::start(&app, config);

    // A separate handle, as the dashboard's.
    let observer = celeriac::broker::connect(&url).await.expect("observer");
    wait_for(
        "the worker to be listed alive",
        Duration::from_secs(20),
        || {
            let observer = observer.clone();
            let hostname = hostname.clone();
            async move {
                observer.workers().await.expect("workers").iter().any(|w| {
                    w.hostname == hostname
                        && w.pid == std::process::id()
                        && w.is_alive(chrono::Utc::now())
                })
            }
        },
    )
    .await;

    worker.stop().await;
    wait_for(
        "the stopped worker to be listed offline",
        Duration::from_secs(20),
        || {
            let observer = observer.clone();
            let hostname = hostname.clone();
            async move {
                observer
                    .workers()
                    .await
                    .expect("workers")
                    .iter()
                    .any(|w| w.hostname == hostname && !w.online)
            }
        },
    )
    .await;
}

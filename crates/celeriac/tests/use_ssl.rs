//! Celery's `broker_use_ssl` / `redis_backend_use_ssl` from `celeriac.toml`: a
//! plain `redis://` URL beside a table of TLS options reaches a private TLS-only
//! `redis-server` (client certificates required) as broker and result backend, and
//! a worker runs a task whose result comes back over TLS. Skipped with the reason
//! when `openssl` or a TLS-capable `redis-server` is missing (failed with
//! `CELERIAC_REQUIRE_SERVICES=1`).

mod support;

use std::time::Duration;

use celeriac::core::{Queue, TaskOptions, Value};
use celeriac::{App, SendOptions};
use celeriac_redis::testing::tls_redis_or_skip;
use serde_json::json;
use support::{task, RunningWorker};

fn tls_table(name: &str, certs: &celeriac_redis::testing::TestCertificates) -> String {
    // Redis spelling for one, py-amqp spelling for the other: both are Celery's.
    format!(
        "[{name}]\ncert_reqs = 2\nssl_ca_certs = {:?}\nssl_certfile = {:?}\nkeyfile = {:?}\n",
        certs.ca.display().to_string(),
        certs.client_cert.display().to_string(),
        certs.client_key.display().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_backend_use_ssl_from_the_config_file() {
    let Some((server, certs)) =
        tls_redis_or_skip("broker_and_backend_use_ssl_from_the_config_file")
    else {
        return;
    };
    let toml = format!(
        "broker_url = \"redis://localhost:{port}/0\"\nresult_backend = \"redis://localhost:{port}/1\"\n{}{}",
        tls_table("broker_use_ssl", &certs),
        tls_table("redis_backend_use_ssl", &certs),
        port = server.port,
    );
    let queue = format!("use-ssl-{}", uuid::Uuid::new_v4().simple());
    let app = App::builder("test")
        .without_environment()
        .configure(|s| *s = s.clone().merge_toml_str(&toml).expect("valid TOML"))
        .queue(Queue::new(queue.clone()))
        .task(task(
            "tests.add",
            TaskOptions::default(),
            |_ctx, args, _kw| async move {
                let sum: i64 = args.iter().filter_map(Value::as_i64).sum();
                Ok(json!(sum))
            },
        ))
        .build()
        .await
        .expect("the app connects over TLS");
    assert!(
        app.settings().broker_url.starts_with("rediss://localhost:"),
        "{}",
        app.settings().broker_url
    );
    assert!(app.settings().broker_url.contains("ssl_cert_reqs=required"));
    assert!(app.settings().result_backend.starts_with("rediss://"));

    let worker = RunningWorker::start_default(&app);
    let result = app
        .send_task(
            "tests.add",
            vec![json!(2), json!(3)],
            Default::default(),
            SendOptions::new().queue(queue.clone()),
        )
        .await
        .expect("sent over TLS");
    let value = result
        .get(Duration::from_secs(20))
        .await
        .expect("the result, over TLS");
    assert_eq!(value, json!(5));
    worker.stop().await;

    // Without the table the same URL is plain TCP, which the TLS-only server refuses.
    let plain = App::builder("test")
        .without_environment()
        .broker(format!("redis://localhost:{}/0", server.port))
        .build()
        .await;
    assert!(plain.is_err(), "plain TCP to a TLS-only server must fail");

    // An option celeriac does not know is named, not ignored; a SQLite broker with
    // TLS on is refused with the setting named.
    let unknown = celeriac::core::config::Settings::default()
        .merge_toml_str("[broker_use_ssl]\nssl_verify = true\n")
        .expect_err("an unknown option");
    assert!(
        unknown
            .to_string()
            .contains("unknown TLS option \"ssl_verify\""),
        "{unknown}"
    );
    let sqlite = App::builder("test")
        .without_environment()
        .broker("sqlite://unused.db")
        .configure(|s| s.broker_use_ssl = celeriac::core::config::UseSsl::Flag(true))
        .resolve_settings()
        .expect_err("TLS for SQLite");
    assert!(
        sqlite
            .to_string()
            .contains("broker_use_ssl applies to redis:// and amqp://"),
        "{sqlite}"
    );
}

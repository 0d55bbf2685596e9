//! `rediss://` with kombu's `ssl_*` URL options against a private TLS-only
//! `redis-server` (client certificates required) whose certificates `openssl` makes
//! at test time. Skipped with the reason when `openssl` or a TLS-capable
//! `redis-server` is missing (failed with `CELERIAC_REQUIRE_SERVICES=1`).

use std::time::Duration;

use celeriac_broker::redis::{RedisBroker, RedisBrokerOptions};
use celeriac_broker::{Broadcast, Broker, BrokerError, FetchParams, Publish, SubscribeParams};
use celeriac_core::TaskMessage;
use celeriac_redis::testing::{tls_redis_or_skip, TestCertificates};

fn url(port: u16, query: &str) -> String {
    format!("rediss://localhost:{port}/0?{query}")
}

fn client_cert(certs: &TestCertificates) -> String {
    format!(
        "ssl_certfile={}&ssl_keyfile={}",
        certs.client_cert.display(),
        certs.client_key.display()
    )
}

fn options() -> RedisBrokerOptions {
    let mut options = RedisBrokerOptions::default();
    options.connection_timeout = Duration::from_secs(3);
    options
}

async fn round_trip(url: &str) {
    let broker = RedisBroker::open_url(url, options())
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let mut events = broker
        .subscribe(&SubscribeParams {
            exchange: "celeryev".into(),
            routing_key: Some("worker.#".into()),
        })
        .await
        .expect("subscribe over TLS");
    let id = format!("tls-{}", uuid::Uuid::new_v4());
    let envelope =
        TaskMessage::new("tls.add", &id, vec![1.into(), 2.into()], Default::default()).encode();
    broker
        .publish(vec![Publish {
            queue: "tls".into(),
            envelope: envelope.clone(),
            not_before: None,
        }])
        .await
        .expect("publish over TLS");
    let got = broker
        .fetch(&FetchParams {
            queues: vec!["tls".into()],
            max: 1,
            wait: Duration::from_secs(5),
            consumer: "tls-test".into(),
            lease: Duration::from_secs(30),
        })
        .await
        .expect("fetch over TLS");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.task_id_hint(), Some(id.as_str()));
    broker.ack(&[got[0].tag.clone()]).await.expect("ack");
    broker
        .broadcast(Broadcast {
            exchange: "celeryev".into(),
            routing_key: "worker.heartbeat".into(),
            envelope,
        })
        .await
        .expect("broadcast over TLS");
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("an event over TLS")
        .expect("the subscription is alive");
    assert_eq!(event.routing_key, "worker.heartbeat");
}

async fn refused(url: &str, why: &str) {
    match RedisBroker::open_url(url, options()).await {
        Err(BrokerError::Connection(_) | BrokerError::Storage(_)) => {}
        Err(other) => panic!("{why}: expected a connection error, got {other}"),
        Ok(_) => panic!("{why}: {url} connected"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_with_kombus_ssl_options() {
    let Some((server, certs)) = tls_redis_or_skip("rediss_urls_with_kombus_ssl_options") else {
        return;
    };
    let port = server.port;
    let ca = format!("ssl_ca_certs={}", certs.ca.display());
    let client = client_cert(&certs);

    // Verified server, client certificate presented: works (CERT_* spelling too).
    round_trip(&url(port, &format!("ssl_cert_reqs=required&{ca}&{client}"))).await;
    round_trip(&url(
        port,
        &format!("ssl_cert_reqs=CERT_OPTIONAL&{ca}&{client}"),
    ))
    .await;
    // No verification at all: works without the CA.
    round_trip(&url(port, &format!("ssl_cert_reqs=none&{client}"))).await;
    // The key may sit in the certificate file, as Python's load_cert_chain allows.
    let combined = server.dir().join("client-combined.pem");
    let pem = [
        std::fs::read(&certs.client_cert).expect("client cert"),
        std::fs::read(&certs.client_key).expect("client key"),
    ]
    .concat();
    std::fs::write(&combined, pem).expect("combined PEM");
    round_trip(&url(
        port,
        &format!("{ca}&ssl_certfile={}", combined.display()),
    ))
    .await;

    // The server's certificate is checked: the system roots do not trust our CA.
    refused(
        &url(port, &format!("ssl_cert_reqs=required&{client}")),
        "an untrusted server certificate",
    )
    .await;
    // The client certificate is really sent: without it the server refuses.
    refused(&url(port, &ca), "no client certificate").await;
    // Plain TCP to a TLS port does not work either.
    refused(
        &format!("redis://127.0.0.1:{port}/0"),
        "plain TCP to a TLS port",
    )
    .await;
}

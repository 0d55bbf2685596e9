//! `amqps://` with kombu's `ssl_*` URL options against a private RabbitMQ node
//! ([`PrivateRabbitMq`], never the shared one) with a TLS listener that requires
//! client certificates (`fail_if_no_peer_cert`), its CA and certificates made by
//! `openssl` at test time. One node serves every case. Skipped with the reason when
//! `openssl` or `rabbitmq-server` is missing (failed with
//! `CELERIAC_REQUIRE_SERVICES=1`).
//!
//! [`PrivateRabbitMq`]: celeriac_broker::amqp::testing::PrivateRabbitMq

#![cfg(feature = "amqp")]
#![allow(clippy::field_reassign_with_default)] // AmqpBrokerOptions is non-exhaustive

use std::time::{Duration, Instant};

use celeriac_broker::amqp::testing::{tls_rabbitmq_or_skip, TlsCertificates};
use celeriac_broker::amqp::{AmqpBroker, AmqpBrokerOptions, CertReqs, TlsOptions};
use celeriac_broker::{Broker, BrokerError, FetchParams, Publish};
use celeriac_core::TaskMessage;

/// How long a refused connection may take at most (the URLs set a 3 s
/// `connection_timeout`; a refusal must not wait for it, let alone hang).
const REFUSAL_WITHIN: Duration = Duration::from_secs(8);

fn client_cert(certs: &TlsCertificates) -> String {
    format!(
        "ssl_certfile={}&ssl_keyfile={}",
        certs.client_cert.display(),
        certs.client_key.display()
    )
}

async fn round_trip(url: &str, options: AmqpBrokerOptions) {
    let broker = AmqpBroker::open_url(url, options)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let queue = format!("tls-{}", uuid::Uuid::new_v4().simple());
    let id = format!("tls-{}", uuid::Uuid::new_v4());
    let envelope =
        TaskMessage::new("tls.add", &id, vec![1.into(), 2.into()], Default::default()).encode();
    broker
        .publish(vec![Publish {
            queue: queue.clone(),
            envelope,
            not_before: None,
        }])
        .await
        .expect("publish over TLS");
    let got = broker
        .fetch(&FetchParams {
            queues: vec![queue.clone()],
            max: 1,
            wait: Duration::from_secs(5),
            consumer: "tls-test".into(),
            lease: Duration::from_secs(30),
        })
        .await
        .expect("fetch over TLS");
    assert_eq!(got.len(), 1, "one message back over {url}");
    assert_eq!(got[0].envelope.task_id_hint(), Some(id.as_str()));
    broker.ack(&[got[0].tag.clone()]).await.expect("ack");
    // Had the ack been lost, closing the connection would give the message back.
    broker.close_connection().await;
    let again = broker
        .fetch(&FetchParams {
            queues: vec![queue],
            max: 1,
            wait: Duration::from_millis(300),
            consumer: "tls-test".into(),
            lease: Duration::from_secs(30),
        })
        .await
        .expect("fetch again over a new TLS connection");
    assert!(again.is_empty(), "the ack over {url} was applied");
}

async fn refused(url: &str, why: &str) -> String {
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        REFUSAL_WITHIN,
        AmqpBroker::open_url(url, AmqpBrokerOptions::default()),
    )
    .await
    .unwrap_or_else(|_| {
        panic!("{why}: {url} neither connected nor failed within {REFUSAL_WITHIN:?}")
    });
    match outcome {
        Err(error @ BrokerError::Connection(_)) => {
            let text = error.to_string();
            assert!(
                !text.contains("guest:guest"),
                "{why}: the password leaked: {text}"
            );
            eprintln!("{why}: refused in {:?}: {text}", started.elapsed());
            text
        }
        Err(other) => panic!("{why}: expected a connection error, got {other}"),
        Ok(_) => panic!("{why}: {url} connected"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_kombus_ssl_options_against_a_private_rabbitmq() {
    let test = "amqps_with_kombus_ssl_options_against_a_private_rabbitmq";
    let started = Instant::now();
    let Some((rabbit, certs)) = tls_rabbitmq_or_skip(test, true) else {
        return;
    };
    eprintln!(
        "{test}: private node {} up in {:?} (TLS port {:?})",
        rabbit.node(),
        rabbit.startup_time(),
        rabbit.tls_port()
    );
    let base = rabbit.amqps_url().expect("a TLS listener");
    let url = |query: &str| format!("{base}?connection_timeout=3000&{query}");
    let ca = format!("ssl_ca_certs={}", certs.ca.display());
    let client = client_cert(&certs);

    // Verified server (its CA from the URL, its name `localhost`), client certificate
    // presented: works (kombu's CERT_* spelling too).
    round_trip(
        &url(&format!("ssl_cert_reqs=required&{ca}&{client}")),
        AmqpBrokerOptions::default(),
    )
    .await;
    round_trip(
        &url(&format!("ssl_cert_reqs=CERT_OPTIONAL&{ca}&{client}")),
        AmqpBrokerOptions::default(),
    )
    .await;
    // No verification at all (insecure): works without the CA.
    round_trip(
        &url(&format!("ssl_cert_reqs=none&{client}")),
        AmqpBrokerOptions::default(),
    )
    .await;
    // The key may sit in the certificate file.
    let combined = rabbit.dir().join("client-combined.pem");
    let pem = [
        std::fs::read(&certs.client_cert).expect("client cert"),
        std::fs::read(&certs.client_key).expect("client key"),
    ]
    .concat();
    std::fs::write(&combined, pem).expect("combined PEM");
    round_trip(
        &url(&format!("{ca}&ssl_certfile={}", combined.display())),
        AmqpBrokerOptions::default(),
    )
    .await;
    // The same settings given in code rather than in the URL.
    let mut options = AmqpBrokerOptions::default();
    let mut tls = TlsOptions::default();
    tls.cert_reqs = CertReqs::Required;
    tls.ca_certs = Some(certs.ca.clone());
    tls.certfile = Some(certs.client_cert.clone());
    tls.keyfile = Some(certs.client_key.clone());
    options.tls = tls;
    round_trip(&url(""), options).await;

    // The server's certificate is checked: the system roots do not trust our CA.
    let untrusted = refused(&url(&client), "an untrusted server certificate").await;
    assert!(
        untrusted.to_lowercase().contains("certificate"),
        "the error says what is wrong: {untrusted}"
    );
    // The client certificate is really sent: without it the node refuses.
    refused(&url(&ca), "no client certificate").await;
    // Plain AMQP to the TLS port does not work either.
    let port = rabbit.tls_port().expect("a TLS listener");
    refused(
        &format!("amqp://guest:guest@127.0.0.1:{port}//?connection_timeout=3000"),
        "plain AMQP to the TLS port",
    )
    .await;
    // The node's plain listener is unaffected.
    round_trip(&rabbit.url(), AmqpBrokerOptions::default()).await;

    // Killed and started again on the same ports and database (what the fault suite
    // does): a confirmed persistent message survives, and TLS works as before.
    let verified = url(&format!("{ca}&{client}"));
    let queue = format!("tls-restart-{}", uuid::Uuid::new_v4().simple());
    let id = format!("tls-restart-{}", uuid::Uuid::new_v4());
    let broker = AmqpBroker::open_url(&verified, AmqpBrokerOptions::default())
        .await
        .expect("open before the restart");
    broker
        .publish(vec![Publish {
            queue: queue.clone(),
            envelope: TaskMessage::new("tls.add", &id, vec![], Default::default()).encode(),
            not_before: None,
        }])
        .await
        .expect("publish before the restart");
    drop(broker);
    let listed = rabbit
        .rabbitmqctl(&["list_queues", "--quiet", "name", "messages"])
        .expect("rabbitmqctl reaches the private node");
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [queue.as_str(), "1"]),
        "{queue} holds the message: {listed}"
    );
    let mut rabbit = rabbit;
    let killed_at = Instant::now();
    rabbit.restart().expect("start the node again");
    eprintln!(
        "{test}: killed and started again in {:?}",
        killed_at.elapsed()
    );
    assert_eq!(
        rabbit.amqps_url().as_deref(),
        Some(base.as_str()),
        "same port"
    );
    let broker = AmqpBroker::open_url(&verified, AmqpBrokerOptions::default())
        .await
        .expect("open after the restart");
    // A node that has just booted on a loaded machine may take a while to hand out
    // its recovered messages: wait up to 30 s (in 5 s fetches), then say what the node
    // holds.
    let recovered_by = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = broker
            .fetch(&FetchParams {
                queues: vec![queue.clone()],
                max: 1,
                wait: Duration::from_secs(5),
                consumer: "tls-test".into(),
                lease: Duration::from_secs(30),
            })
            .await
            .expect("fetch after the restart");
        if !got.is_empty() || Instant::now() > recovered_by {
            break got;
        }
        eprintln!(
            "{test}: nothing fetched yet {:?} after the restart",
            killed_at.elapsed()
        );
    };
    assert_eq!(
        got.len(),
        1,
        "the persistent message survived the restart; the node lists {:?}; its log ends: {}",
        rabbit.rabbitmqctl(&[
            "list_queues",
            "--quiet",
            "name",
            "messages",
            "messages_unacknowledged"
        ]),
        rabbit.log_tail()
    );
    assert_eq!(got[0].envelope.task_id_hint(), Some(id.as_str()));
    drop(broker);

    // Dropped: nothing of the node is left running.
    let node = rabbit.node().to_string();
    drop(rabbit);
    let leftovers = processes_mentioning(&node);
    assert!(
        leftovers.is_empty(),
        "processes of {node} left: {leftovers:?}"
    );
    eprintln!("{test}: all cases in {:?}", started.elapsed());
}

/// Command lines of running processes that mention `text`.
fn processes_mentioning(text: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(text))
        .collect()
}

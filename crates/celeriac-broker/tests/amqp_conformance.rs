//! The broker conformance suite against the RabbitMQ broker at
//! `CELERIAC_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672//`), with
//! priority queues (`x-max-priority` 10) whose names are fresh per test and which
//! the harness deletes afterwards. Skipped when RabbitMQ does not answer (unless
//! `CELERIAC_REQUIRE_SERVICES=1`).
//!
//! RabbitMQ has no leases (it redelivers when a channel closes) and no delayed
//! delivery, and keeps no worker registry: the tests of those are skipped, with the
//! reason printed, by capability.

#![cfg(feature = "amqp")]

use celeriac_broker::amqp::testing::{amqp_url_or_skip, AmqpHarness};

celeriac_broker::broker_conformance_tests!(match amqp_url_or_skip("amqp_conformance") {
    Some(url) => AmqpHarness::new(&url),
    None => return,
});

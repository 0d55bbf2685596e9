//! The Redis broker (feature `redis`): kombu's Redis transport, byte for byte, plus
//! leases that end duplicate runs (`redis://`, `rediss://`, `redis+socket://`,
//! `unix://`; see [`RedisTarget::parse`] for the URL forms and `global_keyprefix`).
//!
//! Python Celery clients and workers share queues with celeriac: the lists, the
//! envelopes, the ack-emulation structures and the bindings are kombu's (PROTOCOL.md
//! §2). celeriac adds a few `celeriac.*` keys beside them and never changes what
//! kombu reads.
//!
//! # Layout
//!
//! - this module: [`RedisBroker`], [`RedisBrokerOptions`], the [`Broker`] operations.
//! - [`scripts`]: the Lua scripts, one `.lua` file per operation under `lua/`, each
//!   with its KEYS / ARGV / return contract at the top.
//! - `wire`: the envelope as kombu publishes and restores it, `unacked` entries,
//!   dead-letter records, delivery tags.
//! - `wait`: dedicated connections for waiting (`BLMOVE` of a list onto itself).
//! - key names: [`celeriac_redis::keys::BrokerKeys`] (all of them, in one place).
//!
//! # Keys (all under the URL's `global_keyprefix`)
//!
//! | key | type | content | written by |
//! |---|---|---|---|
//! | `Q`, `Q\x06\x163`, `Q\x06\x166`, `Q\x06\x169` | LIST | kombu envelopes of queue `Q` at priority steps 0, 3, 6, 9 | kombu, celeriac |
//! | `unacked` | HASH | delivery tag (kombu's consumers) or hold id (celeriac's) → `[envelope, exchange, routing_key]` of every held message | kombu, celeriac |
//! | `unacked_index` | ZSET | delivery tag or hold id → delivery time (float Unix seconds) | kombu, celeriac |
//! | `unacked_mutex` | STRING | lock around the visibility-timeout scan | kombu, celeriac |
//! | `_kombu.binding.<exchange>`, `_kombu.binding_permanent.<exchange>` | SET | `routing_key\x06\x16\x06\x16queue` | kombu, celeriac |
//! | `celeriac.leases` | ZSET | hold id → lease deadline (Unix ms) of messages celeriac consumers hold | celeriac |
//! | `celeriac.lost_claim:<claim>` | STRING (expires) | set by a client that lost the reply of claim number `<claim>`: that claim, if it still runs, does nothing | celeriac |
//! | `celeriac.landed:<token>` | STRING (expires) | set by every publish transaction, so that a publisher that lost the reply can tell whether it landed | celeriac |
//! | `celeriac.dead_letters` | LIST | dead-letter records, newest first: JSON `{id, queue, reason, at (Unix ms), tag?, payload \| payload_base64}` | celeriac |
//! | `celeriac.dead_letter_counts` | HASH | queue → number of its dead letters | celeriac |
//! | `celeriac.queues` | SET | queue names seen by publish and declare | celeriac |
//! | `celeriac.workers` | HASH | worker hostname → its latest heartbeat ([`WorkerInfo`] JSON) | celeriac |
//!
//! Dead letters are kept until an operator deletes them (`DEL` both dead-letter keys).
//!
//! # Publishing
//!
//! One `MULTI`/`EXEC` pipeline per batch: `LPUSH` of kombu's envelope to the list of
//! its queue and priority (consecutive messages of one list in one `LPUSH`), with a
//! fresh uuid4 `properties.delivery_tag`, `delivery_info = {exchange: "",
//! routing_key: <queue>}` and an explicit `priority`. Priorities are kombu's: **lower
//! is served first** ([`PriorityOrder::LowerFirst`]). kombu has no delayed delivery,
//! so a [`Publish::not_before`] is not held in Redis: the message is published at
//! once, its ETA travels in its headers and the worker holds it under a renewed lease
//! until due ([`Capabilities::delayed_delivery`] is false). [`Broker::declare_queue`]
//! writes kombu's binding member to `_kombu.binding.<exchange>` and
//! `_kombu.binding_permanent.<exchange>` (exchange `celery` when the queue names
//! none), so Python clients publishing through that exchange reach the queue.
//!
//! # Fetching: claim and record in one step
//!
//! `claim.lua` pops up to `max` elements (`RPOP`, oldest first) from the queue lists
//! in kombu's order (for each priority step ascending, for each queue; the first
//! queue rotates from fetch to fetch as kombu's round robin does), and records each
//! one as held in the same atomic step, under a **hold id** that names this one
//! delivery (`claim * 1000 + k`: the k-th message of a claim whose random number,
//! below 2^43, the consumer chose): `HSET unacked` (the element verbatim, the
//! anonymous exchange and the queue it was taken from: kombu's entry, which any
//! kombu restore puts back into that same queue), `ZADD unacked_index <now>` and
//! `ZADD celeriac.leases <now + lease>`. A popped message is therefore never only in
//! a client's memory. The script does not read the envelopes (that was half of
//! Redis's time per message): an element that is not even shaped like a JSON object
//! is moved to the dead letters with the reason in the same step; one the envelope
//! codec then refuses is dead-lettered by the client through `dead_letter.lua`. All
//! times in scripts are Redis's clock (`TIME`), so clock skew between hosts cannot
//! end a lease early.
//!
//! # Waiting when the queues are empty
//!
//! A blocking pop cannot run inside a script, and a `BRPOP` takes the element out
//! of Redis before the client has it: a reply lost to a crash or a broken connection
//! at that instant loses the message (kombu has that window). So a fetch that
//! claimed nothing waits without taking anything: `BLMOVE list list RIGHT RIGHT`
//! on its queue's priority-0 list (where messages sent without a priority go) blocks
//! until the list has an element and puts it back where it was, on a dedicated
//! connection (never the shared one; at most 5 s per wait, the connection's response
//! timeout is longer). `claim.lua`, pipelined behind the `BLMOVE` on that connection
//! (Redis runs it the moment the wait ends, with no round trip to the worker in
//! between), takes and records up to `max` messages in one atomic step, as when
//! messages were already waiting. A message is therefore in a
//! Redis list or recorded as held at every instant: no crash, restart or lost reply
//! can lose it. Costs: a message sent with a priority (the lists of priority steps
//! 3, 6 and 9) waits up to [`OTHER_LISTS_POLL`] (100 ms) on an idle queue, because
//! `BLMOVE` watches one list and the claim looks at the others every 100 ms; and
//! `BLMOVE` needs Redis 6.2 or later; and since the element stays in the list,
//! Redis wakes every consumer waiting on that list for each arriving message (all but
//! one then claim nothing and wait again): cheap for tens of consumers of a queue, a
//! cost for hundreds. The wait and the claim run in a task of their
//! own, so a caller that stops waiting (a dropped fetch future) cannot strand what
//! the claim took: the task releases it to the front of its queue.
//!
//! # Leases that end duplicate runs
//!
//! kombu's only recovery is the visibility timeout: any consumer re-queues `unacked`
//! entries older than `visibility_timeout` (1 h). That delivers long and ETA tasks
//! twice, and leaves a dead worker's messages stranded for up to an hour. celeriac
//! keeps a lease per held message instead, and keeps kombu's structures truthful:
//!
//! - **Renew** (`renew.lua`, every third of the lease): for each delivery that still
//!   holds its message, `ZADD celeriac.leases <now + lease>` and
//!   `ZADD unacked_index <now>`. Workers keep the lease no longer than
//!   `visibility_timeout` (`Settings::lease`), so renewals come at least three times
//!   per visibility timeout. A live celeriac holder's message therefore never looks
//!   old to kombu's scan, Python's or ours: no duplicate while its worker lives,
//!   however long the task or its ETA.
//! - **Lapse** ([`Broker::restore_expired`], part 1, `restore_expired.lua`): every
//!   hold in `celeriac.leases` whose deadline passed belonged to a celeriac consumer
//!   that died or stalled. Its message goes back to the front of its queue (`RPUSH`,
//!   kombu tag kept, `headers.redelivered` and `properties.delivery_info.redelivered`
//!   set, as kombu's restore writes it, plus the delivery count, below), and its
//!   `unacked`, `unacked_index` and lease entries go: a dead worker's messages are
//!   back within one lease (seconds), not an hour.
//! - **Python holders** ([`Broker::restore_expired`], part 2, `restore_visible.lua`):
//!   kombu's `restore_visible`, under `unacked_mutex` (`SET NX PX 300000`, released by
//!   compare-and-delete), for `unacked_index` entries older than
//!   [`RedisBrokerOptions::visibility_timeout`] that have **no** celeriac lease —
//!   messages held by Python workers that died. It runs at the first call of a
//!   handle and then at most every [`RedisBrokerOptions::visibility_scan_interval`]
//!   (60 s), as kombu throttles its own.
//!
//! **Stale deliveries.** kombu keeps the delivery tag when it restores a message, so
//! the tag alone cannot tell one delivery from the next; celeriac's holds are keyed
//! by their hold id instead, which no later delivery reuses, and the [`DeliveryTag`]
//! handed out is the hold id. An ack, renew or reject acts only on the entries of
//! its own hold: once a delivery ended otherwise (its lease lapsed and the message
//! was restored, a kombu scan restored it, a Python worker took it again under its
//! kombu tag), its entries are gone and a stale ack, renew or reject changes nothing.
//!
//! **Delivery count.** kombu has none. It travels in the envelope: a celeriac restore,
//! requeue or release records the deliveries the message had so far in the header
//! [`PRIOR_DELIVERIES_HEADER`](crate::PRIOR_DELIVERIES_HEADER) (a release takes the
//! held delivery back); the next delivery counts that + 1, else 2 when
//! `delivery_info.redelivered` is set (a kombu restore), else 1. Nothing about a
//! message outlives it in Redis.
//!
//! Reject: `Requeue` = back of the queue (`LPUSH`, kombu's `reject(requeue=True)`),
//! `Release` = front (`RPUSH`, kombu's restore), both with the redelivered marks
//! and the delivery count; `DeadLetter` = to `celeriac.dead_letters`.
//!
//! # Counts
//!
//! [`Broker::queue_stats`]: `ready` = `LLEN` over the four lists; `held` = `unacked`
//! entries routed to the queue (a `HSCAN` of `unacked`, routed as kombu's restore
//! would: the routing key for the anonymous exchange, else the binding table);
//! `scheduled` = 0 (ETA messages are held by workers, counted as held);
//! `dead_letters` from `celeriac.dead_letter_counts`. With no queues given it lists
//! `celeriac.queues` plus the queues of every binding table (except Celery's event
//! and remote-control exchanges).
//!
//! # Connections
//!
//! One self-reconnecting multiplexed connection per handle for every command and
//! script ([`celeriac_redis::connection::commands`]); dedicated connections for
//! waiting (`BLMOVE`), pooled per handle and named `celeriac-wait:<prefix>` in `CLIENT LIST`
//! ([`waiting_client_name`]); an idle one found dead is replaced at once. Errors of
//! the connection surface as [`BrokerError::Connection`]; the worker's fetch loop
//! retries them with backoff.
//!
//! # Connection loss
//!
//! Redis may restart or become unreachable at any time; nothing acknowledged is lost
//! and no process needs a restart (tested against a private `redis-server` restarted
//! under a worker and a publisher, `crates/celeriac/tests/redis_restart.rs`):
//!
//! - **Commands and scripts** run on the shared connection, which reconnects by
//!   itself: the command that met the broken connection fails with
//!   [`BrokerError::Connection`] and the next one runs on a new connection.
//! - **Publish** retries connection errors with backoff (50 ms doubling to 2 s) for
//!   up to [`RedisBrokerOptions::publish_retry_for`] (30 s), then returns the error;
//!   `Ok` means the batch is in Redis. Every publish transaction (`MULTI`/`EXEC`)
//!   also sets a marker key, `celeriac.landed:<token>` (expiring 10 s after the
//!   retry period), so before each retry the publisher can tell whether the failed
//!   attempt landed after all (the reply was lost, not the request) — even if the
//!   batch was consumed and acknowledged meanwhile. While that check itself cannot
//!   reach Redis, nothing is re-sent: a batch is published again only once Redis
//!   says it never arrived. (Found by the fault suite, `tests/faults`: a restart in
//!   the middle of a publish used to queue it twice.)
//! - **Waiting** (`BLMOVE`, taking nothing) runs on connections of its own, never on
//!   the shared one; their response timeout (a wait's 5 s + 10 s) never cuts a wait
//!   short. A wait that meets a broken connection drops it and fails the fetch with
//!   [`BrokerError::Connection`]; the worker's fetch loop backs off (100 ms doubling
//!   to 5 s) and the next fetch opens a new connection, so consumers resume by
//!   themselves once Redis answers again.
//! - **Held messages** stay recorded in Redis (`unacked`, leases) across a restart
//!   when Redis persists them (AOF `appendfsync always`, or a replica): acks,
//!   renewals and rejects after the restart find them. The worker retries a failed
//!   ack with backoff; an outage longer than the lease lets the held messages lapse
//!   and run again (a duplicate, never a loss).
//! - **Results** (the Redis result backend): the worker retries result writes with
//!   backoff, and a waiter's pub/sub connection resubscribes after a reconnect and
//!   reads the key again, so a result published while it was disconnected is not
//!   missed.
//! - **Broadcasts** (events, remote control, §2.7): each subscription has a pub/sub
//!   connection of its own that resubscribes after a reconnect (`fanout.rs`); its
//!   channel prefix is
//!   [`BrokerKeys::fanout_prefix`](celeriac_redis::keys::BrokerKeys::fanout_prefix).
//!
//! `rediss://` connects with TLS (kombu's `ssl_cert_reqs`, `ssl_ca_certs`,
//! `ssl_certfile`, `ssl_keyfile` URL options; see [`RedisTarget`]).
//!
//! Not supported: Redis Cluster and Sentinel.

mod fanout;
pub mod scripts;
#[cfg(feature = "testing")]
pub mod testing;
mod wait;
mod wire;

pub use wait::client_name as waiting_client_name;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{ErrorKind, ServerErrorKind};
use async_trait::async_trait;
use celeriac_core::routing::{topic_matches, Queue};
use celeriac_core::Envelope;
use celeriac_redis::connection::{self, Timeouts};
use celeriac_redis::keys::{self, BrokerKeys};
use celeriac_redis::RedisTarget;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::{
    Broker, BrokerError, Capabilities, DeadLetter, DeadLetterQuery, Delivery, DeliveryTag,
    FetchParams, PriorityOrder, Publish, QueueStats, RejectAction, WorkerInfo,
};
use scripts::Scripts;
use wait::Waiters;
use wire::{DeadLetterRecord, UnackedEntry};

/// Most tags per ack / renew script call (the scripts take up to 1000).
const TAG_BATCH: usize = 512;
/// Most messages one fetch takes (`claim.lua` takes up to 1000).
const MAX_FETCH: usize = 1000;
/// Most messages restored per script call.
const RESTORE_BATCH: usize = 256;
/// Most restore script calls per [`Broker::restore_expired`] part.
const RESTORE_ROUNDS: usize = 64;
/// kombu's `unacked_mutex_expire`.
const UNACKED_MUTEX_EXPIRE: Duration = Duration::from_secs(300);
/// The longest a waiting fetch blocks on its queue's priority-0 list before its
/// claim also looks at the other lists (priorities 3, 6, 9, where only messages
/// sent with a priority go): the most such a message waits on an idle queue.
const OTHER_LISTS_POLL: Duration = Duration::from_millis(100);

/// How long the release of a lost claim retries before it leaves the claimed
/// messages to their leases.
const RECOVER_FOR: Duration = Duration::from_secs(30);
/// First pause before a publish is retried after a connection error.
const RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest pause between publish retries.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Settings of a [`RedisBroker`]. Start from [`RedisBrokerOptions::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisBrokerOptions {
    /// kombu's `visibility_timeout` (default 1 h): messages held by consumers that
    /// keep no celeriac lease (Python workers) are restored after this long.
    pub visibility_timeout: Duration,
    /// How often a handle runs that visibility-timeout scan from
    /// [`Broker::restore_expired`] (default 60 s; always at its first call).
    pub visibility_scan_interval: Duration,
    /// How long a command may take (default 10 s).
    pub response_timeout: Duration,
    /// How long connecting may take (default 5 s).
    pub connection_timeout: Duration,
    /// How long [`Broker::publish`] retries a lost connection (with backoff, 50 ms
    /// doubling to 2 s) before it returns [`BrokerError::Connection`] (default 30 s).
    pub publish_retry_for: Duration,
}

impl Default for RedisBrokerOptions {
    fn default() -> Self {
        RedisBrokerOptions {
            visibility_timeout: Duration::from_secs(3600),
            visibility_scan_interval: Duration::from_secs(60),
            response_timeout: Duration::from_secs(10),
            connection_timeout: Duration::from_secs(5),
            publish_retry_for: Duration::from_secs(30),
        }
    }
}

/// The Redis broker. See the [module docs](self) for the keys, the scripts and the
/// lease scheme. Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    target: RedisTarget,
    keys: BrokerKeys,
    options: RedisBrokerOptions,
    commands: ConnectionManager,
    waiters: Waiters,
    scripts: Scripts,
    /// Where the next multi-queue fetch starts.
    next_queue: AtomicUsize,
    /// When the visibility-timeout scan is due next (`None`: at the next call).
    next_visibility_scan: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.inner.target.display)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// What one fetch takes from.
struct ClaimRequest {
    /// Queue lists in consume order, each with the index of its queue.
    lists: Vec<(String, usize)>,
    queues: Vec<String>,
    /// The queues as JSON strings, for the `unacked` entries `claim.lua` writes.
    quoted: Vec<String>,
    max: usize,
    lease: Duration,
}

impl RedisBroker {
    /// Opens a Redis URL (see [`RedisTarget::parse`]).
    pub async fn open_url(
        url: &str,
        options: RedisBrokerOptions,
    ) -> Result<RedisBroker, BrokerError> {
        let target = RedisTarget::parse(url).map_err(|e| client_error(e, url))?;
        RedisBroker::open(target, options).await
    }

    /// Connects to `target`. Fails if Redis does not answer within
    /// [`RedisBrokerOptions::connection_timeout`]; afterwards lost connections are
    /// re-established by themselves.
    pub async fn open(
        target: RedisTarget,
        options: RedisBrokerOptions,
    ) -> Result<RedisBroker, BrokerError> {
        let timeouts = Timeouts {
            response: options.response_timeout,
            connect: options.connection_timeout,
        };
        let commands = connection::commands(&target, timeouts)
            .await
            .map_err(|e| client_error(e, &target.display))?;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                keys: BrokerKeys::new(&target.global_keyprefix),
                waiters: Waiters::new(target.clone(), options.connection_timeout),
                scripts: Scripts::new(),
                next_queue: AtomicUsize::new(0),
                next_visibility_scan: Mutex::new(None),
                commands,
                target,
                options,
            }),
        })
    }

    /// The key names of this broker.
    pub fn keys(&self) -> &BrokerKeys {
        &self.inner.keys
    }

    /// The parsed URL.
    pub fn target(&self) -> &RedisTarget {
        &self.inner.target
    }

    /// Pushes raw bytes to `queue`'s priority-0 list as a message, bypassing the
    /// envelope codec (for tests of malformed payloads and for tools importing
    /// foreign messages).
    pub async fn push_raw(&self, queue: &str, payload: &[u8]) -> Result<(), BrokerError> {
        let mut conn = self.inner.conn();
        ::redis::pipe()
            .atomic()
            .cmd("LPUSH")
            .arg(self.inner.keys.queue(queue, 0))
            .arg(payload)
            .ignore()
            .cmd("SADD")
            .arg(&self.inner.keys.queues)
            .arg(queue)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)
    }
}

impl Inner {
    fn conn(&self) -> ConnectionManager {
        self.commands.clone()
    }

    /// Redis's clock, in Unix ms.
    async fn server_time_ms(&self) -> Result<i64, BrokerError> {
        let (seconds, micros): (i64, i64) = ::redis::cmd("TIME")
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(seconds * 1000 + micros / 1000)
    }

    /// Runs `claim.lua` under claim number `claim` and decodes what it took; an
    /// element the envelope codec refuses goes to the dead letters.
    async fn run_claim(
        &self,
        request: &ClaimRequest,
        claim: u64,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let rows: Vec<(usize, Vec<u8>)> = self
            .claim_invocation(request, claim)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(self.claimed(request, claim, rows).await)
    }

    /// `claim.lua` for `request` under claim number `claim`.
    fn claim_invocation<'a>(
        &'a self,
        request: &'a ClaimRequest,
        claim: u64,
    ) -> ::redis::ScriptInvocation<'a> {
        let k = &self.keys;
        let mut invocation = self.scripts.claim.prepare_invoke();
        invocation
            .key(&k.unacked)
            .key(&k.unacked_index)
            .key(&k.leases)
            .key(k.lost_claim(claim))
            .key(&k.dead_letters)
            .key(&k.dead_letter_counts);
        for (list, _) in &request.lists {
            invocation.key(list);
        }
        invocation
            .arg(request.max)
            .arg(millis(request.lease))
            .arg(claim);
        for (_, queue) in &request.lists {
            invocation.arg(&request.quoted[*queue]);
        }
        invocation
    }

    /// The deliveries of `claim.lua`'s reply (`(list index, raw)` rows); a row
    /// that does not decode is dead-lettered.
    async fn claimed(
        &self,
        request: &ClaimRequest,
        claim: u64,
        rows: Vec<(usize, Vec<u8>)>,
    ) -> Vec<Delivery> {
        let mut deliveries = Vec::with_capacity(rows.len());
        for (k, (index, raw)) in (1..).zip(rows) {
            let hold = wire::hold_id(claim, k);
            let queue = request
                .lists
                .get(index.wrapping_sub(1))
                .map(|(_, q)| request.queues[*q].clone())
                .unwrap_or_default();
            match Envelope::from_kombu_json(&raw) {
                Ok(envelope) => deliveries.push(Delivery {
                    delivery_count: wire::delivery_count(&envelope),
                    tag: wire::delivery_tag(hold),
                    queue,
                    envelope,
                }),
                Err(error) => {
                    let reason = format!("undecodable envelope: {error}");
                    tracing::warn!(%queue, %reason, "dead-lettering a message that does not decode");
                    let record = DeadLetterRecord::new(&queue, &reason, None, &raw);
                    if let Err(error) = self.dead_letter(&hold, &queue, &record).await {
                        // Still held under its lease: restored and tried again later.
                        tracing::warn!(%error, %hold, "dead-lettering failed; the message stays held until its lease lapses");
                    }
                }
            }
        }
        deliveries
    }

    /// Waits up to `timeout` for a message without taking it (`BLMOVE` of the first
    /// list onto itself, see [`wait`]), then claims (see the module docs,
    /// "Waiting"). The first list is the queue's priority-0 list, where messages
    /// without a priority go; with more lists, one wait lasts at most
    /// [`OTHER_LISTS_POLL`] before the claim looks at all of them.
    async fn wait_and_claim(
        self: &Arc<Self>,
        request: &ClaimRequest,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        let Some((first, _)) = request.lists.first() else {
            return Ok(Vec::new());
        };
        let timeout = if request.lists.len() > 1 {
            timeout.min(OTHER_LISTS_POLL)
        } else {
            timeout
        };
        let claim = claim_number();
        let invocation = self.claim_invocation(request, claim);
        let waited = match self
            .waiters
            .wait_then_invoke::<Vec<(usize, Vec<u8>)>>(first, timeout, &invocation)
            .await
        {
            Ok(waited) => waited,
            Err(failure) => {
                if let BrokerError::Connection(_) = &failure.error {
                    // The claim may have run before the reply was lost. Released in
                    // the background: Redis may be gone for a while, and the fetch
                    // reports the loss at once (the leases cover a release that
                    // never gets through).
                    let inner = Arc::clone(self);
                    let max = request.max;
                    tokio::spawn(async move { inner.release_lost_claim(claim, max).await });
                }
                if failure.stale_idle {
                    // An idle connection found dead: the fetch waits again on a
                    // new one instead of failing.
                    tracing::debug!(error = %failure.error, "an idle waiting connection was dead; waiting on another");
                    return Ok(Vec::new());
                }
                return Err(failure.error);
            }
        };
        match waited.then {
            Ok(rows) => {
                let deliveries = self.claimed(request, claim, rows).await;
                if !deliveries.is_empty() {
                    return Ok(deliveries);
                }
            }
            // Redis lost its scripts (a restart, `SCRIPT FLUSH`): the claim did not
            // run; claim the usual way, which loads the script.
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                return self.claim(request).await;
            }
            Err(error) => return Err(redis_error(error)),
        }
        // Nothing claimed: another consumer was first, or the wait timed out.
        waited.arrived.map(|_| Vec::new())
    }

    /// Runs one claim under a fresh claim number; when its reply is lost to a
    /// connection error, releases what it may have taken before returning the error.
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Delivery>, BrokerError> {
        let claim = claim_number();
        let result = self.run_claim(request, claim).await;
        if let Err(BrokerError::Connection(_)) = &result {
            self.release_lost_claim(claim, request.max).await;
        }
        result
    }

    /// After a claim whose reply was lost (a timeout, a broken connection), the
    /// script may have run — or may still run, if its request waits in a stalled
    /// server — holding messages no consumer will ever see. Once Redis answers: set
    /// `celeriac.lost_claim:<claim>`, which makes a late run of that claim do
    /// nothing; release to the front of their queues the messages the claim holds
    /// (hold ids `claim * 1000 + 1..=max`). Gives up after [`RECOVER_FOR`] (leases
    /// still bring held messages back).
    async fn release_lost_claim(&self, claim: u64, max: usize) {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let holds: Vec<String> = (1..=max as u64).map(|k| wire::hold_id(claim, k)).collect();
        let held = loop {
            let fenced: Result<(Vec<Option<Vec<u8>>>,), _> = ::redis::pipe()
                .cmd("SET")
                .arg(self.keys.lost_claim(claim))
                .arg(1)
                .arg("PX")
                .arg(millis(RECOVER_FOR * 4))
                .ignore()
                .cmd("HMGET")
                .arg(&self.keys.unacked)
                .arg(&holds)
                .query_async(&mut self.conn())
                .await;
            match fenced {
                Ok((held,)) => break held,
                Err(error) if started.elapsed() < RECOVER_FOR => {
                    tracing::debug!(%error, "Redis does not answer yet; retrying the release of a lost claim");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(error) => {
                    tracing::warn!(%error, "could not release a lost claim; its messages come back when their leases lapse");
                    return;
                }
            }
        };
        let lost: Vec<String> = holds
            .into_iter()
            .zip(held)
            .filter_map(|(hold, entry)| entry.map(|_| hold))
            .collect();
        if !lost.is_empty() {
            tracing::info!(
                count = lost.len(),
                "releasing messages a claim took while its reply was lost"
            );
        }
        for hold in lost {
            let delivery = wire::delivery_tag(hold);
            if let Err(error) = self.reject(&delivery, RejectAction::Release).await {
                tracing::warn!(%error, tag = %delivery, "releasing a lost claim failed; it comes back when its lease lapses");
            }
        }
    }

    /// Runs a publish pipeline (`MULTI`/`EXEC`), retrying connection errors with
    /// backoff for up to [`RedisBrokerOptions::publish_retry_for`] (see the module
    /// docs, "Connection loss"). Before a retry it checks whether the failed attempt
    /// landed after all (its reply was lost): the transaction set `marker`.
    async fn publish_retrying(
        &self,
        pipe: &::redis::Pipeline,
        marker: &str,
    ) -> Result<(), BrokerError> {
        let started = Instant::now();
        let mut backoff = RETRY_MIN;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let mut error = match pipe.query_async::<()>(&mut self.conn()).await {
                Ok(()) => return Ok(()),
                Err(error) if connection::is_connection_error(&error) => error,
                Err(error) => return Err(redis_error(error)),
            };
            // Until Redis answers whether the attempt landed, wait; never re-send a
            // batch that may be there already.
            loop {
                if started.elapsed() + backoff > self.options.publish_retry_for {
                    tracing::warn!(%error, attempts, "publishing failed; giving up");
                    return Err(redis_error(error));
                }
                tracing::warn!(%error, attempts, retry_in = ?backoff, "publishing failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
                match self.landed(marker).await {
                    Ok(true) => {
                        tracing::info!("the failed publish had landed (its reply was lost)");
                        return Ok(());
                    }
                    Ok(false) => break,
                    Err(still) => {
                        tracing::debug!(error = %still, "checking a failed publish failed");
                        error = still;
                    }
                }
            }
        }
    }

    /// Whether the publish transaction that set `marker` was applied.
    async fn landed(&self, marker: &str) -> Result<bool, ::redis::RedisError> {
        ::redis::cmd("EXISTS")
            .arg(marker)
            .query_async::<bool>(&mut self.conn())
            .await
    }

    /// Puts deliveries nobody will process (their fetch was dropped) back at the
    /// front of their queues. On failure their leases lapse and they come back anyway.
    async fn give_back(&self, deliveries: Vec<Delivery>) {
        for delivery in deliveries {
            if let Err(error) = self.reject(&delivery.tag, RejectAction::Release).await {
                tracing::warn!(%error, tag = %delivery.tag, "releasing an unwanted delivery failed; it comes back when its lease lapses");
            }
        }
    }

    /// Moves a held message to the dead letters (`dead_letter.lua`).
    async fn dead_letter(
        &self,
        hold: &str,
        queue: &str,
        record: &DeadLetterRecord,
    ) -> Result<bool, BrokerError> {
        let k = &self.keys;
        let done: i64 = self
            .scripts
            .dead_letter
            .key(&k.unacked)
            .key(&k.unacked_index)
            .key(&k.leases)
            .key(&k.dead_letters)
            .key(&k.dead_letter_counts)
            .arg(hold)
            .arg(record.to_json())
            .arg(queue)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        Ok(done == 1)
    }

    async fn reject(&self, tag: &DeliveryTag, action: RejectAction) -> Result<(), BrokerError> {
        let Some(hold) = wire::parse_delivery_tag(tag) else {
            tracing::warn!(tag = %tag, "reject with a tag this broker never issued; ignored");
            return Ok(());
        };
        let k = &self.keys;
        let entry: Option<Vec<u8>> = ::redis::cmd("HGET")
            .arg(&k.unacked)
            .arg(hold)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        let Some(entry) = entry else {
            tracing::debug!(tag = %tag, "reject of a delivery that holds nothing; ignored");
            return Ok(());
        };
        let parsed = wire::parse_unacked(&entry);
        let mut bindings = Bindings::default();
        let (queue, kombu_tag) = match &parsed {
            Ok(entry) => (
                self.route(&entry.exchange, &entry.routing_key, &mut bindings)
                    .await?
                    .unwrap_or_else(|| entry.routing_key.clone()),
                wire::kombu_tag(&entry.envelope),
            ),
            Err(_) => (String::new(), None),
        };
        let (mode, prior) = match action {
            RejectAction::Requeue => ("requeue", wire::PriorDeliveries::Counted),
            RejectAction::Release => ("release", wire::PriorDeliveries::TakenBack),
            RejectAction::DeadLetter { reason } => {
                let payload = held_payload(&parsed, &entry);
                let record = DeadLetterRecord::new(&queue, &reason, kombu_tag.as_deref(), payload);
                if !self.dead_letter(hold, &queue, &record).await? {
                    tracing::debug!(tag = %tag, "dead-letter with a stale tag; ignored");
                }
                return Ok(());
            }
        };
        let marked = parsed
            .as_ref()
            .map_err(String::clone)
            .and_then(|e| wire::mark_redelivered(&e.envelope, prior));
        let (envelope, priority) = match marked {
            Ok(marked) => marked,
            Err(reason) => {
                let reason = format!("cannot put the message back: {reason}");
                let record = DeadLetterRecord::new(
                    &queue,
                    &reason,
                    kombu_tag.as_deref(),
                    held_payload(&parsed, &entry),
                );
                self.dead_letter(hold, &queue, &record).await?;
                return Ok(());
            }
        };
        let done: i64 = self
            .scripts
            .requeue
            .key(&k.unacked)
            .key(&k.unacked_index)
            .key(&k.leases)
            .key(k.queue(&queue, priority))
            .arg(hold)
            .arg(envelope)
            .arg(mode)
            .invoke_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        if done == 0 {
            tracing::debug!(tag = %tag, "reject with a stale tag; ignored");
        }
        Ok(())
    }

    /// Runs `ack.lua` or `renew.lua` over `tags` in batches; returns how many acted.
    async fn per_tag(
        &self,
        script: &::redis::Script,
        keys: &[&str],
        first_arg: Option<i64>,
        tags: &[DeliveryTag],
    ) -> Result<u64, BrokerError> {
        let mut acted = 0;
        let parsed: Vec<&str> = tags
            .iter()
            .filter_map(|tag| {
                let parsed = wire::parse_delivery_tag(tag);
                if parsed.is_none() {
                    tracing::warn!(tag = %tag, "a tag this broker never issued; ignored");
                }
                parsed
            })
            .collect();
        for chunk in parsed.chunks(TAG_BATCH) {
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(*key);
            }
            if let Some(arg) = first_arg {
                invocation.arg(arg);
            }
            for hold in chunk {
                invocation.arg(*hold);
            }
            let done: u64 = invocation
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            acted += done;
        }
        Ok(acted)
    }

    /// [`Broker::restore_expired`] part 1: messages whose celeriac lease lapsed.
    async fn restore_lapsed(&self) -> Result<u64, BrokerError> {
        let k = &self.keys;
        let mut bindings = Bindings::default();
        let mut restored = 0;
        for _ in 0..RESTORE_ROUNDS {
            let now = self.server_time_ms().await?;
            let holds: Vec<String> = ::redis::cmd("ZRANGEBYSCORE")
                .arg(&k.leases)
                .arg("-inf")
                .arg(now)
                .arg("LIMIT")
                .arg(0)
                .arg(RESTORE_BATCH)
                .query_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            if holds.is_empty() {
                break;
            }
            let entries: Vec<Option<Vec<u8>>> = ::redis::cmd("HMGET")
                .arg(&k.unacked)
                .arg(&holds)
                .query_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            let mut invocation = self.scripts.restore_expired.prepare_invoke();
            invocation
                .key(&k.unacked)
                .key(&k.unacked_index)
                .key(&k.leases)
                .key(&k.dead_letters)
                .key(&k.dead_letter_counts);
            for (hold, entry) in holds.iter().zip(&entries) {
                let (mode, payload, queue, target) = match entry {
                    Some(entry) => {
                        let parsed = wire::parse_unacked(entry);
                        let routed = match &parsed {
                            Ok(held) => {
                                self.route_entry(
                                    held,
                                    wire::PriorDeliveries::Counted,
                                    &mut bindings,
                                )
                                .await?
                            }
                            Err(reason) => Err((reason.clone(), String::new())),
                        };
                        match routed {
                            Ok((queue, envelope, priority)) => {
                                let target = k.queue(&queue, priority);
                                ("push", envelope, queue, target)
                            }
                            Err((reason, queue)) => {
                                let reason = format!("cannot restore the message: {reason}");
                                let tag = parsed
                                    .as_ref()
                                    .ok()
                                    .and_then(|e| wire::kombu_tag(&e.envelope));
                                let payload = held_payload(&parsed, entry);
                                let record =
                                    DeadLetterRecord::new(&queue, &reason, tag.as_deref(), payload);
                                ("dead", record.to_json(), queue, k.leases.clone())
                            }
                        }
                    }
                    None => ("drop", Vec::new(), String::new(), k.leases.clone()),
                };
                invocation.key(target);
                invocation.arg(hold).arg(mode).arg(payload).arg(queue);
            }
            let done: u64 = invocation
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            restored += done;
            if holds.len() < RESTORE_BATCH {
                break;
            }
        }
        Ok(restored)
    }

    /// Whether the visibility-timeout scan is due (and marks it done if so).
    fn visibility_scan_due(&self) -> bool {
        let mut next = self.next_visibility_scan.lock();
        let now = Instant::now();
        if next.is_some_and(|at| now < at) {
            return false;
        }
        *next = Some(now + self.options.visibility_scan_interval);
        true
    }

    /// [`Broker::restore_expired`] part 2: kombu's `restore_visible` under
    /// `unacked_mutex`.
    async fn restore_visible(&self) -> Result<u64, BrokerError> {
        let token = uuid::Uuid::new_v4().to_string();
        let locked: Option<String> = ::redis::cmd("SET")
            .arg(&self.keys.unacked_mutex)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(millis(UNACKED_MUTEX_EXPIRE))
            .query_async(&mut self.conn())
            .await
            .map_err(redis_error)?;
        if locked.is_none() {
            return Ok(0);
        }
        let result = self.restore_visible_locked().await;
        let unlocked: Result<i64, _> = self
            .scripts
            .unlock
            .key(&self.keys.unacked_mutex)
            .arg(&token)
            .invoke_async(&mut self.conn())
            .await;
        if let Err(error) = unlocked {
            tracing::warn!(%error, "releasing unacked_mutex failed; it expires by itself");
        }
        result
    }

    async fn restore_visible_locked(&self) -> Result<u64, BrokerError> {
        let k = &self.keys;
        let timeout_ms = millis(self.options.visibility_timeout);
        let mut bindings = Bindings::default();
        let mut restored = 0;
        let mut offset = 0;
        for _ in 0..RESTORE_ROUNDS {
            let now = self.server_time_ms().await?;
            let cutoff = (now - timeout_ms) as f64 / 1000.0;
            let tags: Vec<String> = ::redis::cmd("ZRANGEBYSCORE")
                .arg(&k.unacked_index)
                .arg("-inf")
                .arg(cutoff)
                .arg("LIMIT")
                .arg(offset)
                .arg(RESTORE_BATCH)
                .query_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            if tags.is_empty() {
                break;
            }
            let (entries, leases): (Vec<Option<Vec<u8>>>, Vec<Option<f64>>) = ::redis::pipe()
                .cmd("HMGET")
                .arg(&k.unacked)
                .arg(&tags)
                .cmd("ZMSCORE")
                .arg(&k.leases)
                .arg(&tags)
                .query_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            let mut invocation = self.scripts.restore_visible.prepare_invoke();
            invocation
                .key(&k.unacked)
                .key(&k.unacked_index)
                .key(&k.leases)
                .key(&k.dead_letters)
                .key(&k.dead_letter_counts);
            invocation.arg(timeout_ms);
            let mut sent = 0;
            for ((tag, entry), lease) in tags.iter().zip(&entries).zip(&leases) {
                if lease.is_some() {
                    // A celeriac delivery: restored by its lease, not by this scan.
                    offset += 1;
                    continue;
                }
                let (mode, payload, queue, target) = match entry {
                    None => ("drop", Vec::new(), String::new(), k.leases.clone()),
                    Some(value) => {
                        let routed = match wire::parse_unacked(value) {
                            Ok(entry) => {
                                self.route_entry(&entry, wire::PriorDeliveries::Keep, &mut bindings)
                                    .await?
                            }
                            Err(reason) => Err((reason, String::new())),
                        };
                        match routed {
                            Ok((queue, envelope, priority)) => {
                                let target = k.queue(&queue, priority);
                                ("push", envelope, queue, target)
                            }
                            Err((reason, queue)) => {
                                let parsed = wire::parse_unacked(value);
                                let record = DeadLetterRecord::new(
                                    &queue,
                                    &format!("cannot restore the message: {reason}"),
                                    Some(tag),
                                    held_payload(&parsed, value),
                                );
                                ("dead", record.to_json(), queue, k.leases.clone())
                            }
                        }
                    }
                };
                sent += 1;
                invocation.key(target);
                let expected: &[u8] = entry.as_deref().unwrap_or_default();
                invocation
                    .arg(tag)
                    .arg(expected)
                    .arg(mode)
                    .arg(payload)
                    .arg(queue);
            }
            if sent > 0 {
                let (done, acted): (u64, u64) = invocation
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(redis_error)?;
                restored += done;
                offset += sent - acted.min(sent);
            }
            if tags.len() < RESTORE_BATCH {
                break;
            }
        }
        if restored > 0 {
            tracing::info!(
                restored,
                "restored messages past the visibility timeout (held by consumers without a lease)"
            );
        }
        Ok(restored)
    }

    /// Where a restored message goes, as kombu's restore routes it: its queue, the
    /// envelope marked redelivered (with `prior` deliveries recorded) and its priority;
    /// or why it cannot go anywhere (with the queue to count the dead letter for).
    async fn route_entry(
        &self,
        entry: &UnackedEntry,
        prior: wire::PriorDeliveries,
        bindings: &mut Bindings,
    ) -> Result<Result<(String, Vec<u8>, i64), (String, String)>, BrokerError> {
        let Some(queue) = self
            .route(&entry.exchange, &entry.routing_key, bindings)
            .await?
        else {
            return Ok(Err((
                format!(
                    "no queue is bound to exchange {:?} with routing key {:?}",
                    entry.exchange, entry.routing_key
                ),
                entry.routing_key.clone(),
            )));
        };
        Ok(match wire::mark_redelivered(&entry.envelope, prior) {
            Ok((envelope, priority)) => Ok((queue, envelope, priority)),
            Err(reason) => Err((reason, queue)),
        })
    }

    /// The queue of `(exchange, routing_key)` as kombu's `_lookup` finds it: the
    /// routing key for the anonymous exchange; else the first binding of the exchange
    /// whose key equals the routing key, or matches it as a topic pattern.
    async fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        bindings: &mut Bindings,
    ) -> Result<Option<String>, BrokerError> {
        if exchange.is_empty() {
            return Ok((!routing_key.is_empty()).then(|| routing_key.to_string()));
        }
        if !bindings.0.contains_key(exchange) {
            let members: Vec<String> = ::redis::cmd("SMEMBERS")
                .arg(self.keys.binding(exchange))
                .query_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            let table = members
                .iter()
                .filter_map(|m| keys::parse_binding_member(m))
                .map(|(key, _, queue)| (key.to_string(), queue.to_string()))
                .collect();
            bindings.0.insert(exchange.to_string(), table);
        }
        let table = &bindings.0[exchange];
        Ok(table
            .iter()
            .find(|(key, _)| key == routing_key)
            .or_else(|| {
                table
                    .iter()
                    .find(|(key, _)| topic_matches(key, routing_key))
            })
            .map(|(_, queue)| queue.clone()))
    }

    /// Queue names known to this store: `celeriac.queues` and the binding tables.
    async fn known_queues(&self) -> Result<Vec<String>, BrokerError> {
        let mut conn = self.conn();
        let mut names: BTreeSet<String> = ::redis::cmd("SMEMBERS")
            .arg(&self.keys.queues)
            .query_async::<Vec<String>>(&mut conn)
            .await
            .map_err(redis_error)?
            .into_iter()
            .collect();
        let mut cursor: u64 = 0;
        let mut tables = Vec::new();
        loop {
            let (next, found): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(self.keys.binding_pattern())
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            tables.extend(found);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        for table in tables {
            let Some(exchange) = self.keys.exchange_of_binding(&table) else {
                continue;
            };
            if keys::FANOUT_EXCHANGES.contains(&exchange) {
                continue;
            }
            let members: Vec<String> = ::redis::cmd("SMEMBERS")
                .arg(&table)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            names.extend(
                members
                    .iter()
                    .filter_map(|m| keys::parse_binding_member(m))
                    .map(|(_, _, queue)| queue.to_string()),
            );
        }
        Ok(names.into_iter().collect())
    }

    /// Held messages per queue among `queues`: every `unacked` entry, routed.
    async fn held_counts(
        &self,
        queues: &HashSet<&str>,
    ) -> Result<HashMap<String, u64>, BrokerError> {
        let mut conn = self.conn();
        let mut bindings = Bindings::default();
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, fields): (u64, Vec<Vec<u8>>) = ::redis::cmd("HSCAN")
                .arg(&self.keys.unacked)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            for value in fields.iter().skip(1).step_by(2) {
                let Some((exchange, routing_key)) = wire::unacked_route(value) else {
                    continue;
                };
                if let Some(queue) = self.route(&exchange, &routing_key, &mut bindings).await? {
                    if queues.contains(queue.as_str()) {
                        *counts.entry(queue).or_default() += 1;
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(counts)
    }
}

/// Binding tables read during one scan: exchange → `(binding key, queue)`.
#[derive(Default)]
struct Bindings(HashMap<String, Vec<(String, String)>>);

/// The envelope of an `unacked` entry for a dead letter (the whole entry when it
/// does not parse).
fn held_payload<'a>(parsed: &'a Result<UnackedEntry, String>, entry: &'a [u8]) -> &'a [u8] {
    match parsed {
        Ok(parsed) => parsed.envelope.get().as_bytes(),
        Err(_) => entry,
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delayed_delivery: false,
            leases: true,
            priority: PriorityOrder::LowerFirst,
            dead_letters: true,
            idempotent_publish: true,
        }
    }

    fn describe(&self) -> String {
        self.inner.target.display.clone()
    }

    fn concurrent_fetches(&self) -> usize {
        2
    }

    async fn declare_queue(&self, queue: &Queue) -> Result<(), BrokerError> {
        let exchange = if queue.exchange.name.is_empty() {
            "celery"
        } else {
            queue.exchange.name.as_str()
        };
        let member = keys::binding_member(&queue.routing_key, "", &queue.name);
        let k = &self.inner.keys;
        ::redis::pipe()
            .cmd("SADD")
            .arg(k.binding(exchange))
            .arg(&member)
            .ignore()
            .cmd("SADD")
            .arg(k.binding_permanent(exchange))
            .arg(&member)
            .ignore()
            .cmd("SADD")
            .arg(&k.queues)
            .arg(&queue.name)
            .ignore()
            .query_async::<()>(&mut self.inner.conn())
            .await
            .map_err(redis_error)
    }

    async fn publish(&self, messages: Vec<Publish>) -> Result<(), BrokerError> {
        if messages.is_empty() {
            return Ok(());
        }
        let k = &self.inner.keys;
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        let mut queues = BTreeSet::new();
        let mut run: Option<(String, Vec<Vec<u8>>)> = None;
        for message in &messages {
            let (element, priority) = wire::publish_element(&message.envelope, &message.queue);
            let list = k.queue(&message.queue, priority);
            match &mut run {
                Some((current, elements)) if *current == list => elements.push(element),
                _ => {
                    if let Some((current, elements)) = run.take() {
                        pipe.cmd("LPUSH").arg(current).arg(elements).ignore();
                    }
                    run = Some((list, vec![element]));
                }
            }
            queues.insert(message.queue.as_str());
        }
        if let Some((current, elements)) = run {
            pipe.cmd("LPUSH").arg(current).arg(elements).ignore();
        }
        pipe.cmd("SADD").arg(&k.queues).arg(queues).ignore();
        // Tells, after a lost reply, whether this transaction landed.
        let marker = k.landed(&uuid::Uuid::new_v4().simple().to_string());
        let marker_ttl = self.inner.options.publish_retry_for + Duration::from_secs(10);
        pipe.cmd("SET")
            .arg(&marker)
            .arg(1)
            .arg("PX")
            .arg(millis(marker_ttl))
            .ignore();
        self.inner.publish_retrying(&pipe, &marker).await
    }

    async fn publish_once(
        &self,
        key: &str,
        window: Duration,
        messages: Vec<Publish>,
    ) -> Result<bool, BrokerError> {
        let k = &self.inner.keys;
        let queues: BTreeSet<&str> = messages.iter().map(|m| m.queue.as_str()).collect();
        let mut invocation = self.inner.scripts.publish_once.prepare_invoke();
        invocation
            .key(k.published(key))
            .key(&k.queues)
            .arg(millis(window).max(1))
            .arg(queues.len());
        for queue in &queues {
            invocation.arg(*queue);
        }
        for message in &messages {
            let (element, priority) = wire::publish_element(&message.envelope, &message.queue);
            invocation
                .key(k.queue(&message.queue, priority))
                .arg(element);
        }
        // The script is idempotent (a retry after a lost reply finds the marker), so a
        // lost connection is retried like a plain publish.
        let started = Instant::now();
        let mut backoff = RETRY_MIN;
        loop {
            let error = match invocation.invoke_async::<i64>(&mut self.inner.conn()).await {
                Ok(stored) => return Ok(stored == 1),
                Err(error) if connection::is_connection_error(&error) => error,
                Err(error) => return Err(redis_error(error)),
            };
            if started.elapsed() + backoff > self.inner.options.publish_retry_for {
                tracing::warn!(%error, "publishing once failed; giving up");
                return Err(redis_error(error));
            }
            tracing::warn!(%error, retry_in = ?backoff, "publishing once failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    async fn fetch(&self, params: &FetchParams) -> Result<Vec<Delivery>, BrokerError> {
        if params.max == 0 || params.queues.is_empty() {
            return Ok(Vec::new());
        }
        let mut queues = params.queues.clone();
        let start = self.inner.next_queue.fetch_add(1, Ordering::Relaxed) % queues.len();
        queues.rotate_left(start);
        let request = Arc::new(ClaimRequest {
            lists: self.inner.keys.consume_order(&queues),
            quoted: queues.iter().map(|q| wire::quoted(q)).collect(),
            queues,
            max: params.max.min(MAX_FETCH),
            lease: params.lease,
        });
        let claimed = self.inner.claim(&request).await?;
        if !claimed.is_empty() || params.wait.is_zero() {
            return Ok(claimed);
        }
        let deadline = Instant::now()
            .checked_add(params.wait)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600));
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < Duration::from_millis(1) {
                return Ok(Vec::new());
            }
            // The pop and its record run in a task of their own: if this future is
            // dropped meanwhile, the task still records what it popped, then gives
            // it back (see the module docs, "Waiting").
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let inner = Arc::clone(&self.inner);
            let waiting = Arc::clone(&request);
            tokio::spawn(async move {
                let result = inner.wait_and_claim(&waiting, remaining).await;
                if let Err(Ok(deliveries)) = sender.send(result) {
                    inner.give_back(deliveries).await;
                }
            });
            match receiver.await {
                Ok(Ok(deliveries)) if !deliveries.is_empty() => return Ok(deliveries),
                Ok(Ok(_)) => continue,
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    return Err(BrokerError::Storage(
                        "the task waiting for messages ended without a result".into(),
                    ))
                }
            }
        }
    }

    async fn ack(&self, tags: &[DeliveryTag]) -> Result<(), BrokerError> {
        let k = &self.inner.keys;
        let keys = [k.unacked.as_str(), &k.unacked_index, &k.leases];
        self.inner
            .per_tag(&self.inner.scripts.ack, &keys, None, tags)
            .await?;
        Ok(())
    }

    async fn reject(&self, tag: &DeliveryTag, action: RejectAction) -> Result<(), BrokerError> {
        self.inner.reject(tag, action).await
    }

    async fn renew_leases(&self, tags: &[DeliveryTag], lease: Duration) -> Result<(), BrokerError> {
        let k = &self.inner.keys;
        let keys = [k.unacked_index.as_str(), &k.leases];
        self.inner
            .per_tag(&self.inner.scripts.renew, &keys, Some(millis(lease)), tags)
            .await?;
        Ok(())
    }

    async fn restore_expired(&self) -> Result<u64, BrokerError> {
        let mut restored = self.inner.restore_lapsed().await?;
        if restored > 0 {
            tracing::info!(restored, "restored messages whose lease lapsed");
        }
        if self.inner.visibility_scan_due() {
            restored += self.inner.restore_visible().await?;
        }
        Ok(restored)
    }

    async fn purge(&self, queue: &str) -> Result<u64, BrokerError> {
        let mut invocation = self.inner.scripts.purge.prepare_invoke();
        for list in self.inner.keys.queue_lists(queue) {
            invocation.key(list);
        }
        invocation
            .invoke_async(&mut self.inner.conn())
            .await
            .map_err(redis_error)
    }

    async fn queue_stats(&self, queues: &[String]) -> Result<Vec<QueueStats>, BrokerError> {
        let names = if queues.is_empty() {
            self.inner.known_queues().await?
        } else {
            queues.to_vec()
        };
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let k = &self.inner.keys;
        let mut pipe = ::redis::pipe();
        for name in &names {
            for list in k.queue_lists(name) {
                pipe.cmd("LLEN").arg(list);
            }
        }
        let lengths: Vec<u64> = pipe
            .query_async(&mut self.inner.conn())
            .await
            .map_err(redis_error)?;
        let dead: Vec<Option<u64>> = ::redis::cmd("HMGET")
            .arg(&k.dead_letter_counts)
            .arg(&names)
            .query_async(&mut self.inner.conn())
            .await
            .map_err(redis_error)?;
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        let held = self.inner.held_counts(&wanted).await?;
        let per_queue = keys::PRIORITY_STEPS.len();
        Ok(names
            .iter()
            .enumerate()
            .map(|(i, name)| QueueStats {
                name: name.clone(),
                ready: lengths[i * per_queue..(i + 1) * per_queue].iter().sum(),
                scheduled: 0,
                held: held.get(name).copied().unwrap_or(0),
                dead_letters: dead.get(i).copied().flatten().unwrap_or(0),
            })
            .collect())
    }

    async fn dead_letters(&self, query: &DeadLetterQuery) -> Result<Vec<DeadLetter>, BrokerError> {
        const PAGE: isize = 500;
        let limit = if query.limit == 0 { 100 } else { query.limit };
        let mut found = Vec::new();
        let mut start: isize = 0;
        loop {
            let page: Vec<Vec<u8>> = ::redis::cmd("LRANGE")
                .arg(&self.inner.keys.dead_letters)
                .arg(start)
                .arg(start + PAGE - 1)
                .query_async(&mut self.inner.conn())
                .await
                .map_err(redis_error)?;
            for raw in &page {
                match serde_json::from_slice::<DeadLetterRecord>(raw) {
                    Ok(record) if query.queue.as_ref().is_none_or(|q| *q == record.queue) => {
                        found.push(record.into_dead_letter());
                        if found.len() >= limit {
                            return Ok(found);
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "unreadable dead-letter record skipped"),
                }
            }
            if page.len() < PAGE as usize {
                return Ok(found);
            }
            start += PAGE;
        }
    }

    async fn worker_heartbeat(&self, info: &WorkerInfo) -> Result<(), BrokerError> {
        let json = serde_json::to_string(info).map_err(BrokerError::storage)?;
        ::redis::cmd("HSET")
            .arg(&self.inner.keys.workers)
            .arg(&info.hostname)
            .arg(json)
            .query_async::<()>(&mut self.inner.conn())
            .await
            .map_err(redis_error)
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, BrokerError> {
        let rows: Vec<(String, String)> = ::redis::cmd("HGETALL")
            .arg(&self.inner.keys.workers)
            .query_async(&mut self.inner.conn())
            .await
            .map_err(redis_error)?;
        let mut workers: Vec<WorkerInfo> = rows
            .into_iter()
            .filter_map(
                |(hostname, json)| match serde_json::from_str::<WorkerInfo>(&json) {
                    Ok(info) => Some(info),
                    Err(error) => {
                        tracing::warn!(%hostname, %error, "unreadable worker entry ignored");
                        None
                    }
                },
            )
            .collect();
        workers.sort_by_key(|w| std::cmp::Reverse(w.last_heartbeat));
        Ok(workers)
    }

    async fn broadcast(&self, message: crate::Broadcast) -> Result<(), BrokerError> {
        fanout::broadcast(&self.inner, &message).await
    }

    async fn subscribe(
        &self,
        params: &crate::SubscribeParams,
    ) -> Result<crate::Subscription, BrokerError> {
        fanout::subscribe(&self.inner, params).await
    }
}

/// A broker error for a `redis` error: [`BrokerError::Connection`] when the
/// connection failed, [`BrokerError::Storage`] otherwise.
fn redis_error(error: ::redis::RedisError) -> BrokerError {
    if connection::is_connection_error(&error) {
        BrokerError::Connection(Box::new(error))
    } else {
        BrokerError::storage(error)
    }
}

/// A broker error for a URL or connect error (`url` for messages, password hidden).
fn client_error(error: celeriac_redis::RedisError, url: &str) -> BrokerError {
    match error {
        celeriac_redis::RedisError::InvalidUrl { url, reason } => {
            BrokerError::InvalidUrl { url, reason }
        }
        celeriac_redis::RedisError::Client(error)
            if error.kind() == ::redis::ErrorKind::InvalidClientConfig =>
        {
            BrokerError::InvalidUrl {
                url: crate::redact(url),
                reason: error.to_string(),
            }
        }
        celeriac_redis::RedisError::Client(error) => redis_error(error),
        other => BrokerError::Connection(Box::new(other)),
    }
}

/// A random claim number below 2^43: `claim.lua` gives the messages one claim takes
/// the hold ids `claim * 1000 + 1..n`, exact in Lua's doubles.
fn claim_number() -> u64 {
    (uuid::Uuid::new_v4().as_u64_pair().0 >> 21).max(1)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

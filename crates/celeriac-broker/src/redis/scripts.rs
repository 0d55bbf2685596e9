//! The broker's Lua scripts, one per operation, each with its KEYS / ARGV / return
//! contract in the comment at its top. They are public so that tests can run each
//! one against a real Redis with seeded state.

/// Takes up to N messages from queue lists and records them as held under hold ids
/// (kombu's `unacked` + `unacked_index`, celeriac's lease); dead-letters elements
/// that are not JSON objects.
pub const CLAIM: &str = include_str!("lua/claim.lua");
/// Acknowledges deliveries (by hold id) that still hold their message.
pub const ACK: &str = include_str!("lua/ack.lua");
/// Extends the leases (and kombu delivery times) of deliveries that still hold their
/// message.
pub const RENEW: &str = include_str!("lua/renew.lua");
/// Puts a held message back at the back (`requeue`) or front (`release`) of its queue.
pub const REQUEUE: &str = include_str!("lua/requeue.lua");
/// Moves a held message to the dead letters.
pub const DEAD_LETTER: &str = include_str!("lua/dead_letter.lua");
/// Restores messages whose celeriac lease lapsed.
pub const RESTORE_EXPIRED: &str = include_str!("lua/restore_expired.lua");
/// kombu's visibility-timeout recovery for messages without a celeriac lease.
pub const RESTORE_VISIBLE: &str = include_str!("lua/restore_visible.lua");
/// Releases a lock we own (compare-and-delete).
pub const UNLOCK: &str = include_str!("lua/unlock.lua");
/// Deletes the ready messages of one queue.
pub const PURGE: &str = include_str!("lua/purge.lua");
/// Publishes a batch unless its publish-once marker is set, and sets it.
pub const PUBLISH_ONCE: &str = include_str!("lua/publish_once.lua");

/// The loaded scripts (SHA1 computed once; `EVALSHA`, falling back to `EVAL`).
pub(crate) struct Scripts {
    pub claim: ::redis::Script,
    pub ack: ::redis::Script,
    pub renew: ::redis::Script,
    pub requeue: ::redis::Script,
    pub dead_letter: ::redis::Script,
    pub restore_expired: ::redis::Script,
    pub restore_visible: ::redis::Script,
    pub unlock: ::redis::Script,
    pub purge: ::redis::Script,
    pub publish_once: ::redis::Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            claim: ::redis::Script::new(CLAIM),
            ack: ::redis::Script::new(ACK),
            renew: ::redis::Script::new(RENEW),
            requeue: ::redis::Script::new(REQUEUE),
            dead_letter: ::redis::Script::new(DEAD_LETTER),
            restore_expired: ::redis::Script::new(RESTORE_EXPIRED),
            restore_visible: ::redis::Script::new(RESTORE_VISIBLE),
            unlock: ::redis::Script::new(UNLOCK),
            purge: ::redis::Script::new(PURGE),
            publish_once: ::redis::Script::new(PUBLISH_ONCE),
        }
    }
}

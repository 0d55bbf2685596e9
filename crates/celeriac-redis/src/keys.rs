//! Every key name of the Redis broker, in one place: kombu's (queue lists by
//! priority, ack emulation, bindings; PROTOCOL.md §2) and celeriac's own
//! (`celeriac.*`: leases, dead letters, registries). All of them carry the
//! URL's `global_keyprefix`, as kombu prefixes every key it touches.

/// kombu's separator between a queue name and its priority step, and between the
/// fields of a binding member (transport option `sep`).
pub const SEP: &str = "\x06\x16";

/// kombu's default `priority_steps`: priorities 0–2 share the plain queue key, 3–5
/// the key `Q\x06\x163`, 6–8 `Q\x06\x166`, 9 `Q\x06\x169`. Lower steps are consumed
/// first.
pub const PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// Exchanges whose bindings name fanout queues Celery uses for events and remote
/// control (PUB/SUB on Redis, never lists); they are not task queues.
pub const FANOUT_EXCHANGES: [&str; 3] = ["celeryev", "celery.pidbox", "reply.celery.pidbox"];

/// The priority step (one of [`PRIORITY_STEPS`]) of a message priority: kombu clamps
/// the priority to 0..=9 and takes the largest step not above it.
pub fn priority_step(priority: i64) -> u8 {
    let clamped = priority.clamp(0, 9) as u8;
    PRIORITY_STEPS
        .iter()
        .copied()
        .filter(|step| *step <= clamped)
        .max()
        .unwrap_or(0)
}

/// The binding member kombu stores in `_kombu.binding.<exchange>`:
/// `routing_key \x06\x16 pattern \x06\x16 queue` (the pattern is empty for direct and
/// topic exchanges; kombu matches topic keys at lookup time).
pub fn binding_member(routing_key: &str, pattern: &str, queue: &str) -> String {
    format!("{routing_key}{SEP}{pattern}{SEP}{queue}")
}

/// The `(routing_key, pattern, queue)` of a binding member, if it has three fields.
pub fn parse_binding_member(member: &str) -> Option<(&str, &str, &str)> {
    let mut parts = member.splitn(3, SEP);
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// The key names of the Redis broker under one `global_keyprefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerKeys {
    prefix: String,
    /// kombu: HASH delivery tag (kombu's consumers) or hold id (celeriac's) → JSON
    /// `[envelope, exchange, routing_key]` of every held message.
    pub unacked: String,
    /// kombu: ZSET delivery tag or hold id → delivery time (float Unix seconds);
    /// kombu's visibility-timeout scan restores entries older than the timeout.
    pub unacked_index: String,
    /// kombu: STRING lock around the visibility-timeout scan.
    pub unacked_mutex: String,
    /// celeriac: ZSET hold id → lease deadline (Unix ms) of messages held by
    /// celeriac consumers.
    pub leases: String,
    /// celeriac: LIST of dead-letter records (JSON), newest first.
    pub dead_letters: String,
    /// celeriac: HASH queue → number of its dead letters.
    pub dead_letter_counts: String,
    /// celeriac: SET of queue names seen by publish and declare.
    pub queues: String,
    /// celeriac: HASH worker hostname → its latest heartbeat (JSON).
    pub workers: String,
}

impl BrokerKeys {
    /// The keys under `global_keyprefix` (may be empty).
    pub fn new(global_keyprefix: &str) -> BrokerKeys {
        let key = |name: &str| format!("{global_keyprefix}{name}");
        BrokerKeys {
            prefix: global_keyprefix.to_string(),
            unacked: key("unacked"),
            unacked_index: key("unacked_index"),
            unacked_mutex: key("unacked_mutex"),
            leases: key("celeriac.leases"),
            dead_letters: key("celeriac.dead_letters"),
            dead_letter_counts: key("celeriac.dead_letter_counts"),
            queues: key("celeriac.queues"),
            workers: key("celeriac.workers"),
        }
    }

    /// The `global_keyprefix`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// celeriac: STRING set when a client lost the reply of claim number `claim`:
    /// that claim, if it still runs, must do nothing (see the broker's `claim.lua`).
    pub fn lost_claim(&self, claim: u64) -> String {
        format!("{}celeriac.lost_claim:{claim}", self.prefix)
    }

    /// celeriac: STRING a publish writes in the same transaction as its messages,
    /// so that after a lost reply the publisher can tell whether it landed; it
    /// expires shortly after the publish's retry period.
    pub fn landed(&self, token: &str) -> String {
        format!("{}celeriac.landed:{token}", self.prefix)
    }

    /// celeriac: STRING marking that a publish under `key` was stored (it expires
    /// after the publish-once window).
    pub fn published(&self, key: &str) -> String {
        format!("{}celeriac.published:{key}", self.prefix)
    }

    /// The list holding `queue`'s messages of `priority` (kombu's `_q_for_pri`).
    pub fn queue(&self, queue: &str, priority: i64) -> String {
        self.queue_at_step(queue, priority_step(priority))
    }

    /// The list of `queue` at a priority step (0, 3, 6 or 9).
    pub fn queue_at_step(&self, queue: &str, step: u8) -> String {
        if step == 0 {
            format!("{}{queue}", self.prefix)
        } else {
            format!("{}{queue}{SEP}{step}", self.prefix)
        }
    }

    /// Every list of `queue`, in consume order (priority 0 first).
    pub fn queue_lists(&self, queue: &str) -> Vec<String> {
        PRIORITY_STEPS
            .iter()
            .map(|step| self.queue_at_step(queue, *step))
            .collect()
    }

    /// The lists to take from for `queues`, in kombu's BRPOP order (for each priority
    /// step ascending, for each queue), each with the index of its queue.
    pub fn consume_order(&self, queues: &[String]) -> Vec<(String, usize)> {
        PRIORITY_STEPS
            .iter()
            .flat_map(|step| {
                queues
                    .iter()
                    .enumerate()
                    .map(move |(i, queue)| (self.queue_at_step(queue, *step), i))
            })
            .collect()
    }

    /// kombu's binding table of `exchange` (`_kombu.binding.<exchange>`).
    pub fn binding(&self, exchange: &str) -> String {
        format!("{}_kombu.binding.{exchange}", self.prefix)
    }

    /// kombu 5.7's permanent binding table (`_kombu.binding_permanent.<exchange>`).
    pub fn binding_permanent(&self, exchange: &str) -> String {
        format!("{}_kombu.binding_permanent.{exchange}", self.prefix)
    }

    /// A `SCAN MATCH` pattern for every binding table (the prefix glob-escaped).
    pub fn binding_pattern(&self) -> String {
        format!("{}_kombu.binding.*", glob_escape(&self.prefix))
    }

    /// The exchange of a binding table key, if it is one.
    pub fn exchange_of_binding<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.prefix.as_str())?
            .strip_prefix("_kombu.binding.")
    }

    /// kombu's fanout channel prefix for database `db` (`/<db>.`), for PUB/SUB
    /// exchanges (events, remote control; PROTOCOL.md §2.7), with the key prefix.
    pub fn fanout_prefix(&self, db: i64) -> String {
        format!("{}/{db}.", self.prefix)
    }
}

/// `text` with the glob characters of `SCAN MATCH` / `KEYS` escaped.
pub fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_follow_kombu() {
        let keys = BrokerKeys::new("");
        assert_eq!(keys.queue("celery", 0), "celery");
        assert_eq!(keys.queue("celery", 2), "celery");
        assert_eq!(keys.queue("celery", 3), "celery\x06\x163");
        assert_eq!(keys.queue("celery", 7), "celery\x06\x166");
        assert_eq!(keys.queue("celery", 9), "celery\x06\x169");
        assert_eq!(keys.queue("celery", 200), "celery\x06\x169");
        assert_eq!(keys.queue("celery", -4), "celery");
        let prefixed = BrokerKeys::new("app1:");
        assert_eq!(prefixed.queue("q", 4), "app1:q\x06\x163");
        assert_eq!(prefixed.unacked, "app1:unacked");
        assert_eq!(prefixed.binding("celery"), "app1:_kombu.binding.celery");
        assert_eq!(
            prefixed.binding_permanent("celery"),
            "app1:_kombu.binding_permanent.celery"
        );
        assert_eq!(
            prefixed.exchange_of_binding("app1:_kombu.binding.tasks"),
            Some("tasks")
        );
        assert_eq!(prefixed.fanout_prefix(0), "app1:/0.");
    }

    #[test]
    fn consume_order_is_by_step_then_queue() {
        let keys = BrokerKeys::new("");
        let order: Vec<String> = keys
            .consume_order(&["A".into(), "B".into()])
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            order,
            [
                "A",
                "B",
                "A\x06\x163",
                "B\x06\x163",
                "A\x06\x166",
                "B\x06\x166",
                "A\x06\x169",
                "B\x06\x169"
            ]
        );
    }

    #[test]
    fn binding_members_round_trip() {
        let member = binding_member("celery", "", "celery");
        assert_eq!(member, "celery\x06\x16\x06\x16celery");
        assert_eq!(
            parse_binding_member(&member),
            Some(("celery", "", "celery"))
        );
        assert_eq!(parse_binding_member("nope"), None);
        assert_eq!(glob_escape("a*b?[c]"), "a\\*b\\?\\[c\\]");
    }
}

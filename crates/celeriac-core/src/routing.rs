//! Queues, exchanges, topic routing and `task_routes`.
//!
//! A message is published either straight to a queue (Celery's anonymous exchange:
//! exchange `""`, routing key = queue name) or to a named exchange with a routing key,
//! in which case it goes to every queue bound to that exchange whose binding matches:
//! equal keys for a direct exchange, AMQP topic patterns for a topic exchange (`*` is
//! exactly one dot-separated word, `#` zero or more words), every queue for fanout.
//!
//! The producer resolves routes itself from the declared queues, so a routing key that
//! matches no queue is an error at the call site ([`RoutingError::NoRoute`]) instead of
//! a message silently dropped by the broker.

use serde::{Deserialize, Serialize};

use crate::options::SendOptions;
use crate::task::TaskOptions;

/// How an exchange matches routing keys to bindings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    /// Routing key equals binding key.
    #[default]
    Direct,
    /// AMQP topic patterns (`*`, `#`).
    Topic,
    /// Every bound queue.
    Fanout,
}

/// A named exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    /// Exchange name.
    pub name: String,
    /// Matching rule.
    #[serde(default)]
    pub kind: ExchangeKind,
}

impl Exchange {
    /// A direct exchange.
    pub fn direct(name: impl Into<String>) -> Exchange {
        Exchange {
            name: name.into(),
            kind: ExchangeKind::Direct,
        }
    }
    /// A topic exchange.
    pub fn topic(name: impl Into<String>) -> Exchange {
        Exchange {
            name: name.into(),
            kind: ExchangeKind::Topic,
        }
    }
}

/// Name of the topic exchange queues with a pattern routing key bind to by default.
pub const DEFAULT_TOPIC_EXCHANGE: &str = "tasks";

/// A queue with its binding, and optional per-queue worker settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    /// Queue name.
    pub name: String,
    /// Exchange the queue is bound to.
    pub exchange: Exchange,
    /// Binding key (a topic pattern for topic exchanges).
    pub routing_key: String,
    /// Worker slots for this queue (overrides `-c`).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Prefetch multiplier for this queue (overrides `worker_prefetch_multiplier`).
    #[serde(default)]
    pub prefetch_multiplier: Option<usize>,
    /// Ack mode for this queue's tasks unless the task declares its own.
    #[serde(default)]
    pub acks_late: Option<bool>,
}

impl Queue {
    /// A queue bound to the direct exchange `celery` with its own name as key.
    pub fn new(name: impl Into<String>) -> Queue {
        let name = name.into();
        Queue {
            exchange: Exchange::direct("celery"),
            routing_key: name.clone(),
            name,
            concurrency: None,
            prefetch_multiplier: None,
            acks_late: None,
        }
    }
    /// Sets the binding key. A key with `*` or `#` binds to the topic exchange
    /// `tasks` unless an exchange was set explicitly.
    pub fn routing_key(mut self, key: impl Into<String>) -> Queue {
        self.routing_key = key.into();
        if is_pattern(&self.routing_key) && self.exchange == Exchange::direct("celery") {
            self.exchange = Exchange::topic(DEFAULT_TOPIC_EXCHANGE);
        }
        self
    }
    /// Sets the exchange.
    pub fn exchange(mut self, exchange: Exchange) -> Queue {
        self.exchange = exchange;
        self
    }
    /// Worker slots for this queue.
    pub fn concurrency(mut self, slots: usize) -> Queue {
        self.concurrency = Some(slots.max(1));
        self
    }
    /// Prefetch multiplier for this queue.
    pub fn prefetch_multiplier(mut self, multiplier: usize) -> Queue {
        self.prefetch_multiplier = Some(multiplier.max(1));
        self
    }
    /// Ack mode for this queue.
    pub fn acks_late(mut self, late: bool) -> Queue {
        self.acks_late = Some(late);
        self
    }

    /// Whether a message published to `exchange` with `routing_key` reaches this queue.
    pub fn accepts(&self, exchange: &str, routing_key: &str) -> bool {
        if exchange.is_empty() {
            return routing_key == self.name;
        }
        if exchange != self.exchange.name {
            return false;
        }
        match self.exchange.kind {
            ExchangeKind::Direct => routing_key == self.routing_key,
            ExchangeKind::Topic => topic_matches(&self.routing_key, routing_key),
            ExchangeKind::Fanout => true,
        }
    }
}

fn is_pattern(key: &str) -> bool {
    key.split('.').any(|word| word == "*" || word == "#")
}

/// AMQP topic matching: `pattern` and `key` are dot-separated words; `*` matches
/// exactly one word and `#` zero or more.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    // Dynamic programming over (pattern position, key position): no exponential
    // backtracking on hostile patterns like `#.#.#.#.x`.
    let mut reachable = vec![false; key.len() + 1];
    reachable[0] = true;
    for word in &pattern {
        let mut next = vec![false; key.len() + 1];
        match *word {
            "#" => {
                let mut any = false;
                for i in 0..=key.len() {
                    any |= reachable[i];
                    next[i] = any;
                }
            }
            "*" => next[1..].copy_from_slice(&reachable[..key.len()]),
            literal => {
                for i in 0..key.len() {
                    next[i + 1] = reachable[i] && key[i] == literal;
                }
            }
        }
        reachable = next;
    }
    reachable[key.len()]
}

/// Glob matching for task names: `*` any run of characters, `?` one character.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        // `*` first: a `*` in the pattern is always a wildcard, even where the name
        // has a literal `*` (found by the routing_key fuzz target).
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// One `task_routes` entry: task names matching `pattern` go to `queue`, or to
/// `exchange` with `routing_key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Task-name glob (`"notify.*"`).
    pub pattern: String,
    /// Target queue.
    #[serde(default)]
    pub queue: Option<String>,
    /// Target exchange.
    #[serde(default)]
    pub exchange: Option<String>,
    /// Routing key.
    #[serde(default)]
    pub routing_key: Option<String>,
}

impl Route {
    /// Routes tasks matching `pattern` to `queue`.
    pub fn to_queue(pattern: impl Into<String>, queue: impl Into<String>) -> Route {
        Route {
            pattern: pattern.into(),
            queue: Some(queue.into()),
            exchange: None,
            routing_key: None,
        }
    }
    /// Routes tasks matching `pattern` with a routing key (matched against bindings).
    pub fn to_routing_key(pattern: impl Into<String>, key: impl Into<String>) -> Route {
        Route {
            pattern: pattern.into(),
            queue: None,
            exchange: None,
            routing_key: Some(key.into()),
        }
    }
}

/// Where one copy of a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The queue that stores it.
    pub queue: String,
    /// Exchange recorded in `delivery_info`.
    pub exchange: String,
    /// Routing key recorded in `delivery_info`.
    pub routing_key: String,
}

/// Routing failures.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum RoutingError {
    /// No declared queue is bound to the exchange with a matching key.
    #[error("no queue is bound to exchange {exchange:?} with a key matching {routing_key:?}; declared queues: {known}")]
    NoRoute {
        /// Exchange.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// Declared queues, for the message.
        known: String,
    },
}

/// Resolves where a task goes: call-site options, then `task_routes`, then the task's
/// declared options, then the default queue.
#[derive(Debug, Clone, Default)]
pub struct Router {
    queues: Vec<Queue>,
    routes: Vec<Route>,
    default_queue: String,
}

impl Router {
    /// A router over declared `queues` and `routes`, with `default_queue`.
    pub fn new(queues: Vec<Queue>, routes: Vec<Route>, default_queue: impl Into<String>) -> Router {
        Router {
            queues,
            routes,
            default_queue: default_queue.into(),
        }
    }

    /// Declared queues.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// The declared queue called `name`, if any.
    pub fn queue(&self, name: &str) -> Option<&Queue> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// The default queue name.
    pub fn default_queue(&self) -> &str {
        &self.default_queue
    }

    /// Resolves the destinations of `task_name` sent with `send`.
    pub fn resolve(
        &self,
        task_name: &str,
        task: Option<&TaskOptions>,
        send: &SendOptions,
    ) -> Result<Vec<Destination>, RoutingError> {
        if send.queue.is_some() || send.routing_key.is_some() || send.exchange.is_some() {
            return self.target(
                send.queue.as_deref(),
                send.exchange.as_deref(),
                send.routing_key.as_deref(),
            );
        }
        if let Some(route) = self
            .routes
            .iter()
            .find(|r| glob_matches(&r.pattern, task_name))
        {
            return self.target(
                route.queue.as_deref(),
                route.exchange.as_deref(),
                route.routing_key.as_deref(),
            );
        }
        if let Some(task) = task {
            if task.queue.is_some() || task.routing_key.is_some() || task.exchange.is_some() {
                return self.target(
                    task.queue.as_deref(),
                    task.exchange.as_deref(),
                    task.routing_key.as_deref(),
                );
            }
        }
        Ok(vec![Destination {
            queue: self.default_queue.clone(),
            exchange: String::new(),
            routing_key: self.default_queue.clone(),
        }])
    }

    fn target(
        &self,
        queue: Option<&str>,
        exchange: Option<&str>,
        routing_key: Option<&str>,
    ) -> Result<Vec<Destination>, RoutingError> {
        if let Some(queue) = queue {
            // Straight to the queue, as Celery does for direct routes; a routing key
            // given alongside is recorded for the consumer.
            let declared = self.queue(queue);
            let (exchange, routing_key) = match (exchange, routing_key, declared) {
                (Some(e), Some(k), _) => (e.to_string(), k.to_string()),
                (None, Some(k), Some(q)) => (q.exchange.name.clone(), k.to_string()),
                _ => (String::new(), queue.to_string()),
            };
            return Ok(vec![Destination {
                queue: queue.to_string(),
                exchange,
                routing_key,
            }]);
        }
        let routing_key = routing_key.unwrap_or(&self.default_queue);
        let candidates: Vec<&Queue> = match exchange {
            Some(exchange) => self
                .queues
                .iter()
                .filter(|q| q.accepts(exchange, routing_key))
                .collect(),
            // No exchange named: any declared binding whose key matches.
            None => self
                .queues
                .iter()
                .filter(|q| q.accepts(&q.exchange.name, routing_key) || q.name == routing_key)
                .collect(),
        };
        if candidates.is_empty() {
            return Err(RoutingError::NoRoute {
                exchange: exchange.unwrap_or("").to_string(),
                routing_key: routing_key.to_string(),
                known: self
                    .queues
                    .iter()
                    .map(|q| format!("{} ({} {:?})", q.name, q.exchange.name, q.routing_key))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(candidates
            .into_iter()
            .map(|q| Destination {
                queue: q.name.clone(),
                exchange: exchange
                    .map(str::to_string)
                    .unwrap_or_else(|| q.exchange.name.clone()),
                routing_key: routing_key.to_string(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_follow_amqp() {
        assert!(topic_matches("short.#", "short"));
        assert!(topic_matches("short.#", "short.notify.email"));
        assert!(!topic_matches("short.#", "long.file"));
        assert!(topic_matches("*.orange.*", "quick.orange.rabbit"));
        assert!(!topic_matches("*.orange.*", "quick.orange"));
        assert!(!topic_matches("*.orange.*", "quick.orange.male.rabbit"));
        assert!(topic_matches("lazy.#", "lazy"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("#.x", "a.b.c.x"));
        assert!(!topic_matches("#.x", "a.b.c.y"));
        assert!(topic_matches("a.*.#", "a.b"));
        assert!(!topic_matches("a.*.#", "a"));
        // Many `#`s do not blow up.
        let hostile = "#.".repeat(50) + "z";
        assert!(!topic_matches(&hostile, &"a.".repeat(60)));
    }

    #[test]
    fn task_globs() {
        assert!(glob_matches("notify.*", "notify.send"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("files.proc?ss", "files.process"));
        assert!(!glob_matches("notify.*", "files.process"));
        // Found by fuzzing: a literal `*` in the name must not consume the wildcard.
        assert!(glob_matches("*", "*.heara"));
        assert!(glob_matches("a*z", "a*bz"));
    }

    fn router() -> Router {
        Router::new(
            vec![
                Queue::new("short-task").routing_key("short.#"),
                Queue::new("long-task").routing_key("long.#"),
                Queue::new("celery"),
            ],
            vec![
                Route::to_queue("files.*", "long-task"),
                Route::to_routing_key("notify.*", "short.notify"),
            ],
            "celery",
        )
    }

    #[test]
    fn routes_resolve_in_precedence_order() {
        let r = router();
        let to = |name: &str, send: SendOptions| {
            r.resolve(name, None, &send).expect("routes")[0]
                .queue
                .clone()
        };
        assert_eq!(to("files.process", SendOptions::new()), "long-task");
        assert_eq!(to("notify.send", SendOptions::new()), "short-task");
        assert_eq!(to("other", SendOptions::new()), "celery");
        assert_eq!(
            to("files.process", SendOptions::new().queue("short-task")),
            "short-task"
        );
        assert_eq!(
            to("other", SendOptions::new().routing_key("long.big.file")),
            "long-task"
        );
        let task = TaskOptions {
            queue: Some("long-task".into()),
            ..TaskOptions::default()
        };
        assert_eq!(
            r.resolve("x", Some(&task), &SendOptions::new())
                .expect("ok")[0]
                .queue,
            "long-task"
        );
    }

    #[test]
    fn unmatched_routing_key_is_an_error() {
        let err = router()
            .resolve("x", None, &SendOptions::new().routing_key("nowhere.at.all"))
            .expect_err("no route");
        assert!(err.to_string().contains("nowhere.at.all"));
    }

    #[test]
    fn direct_queue_publish_uses_anonymous_exchange() {
        let d = router()
            .resolve("x", None, &SendOptions::new())
            .expect("ok");
        assert_eq!(
            d,
            vec![Destination {
                queue: "celery".into(),
                exchange: "".into(),
                routing_key: "celery".into()
            }]
        );
    }
}

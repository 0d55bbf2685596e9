//! Worker configuration.

use std::time::Duration;

use celeriac_core::{Queue, Settings};

/// How one queue is consumed.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    /// Queue name.
    pub name: String,
    /// Slots: tasks of this queue that run at the same time.
    pub concurrency: usize,
    /// Messages reserved per slot (the prefetch window is `concurrency × multiplier`).
    pub prefetch_multiplier: usize,
    /// Ack mode for tasks that do not declare one (`None` = the worker default).
    pub acks_late: Option<bool>,
}

impl QueueSettings {
    /// Settings for `name` with `concurrency` slots and a prefetch multiplier of 1.
    pub fn new(name: impl Into<String>, concurrency: usize) -> QueueSettings {
        QueueSettings {
            name: name.into(),
            concurrency: concurrency.max(1),
            prefetch_multiplier: 1,
            acks_late: None,
        }
    }

    /// The prefetch window.
    pub fn window(&self) -> usize {
        self.concurrency.max(1) * self.prefetch_multiplier.max(1)
    }

    /// Parses a `-Q` entry: `name` or `name:c=2,prefetch=1,acks_late` (keys `c` /
    /// `concurrency`, `prefetch` / `prefetch_multiplier`, `acks_late` / `acks_late=false`).
    /// Unset values come from `defaults`.
    pub fn parse(spec: &str, defaults: &QueueSettings) -> Result<QueueSettings, String> {
        let (name, options) = match spec.split_once(':') {
            Some((name, options)) => (name.trim(), options),
            None => (spec.trim(), ""),
        };
        if name.is_empty() {
            return Err(format!("empty queue name in {spec:?}"));
        }
        let mut settings = QueueSettings {
            name: name.to_string(),
            ..defaults.clone()
        };
        for option in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (key, value) = option.split_once('=').unwrap_or((option, "true"));
            let number = || {
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        format!("{key} in {spec:?} must be a positive integer, found {value:?}")
                    })
            };
            match key {
                "c" | "concurrency" => settings.concurrency = number()?,
                "prefetch" | "prefetch_multiplier" => settings.prefetch_multiplier = number()?,
                "acks_late" => {
                    settings.acks_late = Some(value.parse::<bool>().map_err(|_| {
                        format!("acks_late in {spec:?} must be true or false, found {value:?}")
                    })?)
                }
                other => {
                    return Err(format!(
                        "unknown queue option {other:?} in {spec:?}; use c=N, prefetch=N, acks_late[=false]"
                    ))
                }
            }
        }
        Ok(settings)
    }
}

/// Everything a worker needs to know besides its tasks and connections.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Node name (`name@host`).
    pub hostname: String,
    /// The queues to consume and how.
    pub queues: Vec<QueueSettings>,
    /// Ack late for tasks and queues that do not say.
    pub acks_late: bool,
    /// With late ack, requeue a failed task's message instead of acking it.
    pub reject_on_failure: bool,
    /// Lease of held messages; renewed every third of it.
    pub lease: Duration,
    /// Running tasks get this long to finish at shutdown.
    pub shutdown_timeout: Duration,
    /// Store STARTED before running.
    pub track_started: bool,
    /// Store name, args, kwargs, worker, retries and queue with results.
    pub result_extended: bool,
    /// Result expiry.
    pub result_expires: Option<Duration>,
    /// Larger messages go to dead letter.
    pub max_message_bytes: usize,
    /// With a key, messages without a valid signature go to dead letter and the
    /// messages this worker publishes (retries, deferred runs) are signed.
    pub signing_key: Option<celeriac_core::signing::SigningKey>,
    /// Store no results unless a task asks (`task_ignore_result`).
    pub ignore_result: bool,
    /// How often the worker records its heartbeat (Celery's default: 2 s).
    pub heartbeat_interval: Duration,
    /// Send task events (`-E`, `worker_send_task_events`); worker events are always
    /// sent.
    pub send_task_events: bool,
    /// Exchange of events (`celeryev`).
    pub event_exchange: String,
    /// Remote-control namespace (`celery`: requests on `celery.pidbox`).
    pub control_exchange: String,
}

impl WorkerConfig {
    /// A config from settings, consuming `queues` (declared queues give their own
    /// concurrency / prefetch / ack mode).
    pub fn from_settings(
        settings: &Settings,
        hostname: impl Into<String>,
        queues: &[Queue],
    ) -> WorkerConfig {
        let queues = queues
            .iter()
            .map(|q| QueueSettings {
                name: q.name.clone(),
                concurrency: q
                    .concurrency
                    .unwrap_or_else(|| settings.default_concurrency()),
                prefetch_multiplier: q
                    .prefetch_multiplier
                    .unwrap_or(settings.worker_prefetch_multiplier.max(1)),
                acks_late: q.acks_late,
            })
            .collect();
        WorkerConfig {
            hostname: hostname.into(),
            queues,
            acks_late: settings.task_acks_late,
            reject_on_failure: settings.task_reject_on_failure,
            lease: settings.lease(),
            shutdown_timeout: settings.shutdown_timeout(),
            track_started: settings.task_track_started,
            result_extended: true,
            result_expires: settings.result_expires(),
            max_message_bytes: settings.task_max_message_bytes,
            signing_key: celeriac_core::signing::SigningKey::any_length(
                settings.signing_key.expose(),
            ),
            ignore_result: settings.task_ignore_result,
            heartbeat_interval: Duration::from_secs(2),
            send_task_events: settings.worker_send_task_events,
            event_exchange: settings.event_exchange.clone(),
            control_exchange: settings.control_exchange.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_specs_parse() {
        let defaults = QueueSettings::new("", 4);
        let long =
            QueueSettings::parse("long-task:c=2,prefetch=1,acks_late", &defaults).expect("ok");
        assert_eq!(long.name, "long-task");
        assert_eq!(
            (long.concurrency, long.prefetch_multiplier, long.acks_late),
            (2, 1, Some(true))
        );
        let short = QueueSettings::parse("short-task", &defaults).expect("ok");
        assert_eq!((short.concurrency, short.acks_late), (4, None));
        assert!(QueueSettings::parse("q:c=0", &defaults).is_err());
        assert!(QueueSettings::parse("q:speed=9", &defaults).is_err());
        assert!(QueueSettings::parse(":c=1", &defaults).is_err());
    }
}

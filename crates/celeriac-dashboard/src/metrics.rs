//! Prometheus metrics in the text exposition format, read from the stores on every
//! scrape (the dashboard keeps no counters of its own).

use std::fmt::Write;

use chrono::Utc;

use crate::api::{task_counts, worker_views, ApiError};
use crate::DashboardState;

/// Escapes a label value (`\`, `"` and newlines).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics text.
pub(crate) async fn render(state: &DashboardState) -> Result<String, ApiError> {
    let mut out = String::new();
    let workers = worker_views(state).await?;
    let queues = state
        .broker
        .queue_stats(&[])
        .await
        .map_err(ApiError::internal)?;
    let tasks = task_counts(state).await?;

    let _ = writeln!(
        out,
        "# HELP celeriac_workers Workers known to the broker, by liveness."
    );
    let _ = writeln!(out, "# TYPE celeriac_workers gauge");
    let alive = workers.iter().filter(|w| w.alive()).count();
    let _ = writeln!(out, "celeriac_workers{{state=\"alive\"}} {alive}");
    let _ = writeln!(
        out,
        "celeriac_workers{{state=\"gone\"}} {}",
        workers.len() - alive
    );

    let _ = writeln!(
        out,
        "# HELP celeriac_worker_active_tasks Tasks running on each live worker."
    );
    let _ = writeln!(out, "# TYPE celeriac_worker_active_tasks gauge");
    for worker in workers.iter().filter(|w| w.alive()) {
        let _ = writeln!(
            out,
            "celeriac_worker_active_tasks{{worker=\"{}\"}} {}",
            label(worker.hostname()),
            worker.active()
        );
    }
    let _ = writeln!(
        out,
        "# HELP celeriac_worker_processed_tasks_total Tasks each worker finished since it started."
    );
    let _ = writeln!(out, "# TYPE celeriac_worker_processed_tasks_total counter");
    for worker in &workers {
        let _ = writeln!(
            out,
            "celeriac_worker_processed_tasks_total{{worker=\"{}\"}} {}",
            label(worker.hostname()),
            worker.processed()
        );
    }
    let _ = writeln!(
        out,
        "# HELP celeriac_worker_heartbeat_age_seconds Seconds since each worker's last heartbeat."
    );
    let _ = writeln!(out, "# TYPE celeriac_worker_heartbeat_age_seconds gauge");
    for worker in &workers {
        let _ = writeln!(
            out,
            "celeriac_worker_heartbeat_age_seconds{{worker=\"{}\"}} {:.3}",
            label(worker.hostname()),
            worker.heartbeat_age()
        );
    }

    let _ = writeln!(out, "# HELP celeriac_queue_messages Messages per queue: ready, scheduled (ETA), held (unacked), dead (dead letters).");
    let _ = writeln!(out, "# TYPE celeriac_queue_messages gauge");
    for queue in &queues {
        let name = label(&queue.name);
        for (kind, value) in [
            ("ready", queue.ready),
            ("scheduled", queue.scheduled),
            ("held", queue.held),
            ("dead", queue.dead_letters),
        ] {
            let _ = writeln!(
                out,
                "celeriac_queue_messages{{queue=\"{name}\",state=\"{kind}\"}} {value}"
            );
        }
    }

    let _ = writeln!(
        out,
        "# HELP celeriac_task_results Stored task results by state (backends that can count)."
    );
    let _ = writeln!(out, "# TYPE celeriac_task_results gauge");
    for (state_name, count) in &tasks {
        let _ = writeln!(
            out,
            "celeriac_task_results{{state=\"{}\"}} {count}",
            label(state_name)
        );
    }
    if let Some(history) = &state.history {
        render_history(&mut out, history);
    }
    if let Some(rates) = &state.rates {
        render_rates(&mut out, rates);
    }
    let _ = writeln!(
        out,
        "# HELP celeriac_dashboard_scrape_timestamp_seconds When these metrics were read."
    );
    let _ = writeln!(
        out,
        "# TYPE celeriac_dashboard_scrape_timestamp_seconds gauge"
    );
    let _ = writeln!(
        out,
        "celeriac_dashboard_scrape_timestamp_seconds {:.3}",
        Utc::now().timestamp_millis() as f64 / 1000.0
    );
    Ok(out)
}

/// Tasks by state and name, and the runtime histogram, from the event history.
fn render_history(out: &mut String, history: &crate::history::TaskHistory) {
    let _ = writeln!(
        out,
        "# HELP celeriac_tasks Tasks in the dashboard's event history by state and name."
    );
    let _ = writeln!(out, "# TYPE celeriac_tasks gauge");
    for ((state_name, name), count) in history.counts() {
        let _ = writeln!(
            out,
            "celeriac_tasks{{state=\"{}\",name=\"{}\"}} {count}",
            label(&state_name),
            label(&name)
        );
    }
    let _ = writeln!(out, "# HELP celeriac_task_runtime_seconds Runtimes of succeeded tasks (from task events) by name.");
    let _ = writeln!(out, "# TYPE celeriac_task_runtime_seconds histogram");
    for (name, stats) in history.runtimes() {
        let name = label(&name);
        let mut cumulative = 0;
        for (bound, count) in crate::history::RUNTIME_BUCKETS.iter().zip(&stats.buckets) {
            cumulative += count;
            let _ = writeln!(
                out,
                "celeriac_task_runtime_seconds_bucket{{name=\"{name}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "celeriac_task_runtime_seconds_bucket{{name=\"{name}\",le=\"+Inf\"}} {}",
            stats.count
        );
        let _ = writeln!(
            out,
            "celeriac_task_runtime_seconds_sum{{name=\"{name}\"}} {}",
            stats.sum
        );
        let _ = writeln!(
            out,
            "celeriac_task_runtime_seconds_count{{name=\"{name}\"}} {}",
            stats.count
        );
    }
}

/// Task events counted per queue, and the latest in / out rates.
fn render_rates(out: &mut String, rates: &crate::rates::QueueRates) {
    let _ = writeln!(out, "# HELP celeriac_queue_tasks_total Task events counted per queue since the dashboard started: sent (task-sent), received (taken by a worker), succeeded, failed.");
    let _ = writeln!(out, "# TYPE celeriac_queue_tasks_total counter");
    for (queue, counters) in rates.counters() {
        let queue = label(&queue);
        for (event, value) in [
            ("sent", counters.sent),
            ("received", counters.received),
            ("succeeded", counters.succeeded),
            ("failed", counters.failed),
        ] {
            let _ = writeln!(
                out,
                "celeriac_queue_tasks_total{{queue=\"{queue}\",event=\"{event}\"}} {value}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP celeriac_queue_rate Messages per second into and out of each queue over the last sample interval."
    );
    let _ = writeln!(out, "# TYPE celeriac_queue_rate gauge");
    for series in rates.series() {
        let queue = label(&series.name);
        let _ = writeln!(
            out,
            "celeriac_queue_rate{{queue=\"{queue}\",direction=\"in\"}} {}",
            series.in_rate
        );
        let _ = writeln!(
            out,
            "celeriac_queue_rate{{queue=\"{queue}\",direction=\"out\"}} {}",
            series.out_rate
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

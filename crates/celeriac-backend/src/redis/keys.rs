//! Every Redis key and channel name of the result backend, built in one place.

/// Celery's key prefix of task results.
pub const TASK_KEYPREFIX: &str = "celery-task-meta-";
/// Celery's key prefix of group results (saved groups, chord bookkeeping).
pub const GROUP_KEYPREFIX: &str = "celery-taskset-meta-";

/// Key names of one backend (one global key prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The effective global prefix (already ending in a separator, or empty).
    prefix: String,
}

impl Keys {
    /// Keys under `global_keyprefix` with Celery's rule for result backends
    /// (`result_backend_transport_options.global_keyprefix`): the prefix gets a `_`
    /// appended unless it is empty or already ends in one of `:`, `_`, `-`, `.`.
    pub fn new(global_keyprefix: &str) -> Keys {
        let mut prefix = global_keyprefix.to_string();
        if !prefix.is_empty() && !prefix.ends_with([':', '_', '-', '.']) {
            prefix.push('_');
        }
        Keys { prefix }
    }

    /// The effective prefix (empty, or ending in a separator).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>celery-task-meta-<task_id>`: the key holding the task's meta and
    /// the pub/sub channel its writes are published on.
    pub fn task_meta(&self, task_id: &str) -> String {
        format!("{}{TASK_KEYPREFIX}{task_id}", self.prefix)
    }

    /// `<prefix>celery-taskset-meta-<group_id>`: the key of a saved group (and the
    /// stem of a chord's `.s`/`.j`/... keys).
    pub fn group_meta(&self, group_id: &str) -> String {
        format!("{}{GROUP_KEYPREFIX}{group_id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn celery_appends_an_underscore_unless_the_prefix_ends_in_a_separator() {
        assert_eq!(Keys::new("").task_meta("a"), "celery-task-meta-a");
        assert_eq!(Keys::new("app").task_meta("a"), "app_celery-task-meta-a");
        for prefix in ["app:", "app_", "app-", "app."] {
            assert_eq!(
                Keys::new(prefix).task_meta("a"),
                format!("{prefix}celery-task-meta-a")
            );
        }
        assert_eq!(Keys::new("app").prefix(), "app_");
        assert_eq!(
            Keys::new("app").group_meta("g"),
            "app_celery-taskset-meta-g"
        );
    }
}

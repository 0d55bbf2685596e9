//! In-process wake-ups for [`wait`](super::SqliteBackend::wait), keyed by task id.
//!
//! A waiter [`subscribe`](Waiters::subscribe)s *before* it reads the row, so a store
//! that commits between the read and the wait still wakes it (a `watch` receiver
//! remembers a change it has not seen yet). The entry for a task id lives exactly as
//! long as someone waits on it: the last [`Subscription`] to drop removes it, under
//! the same lock that creates entries, so the map never grows with finished waits.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::watch;

/// Task ids someone in this process waits on, each with a channel to wake them.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    map: Mutex<HashMap<String, watch::Sender<()>>>,
}

impl Waiters {
    /// Registers interest in `task_id`; changes notified from now on wake the
    /// subscription.
    pub(crate) fn subscribe(&self, task_id: &str) -> Subscription<'_> {
        let mut map = self.map.lock();
        let receiver = match map.get(task_id) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(());
                map.insert(task_id.to_owned(), sender);
                receiver
            }
        };
        Subscription {
            waiters: self,
            task_id: task_id.to_owned(),
            receiver: Some(receiver),
        }
    }

    /// Wakes everyone waiting on any of `task_ids`.
    pub(crate) fn notify<'a>(&self, task_ids: impl IntoIterator<Item = &'a str>) {
        let map = self.map.lock();
        if map.is_empty() {
            return;
        }
        for task_id in task_ids {
            if let Some(sender) = map.get(task_id) {
                sender.send_replace(());
            }
        }
    }

    /// How many task ids are waited on (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }
}

/// One waiter's interest in one task id; dropping it unregisters.
#[derive(Debug)]
pub(crate) struct Subscription<'a> {
    waiters: &'a Waiters,
    task_id: String,
    receiver: Option<watch::Receiver<()>>,
}

impl Subscription<'_> {
    /// Resolves when the task id was notified since the last call (or since
    /// subscribing). Cancel-safe.
    pub(crate) async fn notified(&mut self) {
        let Some(receiver) = self.receiver.as_mut() else {
            return std::future::pending().await;
        };
        if receiver.changed().await.is_err() {
            // The sender lives while a receiver is registered, so this does not
            // happen; never spin on it if it ever does.
            self.receiver = None;
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        let mut map = self.waiters.map.lock();
        drop(self.receiver.take());
        if map
            .get(&self.task_id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            map.remove(&self.task_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_notify_before_the_wait_is_not_lost() {
        let waiters = Waiters::default();
        let mut subscription = waiters.subscribe("a");
        waiters.notify(["a"]);
        tokio::time::timeout(Duration::from_secs(1), subscription.notified())
            .await
            .expect("woken by the earlier notify");
    }

    #[tokio::test]
    async fn only_the_notified_task_id_wakes() {
        let waiters = Waiters::default();
        let mut a = waiters.subscribe("a");
        let mut b = waiters.subscribe("b");
        waiters.notify(["b"]);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), a.notified())
                .await
                .is_err(),
            "a was not notified"
        );
        tokio::time::timeout(Duration::from_secs(1), b.notified())
            .await
            .expect("b was notified");
    }

    #[test]
    fn entries_are_removed_with_their_last_subscription() {
        let waiters = Waiters::default();
        let first = waiters.subscribe("a");
        let second = waiters.subscribe("a");
        let other = waiters.subscribe("b");
        assert_eq!(waiters.len(), 2);
        drop(first);
        assert_eq!(waiters.len(), 2, "a still has a waiter");
        drop(second);
        assert_eq!(waiters.len(), 1);
        drop(other);
        assert_eq!(waiters.len(), 0);
        waiters.notify(["a", "b"]);
    }
}

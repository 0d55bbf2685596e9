//! The ids of revoked tasks a worker remembers, bounded as Celery bounds them: at
//! most 50,000 ids (`REVOKES_MAX`), each kept for 3 hours (`REVOKE_EXPIRES`), the
//! oldest forgotten first.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Most ids kept.
pub const REVOKES_MAX: usize = 50_000;
/// How long an id is kept.
pub const REVOKE_EXPIRES: Duration = Duration::from_secs(3 * 3600);

/// A bounded, expiring set of revoked task ids.
#[derive(Debug)]
pub struct RevokedSet {
    capacity: usize,
    ttl: Duration,
    /// Insertion order with insertion time (an id re-added appears again; the older
    /// entry is skipped when it comes up).
    order: VecDeque<(Instant, String)>,
    /// Each id with the time of its latest insertion.
    ids: HashMap<String, Instant>,
}

impl Default for RevokedSet {
    fn default() -> Self {
        RevokedSet::new(REVOKES_MAX, REVOKE_EXPIRES)
    }
}

impl RevokedSet {
    /// At most `capacity` ids (at least 1), each kept for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> RevokedSet {
        RevokedSet {
            capacity: capacity.max(1),
            ttl,
            order: VecDeque::new(),
            ids: HashMap::new(),
        }
    }

    /// Remembers `id` as revoked (again: its time is renewed).
    pub fn insert(&mut self, id: String) {
        let now = Instant::now();
        self.purge(now);
        self.ids.insert(id.clone(), now);
        self.order.push_back((now, id));
        while self.ids.len() > self.capacity {
            self.pop_oldest();
        }
        // Keep the order queue from growing with re-added ids.
        if self.order.len() > self.capacity * 2 {
            let ids = &self.ids;
            self.order.retain(|(at, id)| ids.get(id) == Some(at));
        }
    }

    /// Whether `id` was revoked (and not yet forgotten).
    pub fn contains(&self, id: &str) -> bool {
        self.ids.get(id).is_some_and(|at| at.elapsed() < self.ttl)
    }

    /// The remembered ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .ids
            .iter()
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn purge(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((at, id)) = self.order.pop_front() {
            if self.ids.get(&id) == Some(&at) {
                self.ids.remove(&id);
            }
        }
    }
}

impl Extend<String> for RevokedSet {
    fn extend<I: IntoIterator<Item = String>>(&mut self, ids: I) {
        for id in ids {
            self.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_ids_are_forgotten_beyond_the_capacity() {
        let mut set = RevokedSet::new(3, REVOKE_EXPIRES);
        set.extend(["a", "b", "c", "d"].map(String::from));
        assert_eq!(set.ids(), vec!["b", "c", "d"]);
        // Re-adding renews an id: "b" now outlives "c".
        set.insert("b".into());
        set.insert("e".into());
        assert_eq!(set.ids(), vec!["b", "d", "e"]);
        assert!(set.contains("b") && !set.contains("a") && !set.contains("c"));
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn ids_expire() {
        let mut set = RevokedSet::new(10, Duration::from_millis(30));
        set.insert("a".into());
        assert!(set.contains("a"));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!set.contains("a"));
        set.insert("b".into());
        assert_eq!(set.ids(), vec!["b"], "the expired id was purged");
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn re_adding_many_times_keeps_memory_bounded() {
        let mut set = RevokedSet::new(2, REVOKE_EXPIRES);
        for _ in 0..100 {
            set.insert("same".into());
        }
        assert!(set.order.len() <= 4);
        assert_eq!(set.ids(), vec!["same"]);
    }
}

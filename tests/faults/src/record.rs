//! The execution log: every fault-suite task appends one line when it starts and one
//! when it finishes (`start <id> <pid> <unix ms>`, `done <id> <pid> <unix ms>`), in
//! one `write` each on a file opened for appending, so lines from many processes
//! never interleave. The suite counts executions from this file alone.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

/// One execution of one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// The worker process that ran it.
    pub pid: u32,
    /// When it started (Unix ms).
    pub started_ms: i64,
    /// When it finished, if it did.
    pub done_ms: Option<i64>,
}

/// Appends one line for task `id` (`what` is `start` or `done`).
pub fn append(path: &Path, what: &str, id: u64) -> std::io::Result<()> {
    let line = format!(
        "{what} {id} {} {}\n",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}

/// The executions of every task in a log.
#[derive(Debug, Default, Clone)]
pub struct Log {
    /// Task id → its executions, in start order.
    pub executions: BTreeMap<u64, Vec<Execution>>,
}

impl Log {
    /// Reads a log (a missing file is an empty log). Malformed lines are ignored.
    pub fn read(path: &Path) -> Log {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut log = Log::default();
        for line in text.lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [what, id, pid, ms] = parts[..] else {
                continue;
            };
            let (Ok(id), Ok(pid), Ok(ms)) = (id.parse(), pid.parse(), ms.parse()) else {
                continue;
            };
            let runs = log.executions.entry(id).or_default();
            match what {
                "start" => runs.push(Execution {
                    pid,
                    started_ms: ms,
                    done_ms: None,
                }),
                "done" => {
                    if let Some(run) = runs
                        .iter_mut()
                        .rev()
                        .find(|r| r.pid == pid && r.done_ms.is_none())
                    {
                        run.done_ms = Some(ms);
                    }
                }
                _ => {}
            }
        }
        log
    }

    /// Ids with at least one finished execution.
    pub fn done(&self) -> BTreeSet<u64> {
        self.executions
            .iter()
            .filter(|(_, runs)| runs.iter().any(|r| r.done_ms.is_some()))
            .map(|(id, _)| *id)
            .collect()
    }

    /// How many executions finished.
    pub fn finished(&self) -> usize {
        self.executions
            .values()
            .flatten()
            .filter(|r| r.done_ms.is_some())
            .count()
    }

    /// Ids of `expected` that never finished.
    pub fn lost(&self, expected: &BTreeSet<u64>) -> BTreeSet<u64> {
        let done = self.done();
        expected.difference(&done).copied().collect()
    }

    /// Ids that started more than once, with their executions.
    pub fn duplicates(&self) -> BTreeMap<u64, Vec<Execution>> {
        self.executions
            .iter()
            .filter(|(_, runs)| runs.len() > 1)
            .map(|(id, runs)| (*id, runs.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_pair_starts_with_finishes_per_process() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log");
        std::fs::write(
            &path,
            "start 1 10 100\nstart 2 10 101\ndone 1 10 150\nstart 2 11 300\ndone 2 11 350\n\
             garbage\nstart 3 10 400\n",
        )
        .expect("write");
        let log = Log::read(&path);
        assert_eq!(log.done(), BTreeSet::from([1, 2]));
        assert_eq!(log.finished(), 2);
        assert_eq!(
            log.lost(&BTreeSet::from([1, 2, 3, 4])),
            BTreeSet::from([3, 4])
        );
        let duplicates = log.duplicates();
        assert_eq!(duplicates.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(duplicates[&2][0].done_ms, None, "pid 10 never finished 2");
        assert_eq!(duplicates[&2][1].done_ms, Some(350));
    }

    #[test]
    fn appended_lines_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log");
        append(&path, "start", 7).expect("append");
        append(&path, "done", 7).expect("append");
        let log = Log::read(&path);
        assert_eq!(log.done(), BTreeSet::from([7]));
        assert_eq!(log.executions[&7][0].pid, std::process::id());
    }
}

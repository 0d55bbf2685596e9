//! `locks list` and `locks release KEY`: the app's lock store (the `lock_store`
//! setting, else the broker's SQLite file or Redis database), or the one named by
//! `--store URL` (`sqlite://`, `redis://`, `postgres://`), for operators.
//! Single-instance locks are `single:<task>[:<args>]`, unique enqueue locks
//! `unique:<key>` (see `celeriac::lock::keys`).

use std::io::Write;

use anyhow::bail;
use celeriac_lock::LockInfo;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use crate::app::App;

/// `locks` flags.
#[derive(Debug, Args)]
pub struct LocksArgs {
    /// The lock store to use instead of the app's (`sqlite://PATH`,
    /// `redis://HOST[:PORT][/DB][?global_keyprefix=P]`, `postgres://…[?schema=S]`).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: LocksCommand,
}

/// The `locks` subcommands.
#[derive(Debug, Subcommand)]
pub enum LocksCommand {
    /// List live locks: key, owner, fencing number, time left.
    List {
        /// Only keys starting with this prefix (e.g. `single:` or `unique:`).
        #[arg(long)]
        prefix: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Release a lock whoever holds it. Its holder's renewals then fail and another
    /// run may start at once: use it for a lock you know is stale.
    Release {
        /// The lock's key, as `locks list` shows it.
        key: String,
    },
}

/// Runs a `locks` subcommand.
pub(crate) async fn run(app: App, args: LocksArgs) -> anyhow::Result<()> {
    let locks = match &args.store {
        Some(url) => celeriac_lock::connect(url).await?,
        None => app.require_locks()?.clone(),
    };
    match args.command {
        LocksCommand::List { prefix, json } => {
            let mut listed = locks.list().await?;
            if let Some(prefix) = &prefix {
                listed.retain(|info| info.key.starts_with(prefix.as_str()));
            }
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&listed)?)?;
            } else {
                out.write_all(table(&listed, Utc::now()).as_bytes())?;
            }
            Ok(())
        }
        LocksCommand::Release { key } => {
            if locks.force_release(&key).await? {
                println!("released {key}");
                Ok(())
            } else {
                bail!("no live lock {key:?} in {}", locks.describe())
            }
        }
    }
}

/// The lock listing as a table (or a line saying there are none).
fn table(locks: &[LockInfo], now: DateTime<Utc>) -> String {
    if locks.is_empty() {
        return "no locks held\n".to_string();
    }
    let width = locks
        .iter()
        .map(|info| info.key.chars().count())
        .max()
        .unwrap_or(0)
        .max(3);
    let mut text = format!(
        "{:<width$}  {:>10}  {:>10}  OWNER\n",
        "KEY", "FENCING", "EXPIRES IN"
    );
    for info in locks {
        let left = (info.expires_at - now).num_milliseconds().max(0) as f64 / 1000.0;
        text.push_str(&format!(
            "{:<width$}  {:>10}  {:>9.1}s  {}\n",
            info.key, info.fencing, left, info.owner
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_key_fencing_time_left_and_owner() {
        let now = Utc::now();
        let info = LockInfo::new(
            "single:billing.run",
            "w1@host pid=7 task=abc",
            42,
            now,
            now + chrono::Duration::milliseconds(2500),
        );
        let text = table(&[info], now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("KEY") && lines[0].ends_with("OWNER"),
            "{text}"
        );
        assert!(lines[1].starts_with("single:billing.run"), "{text}");
        assert!(
            lines[1].contains(" 42 ") && lines[1].contains("2.5s"),
            "{text}"
        );
        assert!(lines[1].ends_with("w1@host pid=7 task=abc"), "{text}");
        assert_eq!(table(&[], now), "no locks held\n");
    }
}

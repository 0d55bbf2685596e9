//! Saved groups against Python Celery itself: a group Python's `GroupResult.save()`
//! stored restores in celeriac with its members in order, and one celeriac saved
//! restores in Python's `GroupResult.restore()` (under a `global_keyprefix`).
//!
//! Needs Redis and a Python with celery: `$CELERIAC_PYTHON`, else the repository's
//! `.venv/bin/python` (`bash scripts/python-env.sh`). Skipped when either is missing
//! (failed when `CELERIAC_REQUIRE_SERVICES=1` / `CELERIAC_REQUIRE_PYTHON=1`).
#![cfg(feature = "redis")]

mod redis_support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use celeriac_backend::{ResultBackend, SavedGroup};
use redis_support::RedisHarness;

/// `save URL PREFIX GID ID...` or `restore URL PREFIX GID` (prints the member ids as JSON).
const SCRIPT: &str = r#"
import json, sys
from celery import Celery
mode, url, prefix, gid = sys.argv[1:5]
app = Celery("groups", backend=url)
app.conf.result_backend_transport_options = {"global_keyprefix": prefix}
if mode == "save":
    app.GroupResult(gid, [app.AsyncResult(i) for i in sys.argv[5:]]).save()
else:
    group = app.GroupResult.restore(gid)
    print(json.dumps(None if group is None else [r.id for r in group.results]))
"#;

fn python() -> Option<PathBuf> {
    let python = std::env::var_os("CELERIAC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
        });
    let has_celery = Command::new(&python)
        .args(["-c", "import celery"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_celery {
        let required = std::env::var("CELERIAC_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "CELERIAC_REQUIRE_PYTHON=1 but {} has no celery (run scripts/python-env.sh)",
            python.display()
        );
        eprintln!(
            "skipped: no Python with celery at {} (set CELERIAC_PYTHON or run scripts/python-env.sh)",
            python.display()
        );
    }
    has_celery.then_some(python)
}

fn run_python(python: &PathBuf, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("run Python");
    assert!(
        out.status.success(),
        "Python {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_groups_cross_between_python_and_celeriac() {
    let Some(harness) = RedisHarness::new("saved_groups_cross_between_python_and_celeriac") else {
        return;
    };
    let Some(python) = python() else {
        return;
    };
    let backend = harness.open().await;
    let server = harness.server().to_string();
    let prefix = harness.prefix().to_string();

    // Python saves, celeriac restores.
    let ids = ["py-2", "py-0", "py-1"];
    let mut args = vec!["save", &server, &prefix, "from-python"];
    args.extend(ids);
    run_python(&python, &args);
    let restored = backend
        .restore_group("from-python")
        .await
        .expect("restore_group")
        .expect("Python's group is there");
    assert_eq!(restored.member_ids(), ids);

    // celeriac saves, Python restores.
    let group = SavedGroup::of_tasks("from-celeriac", ["rs-1", "rs-0", "rs-2"]);
    backend
        .save_group(&group, Some(Duration::from_secs(600)))
        .await
        .expect("save_group");
    let printed = run_python(&python, &["restore", &server, &prefix, "from-celeriac"]);
    let members: Vec<String> = serde_json::from_str(&printed).expect("JSON from Python");
    assert_eq!(members, ["rs-1", "rs-0", "rs-2"]);

    // Forgotten by celeriac: Python finds nothing.
    backend
        .forget_group("from-celeriac")
        .await
        .expect("forget_group");
    let printed = run_python(&python, &["restore", &server, &prefix, "from-celeriac"]);
    assert_eq!(printed, "null");
}

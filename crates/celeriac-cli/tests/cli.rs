//! The `celeriac` binary end to end on temp SQLite files: flags, environment,
//! call / queues / result / purge, help text.

use std::process::{Command, Output};

fn celeriac(dir: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command
        .current_dir(dir)
        .args(args)
        .env_remove("CELERIAC_BROKER_URL")
        .env_remove("CELERIAC_RESULT_BACKEND");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run celeriac")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "celeriac failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn call_queues_result_and_purge_with_flag_and_environment_precedence() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env_db = format!("sqlite://{}", dir.path().join("env.db").display());
    let flag_db = format!("sqlite://{}", dir.path().join("flag.db").display());
    let env = [("CELERIAC_BROKER_URL", env_db.clone())];

    // The environment selects the broker...
    let id = stdout(&celeriac(
        dir.path(),
        &["call", "proj.tasks.add", "--args", "[2, 3]"],
        &env,
    ));
    let id = id.trim();
    assert_eq!(id.len(), 36, "prints the task id: {id:?}");
    assert!(dir.path().join("env.db").exists());
    // ...and the flag wins over the environment.
    stdout(&celeriac(
        dir.path(),
        &[
            "--broker",
            &flag_db,
            "call",
            "other.task",
            "--queue",
            "special",
        ],
        &env,
    ));

    let queues = stdout(&celeriac(dir.path(), &["queues", "--json"], &env));
    let stats: serde_json::Value = serde_json::from_str(&queues).expect("json");
    let celery = stats
        .as_array()
        .expect("array")
        .iter()
        .find(|q| q["name"] == "celery")
        .expect("celery queue");
    assert_eq!(celery["ready"], 1);
    let flag_queues = stdout(&celeriac(
        dir.path(),
        &["--broker", &flag_db, "queues", "--json"],
        &env,
    ));
    assert!(flag_queues.contains("\"special\""), "{flag_queues}");

    let result = stdout(&celeriac(dir.path(), &["result", id], &env));
    assert!(result.contains("\"PENDING\""), "{result}");

    let purged = stdout(&celeriac(dir.path(), &["purge", "--force"], &env));
    assert!(purged.contains("purged 1 message"), "{purged}");
    let queues = stdout(&celeriac(dir.path(), &["queues"], &env));
    assert!(
        queues
            .lines()
            .any(|l| l.starts_with("celery ") && l.split_whitespace().nth(1) == Some("0")),
        "{queues}"
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let out = celeriac(
        dir.path(),
        &["--broker", &db, "call", "t", "--args", "{not json"],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--args must be a JSON array"));
    let out = celeriac(dir.path(), &["--broker", "nope://x", "queues"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid broker URL"));
    let out = celeriac(
        dir.path(),
        &["--broker", &db, "worker", "-Q", "q:c=zero"],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("positive integer"));
}

#[test]
fn help_lists_the_commands() {
    let dir = tempfile::tempdir().expect("temp dir");
    let help = stdout(&celeriac(dir.path(), &["--help"], &[]));
    for command in ["worker", "call", "result", "queues", "purge", "bench"] {
        assert!(help.contains(command), "help mentions {command}: {help}");
    }
    let worker_help = stdout(&celeriac(dir.path(), &["worker", "--help"], &[]));
    assert!(worker_help.contains("prefetch"), "{worker_help}");
}

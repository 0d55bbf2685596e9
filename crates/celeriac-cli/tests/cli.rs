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
    for command in [
        "worker", "call", "result", "queues", "purge", "bench", "beat", "schedule",
    ] {
        assert!(help.contains(command), "help mentions {command}: {help}");
    }
    let worker_help = stdout(&celeriac(dir.path(), &["worker", "--help"], &[]));
    assert!(worker_help.contains("prefetch"), "{worker_help}");
}

fn failure(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn schedule_commands_add_list_show_enable_disable_run_now_and_remove() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("celeriac.db").display());
    let env = [("CELERIAC_BROKER_URL", db.clone())];
    let run = |args: &[&str]| celeriac(dir.path(), args, &env);

    let added = stdout(&run(&[
        "schedule",
        "add",
        "digest",
        "--task",
        "notify.digest",
        "--every",
        "30s",
        "--queue",
        "digests",
        "--args",
        "[7]",
    ]));
    assert_eq!(added.trim(), "added digest: every 30s -> notify.digest");
    stdout(&run(&[
        "schedule",
        "add",
        "report",
        "--task",
        "reports.daily",
        "--crontab",
        "0 9 * * mon-fri",
        "--tz",
        "Asia/Seoul",
        "--catch-up",
        "skip",
    ]));
    let updated = stdout(&run(&[
        "schedule",
        "add",
        "digest",
        "--task",
        "notify.digest",
        "--every",
        "1m",
        "--queue",
        "digests",
        "--args",
        "[7]",
    ]));
    assert!(updated.starts_with("updated digest: every 1m"), "{updated}");

    let list = stdout(&run(&["schedule", "list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{list}");
    assert!(
        lines[1].starts_with("digest ") && lines[1].contains("every 1m"),
        "{list}"
    );
    assert!(
        lines[2].starts_with("report ")
            && lines[2].contains("crontab 0 9 * * mon-fri (Asia/Seoul)"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["schedule", "list", "--json"]))).expect("json");
    assert_eq!(json.as_array().map(Vec::len), Some(2));
    assert_eq!(json[1]["catch_up"], "skip");
    assert!(json[1]["next_run_at"].is_string(), "{json}");

    let show = stdout(&run(&["schedule", "show", "report"]));
    assert!(
        show.contains("reports.daily") && show.contains("Asia/Seoul"),
        "{show}"
    );

    assert_eq!(
        stdout(&run(&["schedule", "disable", "digest"])).trim(),
        "disabled digest"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["schedule", "show", "digest", "--json"])))
            .expect("json");
    assert_eq!(json["enabled"], false);
    assert_eq!(
        stdout(&run(&["schedule", "enable", "digest"])).trim(),
        "enabled digest"
    );

    // run-now sends the entry's task with its arguments and routing.
    let id = stdout(&run(&["schedule", "run-now", "digest"]));
    assert_eq!(id.trim().len(), 36, "prints the task id: {id:?}");
    let queues: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["queues", "--json"]))).expect("json");
    let digests = queues
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == "digests"))
        .expect("the digests queue");
    assert_eq!(digests["ready"], 1);

    assert_eq!(
        stdout(&run(&["schedule", "remove", "report"])).trim(),
        "removed report"
    );
    assert!(
        failure(&run(&["schedule", "remove", "report"])).contains("no schedule entry \"report\"")
    );
    assert!(failure(&run(&["schedule", "show", "nope"])).contains("no schedule entry"));

    // Bad input and unsupported stores are explained.
    let bad = failure(&run(&[
        "schedule",
        "add",
        "x",
        "--task",
        "t",
        "--crontab",
        "0 0 * * 7",
    ]));
    assert!(bad.contains("day_of_week"), "{bad}");
    let unknown = failure(&run(&[
        "schedule",
        "--store",
        "mongodb://localhost/x",
        "list",
    ]));
    assert!(unknown.contains("not supported"), "{unknown}");

    // CELERIAC_BEAT_STORE selects another store; --store wins over it.
    let other = format!("sqlite://{}", dir.path().join("schedules.db").display());
    let with_store = [
        ("CELERIAC_BROKER_URL", db.clone()),
        ("CELERIAC_BEAT_STORE", other.clone()),
    ];
    let listed = stdout(&celeriac(dir.path(), &["schedule", "list"], &with_store));
    assert_eq!(listed, "no schedule entries\n");
    let listed = stdout(&celeriac(
        dir.path(),
        &["schedule", "--store", &db, "list"],
        &with_store,
    ));
    assert!(listed.contains("digest"), "{listed}");
}

#[test]
fn beat_sends_due_runs_until_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("celeriac.db").display());
    let env = [("CELERIAC_BROKER_URL", db.clone())];
    stdout(&celeriac(
        dir.path(),
        &[
            "schedule",
            "add",
            "tick",
            "--task",
            "tests.tick",
            "--every",
            "1s",
            "--queue",
            "ticks",
        ],
        &env,
    ));
    let beat = Command::new(env!("CARGO_BIN_EXE_celeriac"))
        .current_dir(dir.path())
        .args(["beat"])
        .env("CELERIAC_BROKER_URL", &db)
        .env_remove("CELERIAC_BEAT_STORE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start beat");
    let ready = || -> u64 {
        let out = celeriac(dir.path(), &["queues", "--json"], &env);
        let queues: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        queues
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == "ticks"))
            .and_then(|q| q["ready"].as_u64())
            .unwrap_or(0)
    };
    let started = std::time::Instant::now();
    while ready() < 2 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "beat sends a run every second"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &beat.id().to_string()])
        .status();
    let output = beat.wait_with_output().expect("beat exits");
    assert!(output.status.success(), "beat exits cleanly on SIGTERM");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("beat stopped:") && log.contains("sent"),
        "{log}"
    );
    let show = stdout(&celeriac(dir.path(), &["schedule", "show", "tick"], &env));
    assert!(show.contains("latest runs"), "{show}");
}

/// A plain HTTP/1.1 GET on loopback; returns the status line and the body.
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the dashboard");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[test]
fn dashboard_serves_the_api_for_the_broker_file_until_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("celeriac.db").display());
    let env = [("CELERIAC_BROKER_URL", db.clone())];
    stdout(&celeriac(
        dir.path(),
        &[
            "schedule",
            "add",
            "tick",
            "--task",
            "tests.tick",
            "--every",
            "1m",
        ],
        &env,
    ));
    stdout(&celeriac(
        dir.path(),
        &["call", "tests.noop", "--queue", "work"],
        &env,
    ));
    let mut dashboard = Command::new(env!("CARGO_BIN_EXE_celeriac"))
        .current_dir(dir.path())
        .args(["dashboard", "--addr", "127.0.0.1:0"])
        .env("CELERIAC_BROKER_URL", &db)
        .env_remove("CELERIAC_BEAT_STORE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the dashboard");
    let mut first = String::new();
    // Kept open until the dashboard exits: a closed pipe would break its output.
    let mut output = std::io::BufReader::new(dashboard.stdout.take().expect("stdout"));
    output.read_line(&mut first).expect("the address line");
    let addr = first
        .trim()
        .strip_prefix("celeriac dashboard on http://")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    let (status, body) = http_get(&addr, "/api/queues");
    assert!(status.contains("200"), "{status}");
    let queues: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let work = queues
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == "work"))
        .expect("the queue is listed");
    assert_eq!(work["ready"], 1);
    let (_, body) = http_get(&addr, "/api/schedules");
    assert!(body.contains("\"tick\""), "{body}");
    let (status, page) = http_get(&addr, "/");
    assert!(
        status.contains("200") && page.contains("celeriac"),
        "{status}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &dashboard.id().to_string()])
        .status();
    let exit = dashboard.wait().expect("the dashboard exits");
    drop(output);
    assert!(exit.success(), "it exits cleanly on SIGTERM");
}

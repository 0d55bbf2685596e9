//! No secret reaches the terminal: `--help` of every command (clap prints the values
//! of `env = ...` flags unless told not to) and the errors and debug logs of commands
//! whose broker, backend or stores have passwords in their URLs.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Every secret below contains this marker.
const MARKER: &str = "s3cr3t";

fn secret_env() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "CELERIAC_BROKER_URL",
            "redis://:s3cr3t-broker@127.0.0.1:1/0",
        ),
        (
            "CELERIAC_RESULT_BACKEND",
            "redis://user:s3cr3t-backend@127.0.0.1:1/1",
        ),
        ("CELERIAC_BEAT_STORE", "redis://:s3cr3t-store@127.0.0.1:1/2"),
        (
            "CELERIAC_LOCK_STORE",
            "postgres://user:s3cr3t-locks@127.0.0.1:1/db",
        ),
        ("CELERIAC_DASHBOARD_USER", "ops"),
        ("CELERIAC_DASHBOARD_PASSWORD", "s3cr3t-dashboard"),
        ("CELERIAC_SIGNING_KEY", "s3cr3t-signing-key-0123456789"),
    ]
}

/// Runs `celeriac args` with the secret environment in a temp dir; kills it after
/// 60 s (a command that hangs is a failure too).
fn run(args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_celeriac"));
    command
        .current_dir(dir.path())
        .args(args)
        .env_remove("CELERIAC_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("run celeriac");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("celeriac {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

#[test]
fn help_of_every_command_hides_secret_environment_values() {
    let env = secret_env();
    let commands: &[&[&str]] = &[
        &["--help"],
        &["worker", "--help"],
        &["call", "--help"],
        &["queues", "--help"],
        &["workers", "--help"],
        &["bench", "--help"],
        &["locks", "--help"],
        &["beat", "--help"],
        &["schedule", "--help"],
        &["schedule", "list", "--help"],
        &["schedule", "add", "--help"],
        &["dashboard", "--help"],
        &["inspect", "--help"],
        &["control", "--help"],
    ];
    for args in commands {
        let (output, text) = run(args, &env);
        assert!(output.status.success(), "{args:?}: {text}");
        assert!(!text.contains(MARKER), "{args:?} prints a secret:\n{text}");
    }
    // The variables are still named, so users know they are read.
    let (_, dashboard) = run(&["dashboard", "--help"], &env);
    assert!(
        dashboard.contains("CELERIAC_DASHBOARD_PASSWORD"),
        "{dashboard}"
    );
    let (_, beat) = run(&["beat", "--help"], &env);
    assert!(beat.contains("CELERIAC_BEAT_STORE"), "{beat}");
}

#[test]
fn connection_errors_and_debug_logs_redact_passwords() {
    for (url, host) in [
        ("redis://:s3cr3t-broker@127.0.0.1:1/0", "127.0.0.1"),
        ("amqp://guest:s3cr3t-broker@127.0.0.1:1/%2f", "127.0.0.1"),
        ("rediss://user:s3cr3t-broker@127.0.0.1:1/0", "127.0.0.1"),
    ] {
        // From the environment and from the flag, with debug logs on.
        let mut env = secret_env();
        env.retain(|(name, _)| *name != "CELERIAC_BROKER_URL");
        env.push(("CELERIAC_BROKER_URL", url));
        env.push(("RUST_LOG", "debug"));
        let (output, text) = run(&["--log", "debug", "queues"], &env);
        assert!(!output.status.success(), "{url}: cannot connect: {text}");
        assert!(
            !text.contains(MARKER),
            "{url}: a secret is printed:\n{text}"
        );
        assert!(
            text.contains(host),
            "{url}: the error names the host:\n{text}"
        );

        let (output, text) = run(&["--log", "debug", "--broker", url, "queues"], &env);
        assert!(!output.status.success(), "{url}: {text}");
        assert!(
            !text.contains(MARKER),
            "{url} (flag): a secret is printed:\n{text}"
        );
    }
}

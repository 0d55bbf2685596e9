"""Fixtures of the dashboard browser tests: a `celeriac dashboard` (and a worker) on a
fresh SQLite file, and headless Chromium driven by Selenium. `system` runs the
generic `celeriac` binary (no tasks of its own); `task_system` runs the interop
example (examples/interop: `interop.add`, `interop.record`, ... with celeriac's
whole command line), so its workers and beat run real tasks.

Environment:
  CELERIAC_BIN                the celeriac binary (default target/release/celeriac)
  CELERIAC_TASKS_BIN          the binary with tasks (default target/release/examples/interop)
  CELERIAC_REQUIRE_SERVICES=1 fail instead of skipping when Chromium is missing
"""

import os
import pathlib
import shutil
import signal
import subprocess
import time

import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
CELERIAC = pathlib.Path(os.environ.get("CELERIAC_BIN") or REPO / "target" / "release" / "celeriac")
TASKS = pathlib.Path(os.environ.get("CELERIAC_TASKS_BIN") or REPO / "target" / "release" / "examples" / "interop")
REQUIRED = os.environ.get("CELERIAC_REQUIRE_SERVICES") == "1"


def env_for(db):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERIAC_")}
    env["CELERIAC_BROKER_URL"] = f"sqlite://{db}"
    env["RUST_BACKTRACE"] = "0"
    return env


class System:
    """One SQLite file with a dashboard (and optionally workers) serving it."""

    def __init__(self, tmp_path, binary=CELERIAC):
        self.binary = binary
        self.dir = tmp_path
        self.db = tmp_path / "celeriac.db"
        self.env = env_for(self.db)
        self.processes = []
        self.url = None

    def run(self, *args, check=True, env=None):
        done = subprocess.run(
            [str(self.binary), "--log", "warn", *args], cwd=self.dir, env={**self.env, **(env or {})},
            capture_output=True, text=True, timeout=60,
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done.stdout

    def start_dashboard(self, *extra):
        process = subprocess.Popen(
            [str(self.binary), "--log", "warn", "dashboard", "--addr", "127.0.0.1:0", *extra],
            cwd=self.dir, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.processes.append(process)
        line = process.stdout.readline()
        prefix = "celeriac dashboard on "
        assert line.startswith(prefix), f"unexpected dashboard output {line!r}"
        self.url = line[len(prefix):].strip()

    def start_worker(self, queue, name, *extra):
        process = subprocess.Popen(
            [str(self.binary), "--log", "warn", "worker", "-Q", queue, "-n", name, "-c", "2", *extra],
            cwd=self.dir, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def start_beat(self):
        process = subprocess.Popen(
            [str(self.binary), "--log", "warn", "beat"],
            cwd=self.dir, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.processes.append(process)
        return process

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def system(tmp_path):
    if not CELERIAC.exists():
        pytest.fail(f"{CELERIAC} is missing: cargo build --release --bin celeriac", pytrace=False)
    s = System(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def task_system(tmp_path):
    if not TASKS.exists():
        pytest.fail(f"{TASKS} is missing: cargo build --release --example interop", pytrace=False)
    s = System(tmp_path, TASKS)
    s.env["CELERIAC_INTEROP_LOG"] = str(tmp_path / "ran.log")
    yield s
    s.stop()


def chromium_paths():
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return browser, driver


@pytest.fixture
def browser():
    chromium, chromedriver = chromium_paths()
    if not (chromium and chromedriver):
        message = "Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        if REQUIRED:
            pytest.fail(f"{message} and CELERIAC_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def eventually(check, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as error:  # noqa: BLE001 - retried until the deadline
            last = error
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout}s (last error: {last})")

"""The dashboard in a real browser (headless Chromium): live workers and queues,
task search, and the django-celery-beat-style schedule workflow (create, disable,
run now, delete) and lock release, each checked against the REST API too."""

import base64
import json
import os
import pathlib
import urllib.error
import urllib.request

import pytest

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from conftest import eventually


def api(system, path, method="GET", auth=None):
    request = urllib.request.Request(system.url + path, method=method)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


SHOTS = os.environ.get("CELERIAC_SCREENSHOTS")


def shot(browser, name):
    """Saves a screenshot of the page when CELERIAC_SCREENSHOTS names a folder
    (scripts/screenshots.sh writes docs/screenshots this way)."""
    if SHOTS:
        pathlib.Path(SHOTS).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(pathlib.Path(SHOTS) / f"{name}.png"))


def cell_texts(driver, row_css):
    return [row.text for row in driver.find_elements(By.CSS_SELECTOR, row_css)]


def log_in(browser, user, password):
    """What a browser does once its user answered the basic-auth prompt: send the
    credentials with every request to the dashboard (set through DevTools here)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def test_workers_and_queues_update_live(system, browser):
    system.run("call", "demo.task", "--queue", "backlog")
    system.run("call", "demo.task", "--queue", "backlog")
    # Control actions need credentials.
    system.start_dashboard("--user", "ops", "--password", "browser-test")
    with pytest.raises(urllib.error.HTTPError) as refused:
        api(system, "/api/queues")
    assert refused.value.code == 401
    log_in(browser, "ops", "browser-test")
    browser.get(system.url)
    eventually(lambda: browser.find_element(By.ID, "live").text == "live", what="the page goes live")

    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=queues]").click()
    # Looked up afresh each time: the table is redrawn as it refreshes.
    eventually(
        lambda: browser.find_element(By.CSS_SELECTOR, "tr[data-queue=backlog]").find_elements(By.TAG_NAME, "td")[1].text == "2",
        what="the queue row with its 2 waiting tasks",
    )

    # A worker appears without reloading the page; it drains the queue (the tasks are
    # unknown to it, so they end as dead letters, which the page shows too).
    system.start_worker("backlog", "browser-worker@test")
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=workers]").click()
    eventually(
        lambda: "online" in browser.find_element(By.CSS_SELECTOR, "tr[data-worker='browser-worker@test']").text,
        what="the worker shows as online",
    )
    shot(browser, "workers")
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=queues]").click()

    def drained():
        cells = browser.find_element(By.CSS_SELECTOR, "tr[data-queue=backlog]").find_elements(By.TAG_NAME, "td")
        return cells[1].text == "0" and cells[4].text == "2"

    eventually(drained, what="the queue drains into dead letters, live")
    browser.find_element(By.CSS_SELECTOR, "button[data-dead=backlog]").click()
    reasons = eventually(lambda: cell_texts(browser, "#dead-body tr"), what="dead letters listed")
    assert all("demo.task" in r for r in reasons), reasons

    # Remote control from the page: the worker shuts down when asked.
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=workers]").click()
    eventually(lambda: browser.find_element(By.CSS_SELECTOR, "button[data-shutdown='browser-worker@test']"),
               what="the shutdown button").click()
    browser.switch_to.alert.accept()
    eventually(lambda: "browser-worker@test" in browser.find_element(By.ID, "message").text, what="the worker replied")
    eventually(
        lambda: "gone" in browser.find_element(By.CSS_SELECTOR, "tr[data-worker='browser-worker@test']").text,
        what="the worker shows as gone after its remote shutdown",
    )

    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=tasks]").click()
    Select(browser.find_element(By.CSS_SELECTOR, "#task-filters select[name=state]")).select_by_visible_text("FAILURE")
    browser.find_element(By.CSS_SELECTOR, "#task-filters button").click()
    rows = eventually(lambda: cell_texts(browser, "#tasks-body tr[data-task]"), what="failed tasks listed")
    assert len(rows) == 2 and all("FAILURE" in r for r in rows), rows
    shot(browser, "tasks")


def test_schedule_workflow_and_lock_release(system, browser):
    system.start_dashboard()
    browser.get(system.url)
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=schedules]").click()
    form = browser.find_element(By.ID, "schedule-form")
    form.find_element(By.NAME, "name").send_keys("nightly-report")
    form.find_element(By.NAME, "task").send_keys("reports.nightly")
    Select(form.find_element(By.NAME, "kind")).select_by_value("crontab")
    form.find_element(By.NAME, "when").send_keys("30 2 * * *")
    form.find_element(By.NAME, "tz").send_keys("Europe/Berlin")
    form.find_element(By.NAME, "queue").send_keys("reports")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    row = eventually(lambda: browser.find_element(By.CSS_SELECTOR, "tr[data-entry=nightly-report]"), what="the new entry")
    assert "crontab 30 2 * * * (Europe/Berlin)" in row.text
    shot(browser, "schedules")
    entry = api(system, "/api/schedules/nightly-report")
    assert entry["schedule"]["crontab"]["timezone"] == "Europe/Berlin" and entry["enabled"] is True

    row.find_element(By.CSS_SELECTOR, "button[data-toggle]").click()
    eventually(lambda: api(system, "/api/schedules/nightly-report")["enabled"] is False, what="disabled")
    eventually(lambda: "Enable" in browser.find_element(By.CSS_SELECTOR, "tr[data-entry=nightly-report]").text,
               what="the button offers Enable")

    browser.find_element(By.CSS_SELECTOR, "tr[data-entry=nightly-report] button[data-run]").click()
    eventually(lambda: "Sent nightly-report" in browser.find_element(By.ID, "message").text, what="run now")
    queues = {q["name"]: q for q in api(system, "/api/queues")}
    assert queues["reports"]["ready"] == 1, queues

    browser.find_element(By.CSS_SELECTOR, "tr[data-entry=nightly-report] button[data-remove]").click()
    browser.switch_to.alert.accept()
    eventually(lambda: api(system, "/api/schedules") == [], what="deleted")

    # A lock held by someone, released from the page.
    system.run("locks", "list")  # creates nothing; proves the command and store agree
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=locks]").click()
    eventually(lambda: "No locks held." in browser.find_element(By.ID, "locks-body").text, what="no locks")


def task_rows(browser):
    """The tasks screen's rows as {task id: [cell texts]}."""
    # One script call reads the table at one moment (it is redrawn every 2 s).
    pairs = browser.execute_script(
        "return [...document.querySelectorAll('#tasks-body tr[data-task]')]"
        ".map((row) => [row.dataset.task, [...row.cells].map((cell) => cell.innerText.trim())]);"
    )
    return {task: cells for task, cells in pairs}


def test_a_schedule_made_in_the_form_is_sent_by_beat_and_runs(task_system, browser):
    system = task_system
    system.start_dashboard()
    system.start_worker("celery", "beat-worker@test", "-E")
    system.start_beat()
    browser.get(system.url)
    eventually(lambda: browser.find_element(By.ID, "live").text == "live", what="the page goes live")

    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=schedules]").click()
    form = browser.find_element(By.ID, "schedule-form")
    form.find_element(By.NAME, "name").send_keys("add-every-second")
    form.find_element(By.NAME, "task").send_keys("interop.add")
    args = form.find_element(By.NAME, "args")
    args.clear()
    args.send_keys("[2, 3]")
    Select(form.find_element(By.NAME, "kind")).select_by_value("every")
    form.find_element(By.NAME, "when").send_keys("1")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    eventually(lambda: "Saved add-every-second" in browser.find_element(By.ID, "message").text, what="saved")
    assert api(system, "/api/schedules/add-every-second")["schedule"]["interval"]["every"] == 1

    # Beat (its own process, reading the same store) sends it; the worker runs it;
    # the tasks screen lists the runs without a reload.
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=tasks]").click()

    def runs():
        return [cells for cells in task_rows(browser).values() if cells[2] == "interop.add" and cells[1] == "SUCCESS"]

    done = eventually(runs, timeout=30, what="a run sent by beat succeeds on the tasks screen")
    assert done[0][3] == "(2, 3)" and done[0][4] == "5", done[0]
    assert done[0][5] == "beat-worker@test", done[0]
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=schedules]").click()
    eventually(lambda: api(system, "/api/schedules/add-every-second")["total_run_count"] >= 1, what="beat counted the run")
    eventually(
        lambda: browser.find_element(By.CSS_SELECTOR, "tr[data-entry=add-every-second]").find_elements(By.TAG_NAME, "td")[6].text not in ("", "0"),
        what="the schedules screen shows the runs",
    )
    shot(browser, "schedules")

    # The queues screen charts the queue's in / out rates from the sampled depth and
    # the task events: one run a second goes in and out of `celery`.
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=queues]").click()

    def charted():
        rates = {q["name"]: q for q in api(system, "/api/queues/rates")["queues"]}
        celery = rates.get("celery")
        return celery and len(celery["samples"]) >= 4 and any(s["out"] > 0 for s in celery["samples"]) and celery

    celery = eventually(charted, timeout=30, what="rates sampled for the celery queue")
    assert celery["source"] == "events" and celery["totals"]["received"] >= 1, celery
    # One lookup from the document each time: the chart is redrawn as samples arrive,
    # so an element found earlier may be gone (a stale reference) when asked again.
    eventually(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "svg[data-chart=celery] polyline")) == 2,
        what="the rates chart with its in and out lines",
    )
    eventually(lambda: browser.find_element(By.CSS_SELECTOR, "tr[data-queue=celery] td.rate-out").text not in ("", "–"),
               what="the out rate is shown")
    shot(browser, "queues")

    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=schedules]").click()
    browser.find_element(By.CSS_SELECTOR, "tr[data-entry=add-every-second] button[data-remove]").click()
    browser.switch_to.alert.accept()
    eventually(lambda: api(system, "/api/schedules") == [], what="deleted")


def test_a_waiting_task_revoked_from_the_tasks_screen_never_runs(task_system, browser):
    system = task_system
    system.start_dashboard("--user", "ops", "--password", "browser-test")
    system.start_worker("celery", "revoke-worker@test", "-E")
    log_in(browser, "ops", "browser-test")
    browser.get(system.url)
    eventually(lambda: browser.find_element(By.ID, "live").text == "live", what="the page goes live")
    eventually(lambda: "online" in browser.find_element(By.CSS_SELECTOR, "tr[data-worker='revoke-worker@test']").text,
               what="the worker is online")

    # A task waiting for its countdown. The SQLite broker holds it until it is due, so
    # the dashboard learns of it from the client's task-sent event (Celery's
    # task_send_sent_event, as Flower needs too).
    waiting = system.run("call", "interop.record", "--args", '["must-not-run"]', "--countdown", "8s",
                         env={"CELERIAC_TASK_SEND_SENT_EVENT": "true"}).strip()
    browser.find_element(By.CSS_SELECTOR, "nav button[data-tab=tasks]").click()
    eventually(lambda: task_rows(browser).get(waiting, [None, None])[1] == "PENDING",
               what="the waiting task is listed as pending")
    shot(browser, "tasks-revoke")
    eventually(lambda: browser.find_element(By.CSS_SELECTOR, f"button[data-revoke='{waiting}']"), what="its revoke button").click()
    eventually(lambda: f"Revoked {waiting}" in browser.find_element(By.ID, "message").text, what="the revoke was sent")
    assert "revoke-worker@test" in browser.find_element(By.ID, "message").text, "the worker replied"

    # When its countdown ends the worker discards it: REVOKED on the screen and in the
    # API, and the task body never ran.
    eventually(lambda: task_rows(browser).get(waiting, [None, None])[1] == "REVOKED", timeout=30,
               what="the task ends REVOKED on the tasks screen")
    assert api(system, f"/api/tasks/{waiting}", auth=("ops", "browser-test"))["status"] == "REVOKED"
    ran = system.run("call", "interop.record", "--args", '["did-run"]', "--wait", "20s")
    assert "did-run" in ran
    log = (system.dir / "ran.log").read_text()
    assert "did-run" in log and "must-not-run" not in log, log

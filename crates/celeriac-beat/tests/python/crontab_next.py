"""Next run times of Celery's own crontab, for tests/celery_crosscheck.rs.

Reads a JSON list of {"spec", "tz", "after"} from stdin ("spec" in crontab.from_string
order, "after" an ISO 8601 instant) and prints a JSON list of the next run instants
(UTC, ISO 8601) that celery.schedules.crontab computes the way beat asks it: the last
run is `after` in the app's time zone, and now is the same instant.
"""
import json
import sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from celery import Celery
from celery.schedules import crontab

apps = {}


def app_for(tz):
    if tz not in apps:
        app = Celery("crosscheck", set_as_current=False)
        app.conf.timezone = tz
        app.conf.enable_utc = True
        apps[tz] = app
    return apps[tz]


results = []
for case in json.load(sys.stdin):
    zone = ZoneInfo(case["tz"])
    after = datetime.fromisoformat(case["after"].replace("Z", "+00:00")).astimezone(zone)
    schedule = crontab.from_string(case["spec"])
    schedule.app = app_for(case["tz"])
    schedule.nowfun = lambda after=after: after
    remaining = schedule.remaining_estimate(after)
    following = after.astimezone(timezone.utc) + remaining
    results.append(following.isoformat())
print(json.dumps(results))

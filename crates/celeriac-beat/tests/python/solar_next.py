"""Next times of Celery's own solar schedule, for tests/celery_crosscheck.rs.

Reads a JSON list of {"event", "lat", "lon", "after"} from stdin ("after" an ISO 8601
instant) and prints a JSON list of the next event instants (UTC, ISO 8601) that
celery.schedules.solar computes the way beat asks it: the last run is `after`, and now
is the same instant.
"""
import json
import sys
from datetime import datetime, timezone

from celery import Celery
from celery.schedules import solar

app = Celery("crosscheck", set_as_current=False)
app.conf.timezone = "UTC"
app.conf.enable_utc = True

results = []
for case in json.load(sys.stdin):
    after = datetime.fromisoformat(case["after"].replace("Z", "+00:00"))
    schedule = solar(case["event"], case["lat"], case["lon"], app=app, nowfun=lambda after=after: after)
    following = after + schedule.remaining_estimate(after)
    results.append(following.astimezone(timezone.utc).isoformat())
print(json.dumps(results))

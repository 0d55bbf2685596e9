"""Django ORM actions on django-celery-beat's models, for the interop tests:

    python orm.py interval NAME TASK QUEUE ARGS_JSON EVERY PERIOD
    python orm.py crontab NAME TASK QUEUE MINUTE HOUR DOW DOM MOY TIMEZONE
    python orm.py disable NAME
    python orm.py show NAME            # prints the task as JSON (null if missing)

The database is CELERIAC_DJANGO_DB (see celeriac_django/settings.py). Everything
goes through the models' save(), as the Django admin does, so django-celery-beat's
signals bump PeriodicTasks.last_update.
"""

import json
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "celeriac_django.settings")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import django  # noqa: E402

django.setup()

from django_celery_beat.models import (  # noqa: E402
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
)


def main(argv):
    command, name, *rest = argv
    if command == "interval":
        task, queue, args, every, period = rest
        schedule, _ = IntervalSchedule.objects.get_or_create(every=int(every), period=period)
        PeriodicTask.objects.create(
            name=name, task=task, queue=queue, args=args, interval=schedule
        )
    elif command == "crontab":
        task, queue, minute, hour, dow, dom, moy, tz = rest
        schedule, _ = CrontabSchedule.objects.get_or_create(
            minute=minute, hour=hour, day_of_week=dow, day_of_month=dom,
            month_of_year=moy, timezone=tz,
        )
        PeriodicTask.objects.create(name=name, task=task, queue=queue, crontab=schedule)
    elif command == "disable":
        task = PeriodicTask.objects.get(name=name)
        task.enabled = False
        task.save()
    elif command == "show":
        task = PeriodicTask.objects.filter(name=name).first()
        if task is None:
            print("null")
            return
        print(json.dumps({
            "name": task.name,
            "task": task.task,
            "enabled": task.enabled,
            "one_off": task.one_off,
            "queue": task.queue,
            "args": json.loads(task.args),
            "kwargs": json.loads(task.kwargs),
            "headers": json.loads(task.headers or "{}"),
            "total_run_count": task.total_run_count,
            "last_run_at": task.last_run_at.isoformat() if task.last_run_at else None,
            "schedule": str(task.schedule),
            "interval": [task.interval.every, task.interval.period] if task.interval else None,
            "crontab": str(task.crontab) if task.crontab else None,
            "full_clean": _full_clean(task),
        }))
    else:
        raise SystemExit(f"unknown command {command!r}")


def _full_clean(task):
    """What Django's validation (the admin form's) says about the row: "ok" or the
    errors."""
    from django.core.exceptions import ValidationError

    try:
        task.full_clean()
    except ValidationError as error:
        return str(error)
    return "ok"


if __name__ == "__main__":
    main(sys.argv[1:])

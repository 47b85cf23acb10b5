"""What a failure means for the run, said without importing Airflow.

The machinery raises these; `include.airflow_glue.airflow_outcome` turns them into Airflow's
outcomes (the only place that knows Airflow's exception types). Any other exception keeps the
task's retries: a server that did not answer may answer next time.
"""

from __future__ import annotations


class FailNow(Exception):
    """Retrying cannot help (the same bytes, the same model): the task fails without retries."""

    alerted = False
    """True where the raiser sent its own, specific alert: the failure notifier then stays quiet."""


class Skip(Exception):
    """Nothing to do this time (not enough data yet): the task is skipped, not failed."""

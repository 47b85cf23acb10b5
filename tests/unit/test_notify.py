"""The monitor's alert grouping as a pure state change (the state is the newest check's causes)."""

from __future__ import annotations

import pytest

from include.monitoring.notify import Bias, alert_tags, transition

DRIFT, BOTH = frozenset({"drift"}), frozenset({"drift", "decay:roc_auc"})


@pytest.mark.parametrize(
    ("previous", "now", "sent"),
    [
        (None, DRIFT, "firing"),  # the first check of a window that finds a signal
        (frozenset(), DRIFT, "firing"),  # earlier checks of the window found nothing
        (DRIFT, DRIFT, "quiet"),  # the same finding again: Alertmanager would not renotify
        (DRIFT, BOTH, "updated"),  # a cause joins (labels landed: decay)
        (BOTH, DRIFT, "updated"),  # a cause clears, another holds
        (DRIFT, frozenset(), "resolved"),
        (frozenset(), frozenset(), "quiet"),  # resolved already: says so once
        (None, frozenset(), "quiet"),
    ],
)
def test_a_windows_alert_fires_once_updates_on_a_change_and_resolves_once(previous, now, sent):
    assert transition(previous, now) == sent


def test_the_recorded_causes_are_the_signals_only_and_in_a_stable_order():
    tags = alert_tags("m v3 2013-03-19…2013-03-26", "drift;age;decay:roc_auc", "firing")
    assert tags["alert.causes"] == "decay:roc_auc;drift" and tags["alert.status"] == "firing"
    assert alert_tags("g", "age", "quiet")["alert.causes"] == ""  # the model's age alone is maintenance, not news


def test_the_bias_says_which_way_and_over_how_many_windows():
    assert Bias(0.041, 3).says("3") == "it ran 0.041 high on average over v3's 3 earlier labelled window(s)"
    assert "low" in Bias(-0.02, 1).says("3")
    assert Bias(None, 0).says("2") == "no earlier labelled window of v2 to check it against"

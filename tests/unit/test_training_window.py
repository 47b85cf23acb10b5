from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from include.model.dataset import NotEnoughData, select_partitions
from include.model.engines import choose_engine
from include.model.params import TrainParams
from include.model.training import git_commit
from include.outcomes import FailNow
from include.settings import Settings


def recs(n, start=datetime(2013, 1, 1, 5, tzinfo=UTC)):
    out = []
    for i in range(n):
        s = start + timedelta(weeks=i)
        out.append({"partition": f"p{i}", "interval_start": s.isoformat(), "interval_end": (s + timedelta(weeks=1)).isoformat()})
    return out


def test_time_split_holds_out_the_newest_partitions():
    train, ev = select_partitions(recs(10), window_weeks=4, eval_partitions=1, min_partitions=3)
    assert [r["partition"] for r in train] == ["p6", "p7", "p8"]
    assert [r["partition"] for r in ev] == ["p9"]


def test_order_of_input_does_not_matter():
    assert select_partitions(list(reversed(recs(6))), 8, 2, 3) == select_partitions(recs(6), 8, 2, 3)


def test_as_of_trains_as_if_it_were_that_day():
    train, ev = select_partitions(recs(10), window_weeks=3, eval_partitions=1, min_partitions=2, as_of="2013-02-01")
    assert [r["partition"] for r in ev] == ["p4"]  # starts 2013-01-29, the last on or before Feb 1
    assert [r["partition"] for r in train] == ["p2", "p3"]


def test_a_gap_in_the_data_shrinks_the_window_instead_of_reaching_further_back():
    data = [r for r in recs(8) if r["partition"] not in ("p5", "p6")]
    train, ev = select_partitions(data, window_weeks=4, eval_partitions=1, min_partitions=2)
    assert [r["partition"] for r in train] == ["p4"] and [r["partition"] for r in ev] == ["p7"]


@pytest.mark.parametrize("first", ["2013-02-05", "2013-09-10"])  # across the spring and the fall DST change
def test_a_window_of_local_weeks_holds_as_many_weeks_across_a_dst_change(first):
    tz = ZoneInfo("America/New_York")
    starts = [datetime.combine(date.fromisoformat(first) + timedelta(weeks=i), time(), tz) for i in range(12)]
    data = [
        {"partition": f"p{i}", "interval_start": s.astimezone(UTC).isoformat(), "interval_end": e.astimezone(UTC).isoformat()}
        for i, (s, e) in enumerate(zip(starts, [*starts[1:], starts[-1] + timedelta(weeks=1)], strict=True))
    ]
    train, ev = select_partitions(data, window_weeks=8, eval_partitions=1, min_partitions=3)
    assert [r["partition"] for r in train] == [f"p{i}" for i in range(4, 11)] and [r["partition"] for r in ev] == ["p11"]


def test_too_little_data_is_a_skip_reason_not_a_crash():
    with pytest.raises(NotEnoughData, match="1 validated partition"):
        select_partitions(recs(1), 8, 1, 3)


@pytest.mark.parametrize("bad", [{"max_depth": 0}, {"learning_rate": 0}, {"subsample": 1.5}, {"as_of": "last week"}])
def test_invalid_params_are_rejected(bad):
    with pytest.raises(ValueError):
        TrainParams(**bad)


def test_params_from_a_form_ignore_unknown_keys():
    p = TrainParams.from_mapping({"max_depth": 3, "reason": "alert 42", "unrelated": 1})
    assert p.max_depth == 3 and p.reason == "alert 42"


@pytest.mark.parametrize(
    "distributed,rows,address,engine",
    [
        (False, 10**7, "", "single"),  # no cluster: everything trains here
        (False, 999, "tcp://dask:8786", "single"),
        (False, 1000, "tcp://dask:8786", "dask"),  # the threshold counts
        (True, 10, "tcp://dask:8786", "dask"),  # the form asks
    ],
)
def test_training_goes_to_dask_when_asked_or_large(distributed, rows, address, engine):
    settings = Settings(dask_address=address, dask_min_rows=1000)
    assert choose_engine(distributed, rows, settings) == engine


def test_asking_for_dask_without_a_cluster_fails_naming_the_variable():
    with pytest.raises(FailNow, match="LOOP_DASK_ADDRESS is empty"):
        choose_engine(True, 10, Settings(dask_address=""))


def test_models_record_the_image_commit_and_otherwise_the_checkout_commit():
    """An image has no .git: LOOP_GIT_COMMIT (a build argument) is what its models are tagged with."""
    assert git_commit(Settings(git_commit="0123abcd-dirty")) == "0123abcd-dirty"
    checkout = git_commit(Settings(git_commit=""))
    assert checkout != "0123abcd-dirty" and (len(checkout) == 40 or checkout == "unknown")

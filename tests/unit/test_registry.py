"""`finished_run`: what a rerun of training, the monitor and admission reuses (include/model/registry.py)."""

from types import SimpleNamespace

from include.model.registry import finished_run


def run(run_id: str, status: str, **tags) -> SimpleNamespace:
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, status=status), data=SimpleNamespace(tags=tags))


class Client:
    """The two calls `finished_run` makes, over runs listed newest first."""

    def __init__(self, *runs):
        self.runs, self.terminated = list(runs), []

    def search_runs(self, experiment_ids, filter_string, order_by):
        assert filter_string == "tags.`airflow.dag_run_id` = 'r1'" and order_by == ["attributes.start_time DESC"]
        return self.runs

    def set_terminated(self, run_id, status):
        self.terminated.append((run_id, status))


IDENTITY = {"airflow.dag_run_id": "r1"}


def test_the_newest_finished_run_is_reused_and_the_interrupted_ones_before_it_fail_when_asked():
    client = Client(run("c", "RUNNING"), run("b", "FAILED"), run("a", "FINISHED"), run("old", "RUNNING"))
    assert finished_run(client, "1", IDENTITY, fail_unfinished=True).info.run_id == "a"
    assert client.terminated == [("c", "FAILED"), ("b", "FAILED")]
    assert finished_run(Client(*client.runs), "1", IDENTITY).info.run_id == "a"


def test_a_finished_run_without_the_outcome_tag_is_not_reused_nor_touched():
    client = Client(run("b", "FINISHED"), run("a", "RUNNING", **{"decision.action": "none"}))
    assert finished_run(client, "1", IDENTITY, has_tag="decision.action") is None
    assert client.terminated == []
    client = Client(run("b", "FINISHED"), run("a", "FINISHED", **{"decision.action": "none"}))
    assert finished_run(client, "1", IDENTITY, has_tag="decision.action").info.run_id == "a"

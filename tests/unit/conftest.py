"""Fixtures of the inference log's tests: its writer's (`test_serving_inference_log.py`) and its
readers' (`test_data_inference_log.py`)."""

from __future__ import annotations

import pytest

from include.data.storage import LocalStorage
from tests.support.inference_log import END, START, served_records


@pytest.fixture(scope="module")
def records(flights):
    """A week of validated records (seven event days), each with its own request id."""
    return served_records(flights, flights.load_interval(START, END))


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "zones")

import pytest

from include.settings import get_settings


@pytest.fixture(autouse=True)
def fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults_run_the_embedded_demo(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "LOOP_USECASE", "LOOP_GATE_METRIC"):
        monkeypatch.delenv(name, raising=False)
    s = get_settings()
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert s.usecase == "flights" and s.gate_metric == "roc_auc"
    assert s.start_datetime.isoformat() == "2013-01-01T00:00:00-05:00"


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("LOOP_GATE_MARGIN", "a lot", "LOOP_GATE_MARGIN='a lot' is not a number"),
        ("LOOP_TRAIN_WINDOW_WEEKS", "8.5", "LOOP_TRAIN_WINDOW_WEEKS='8.5' is not a whole number"),
        ("LOOP_START_DATE", "01/01/2013", "is not an ISO date"),
        ("LOOP_MAX_BAD_ROW_SHARE", "1.5", "must be in"),
        ("LOOP_END_DATE", "2012-01-01", "is before LOOP_START_DATE"),
    ],
)
def test_bad_settings_name_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        get_settings()

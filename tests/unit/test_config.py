import re
import subprocess
import sys
from pathlib import Path

import pytest

from include.settings import PROJECT_ROOT, Settings, get_settings, variable
from include.usecases import get_calendar


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
    # the calendar is the use case's, unless LOOP_START_DATE / LOOP_END_DATE / LOOP_TIMEZONE say otherwise
    assert get_calendar().start_datetime.isoformat() == "2013-01-01T00:00:00-05:00"


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("LOOP_GATE_MARGIN", "a lot", "LOOP_GATE_MARGIN='a lot' is not a number"),
        ("LOOP_TRAIN_WINDOW_WEEKS", "8.5", "LOOP_TRAIN_WINDOW_WEEKS='8.5' is not a whole number"),
        ("LOOP_START_DATE", "01/01/2013", "is not an ISO date"),
        ("LOOP_MAX_BAD_ROW_SHARE", "1.5", "must be in"),
        ("LOOP_END_DATE", "2012-01-01", "is before LOOP_START_DATE"),
        ("LOOP_MAX_BAD_ROW_SHARE", "1.5", r"LOOP_MAX_BAD_ROW_SHARE='1.5' must be in \[>= 0, < 1\]"),
        ("LOOP_SLOT_PORTS", "3001", "LOOP_SLOT_PORTS='3001' is not accepted: two different ports"),
        ("LOOP_CANARY_STEPS", "50,10,100", "LOOP_CANARY_STEPS='50,10,100' is not accepted: rising percentages ending at 100"),
        ("LOOP_RETRAIN_ON", "sometimes", "LOOP_RETRAIN_ON='sometimes' must be 'data' or 'drift'"),
        ("LOOP_TIMEZONE", "Mars/Olympus", "LOOP_TIMEZONE='Mars/Olympus' is not accepted: an IANA timezone"),
        ("LOOP_REPLAY", "maybe", "LOOP_REPLAY='maybe' is not 1 or 0"),
    ],
)
def test_bad_settings_name_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        get_settings()
        get_calendar()  # the calendar's checks need the use case's dates


def test_lists_and_derived_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("LOOP_SLOT_PORTS", "4001, 4002")
    monkeypatch.setenv("LOOP_WEBHOOK_DAGS", "train,,monitor")
    monkeypatch.setenv("LOOP_STORAGE_URI", "")  # empty means the default
    monkeypatch.delenv("BENTOML_HOME", raising=False)
    s = get_settings()
    assert s.slot_ports == (4001, 4002) and s.webhook_dags == ("train", "monitor")
    assert s.storage_uri == str(tmp_path / "data") and s.bentoml_home == tmp_path / "bentoml"


def test_an_env_file_is_read_and_the_environment_wins(monkeypatch, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("LOOP_GATE_MARGIN=0.01\nLOOP_CANARY_STEPS=25,100\nMLFLOW_TRACKING_URI=http://mlflow.internal:5000\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("LOOP_GATE_MARGIN", "0.03")  # neither the file's nor the default (0.02)
    s = Settings(_env_file=env_file)
    assert s.gate_margin == 0.03 and s.canary_steps == (25, 100) and s.mlflow_tracking_uri == "http://mlflow.internal:5000"


def test_env_example_and_readme_reference_agree_with_the_class():
    tool = PROJECT_ROOT / "tests" / "tools" / "settings_docs.py"
    out = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert out.returncode == 0, out.stderr
    example = (PROJECT_ROOT / ".env.example").read_text()
    listed = re.findall(r"^([A-Z][A-Z0-9_]+)=", example, re.M)
    settings = [variable(name) for name in Settings.model_fields]
    # then the production stack's own variables (tests/unit/test_compose.py checks those)
    assert listed[: len(settings)] == settings and len(set(listed)) == len(listed)


def test_every_variable_the_code_names_is_a_setting():
    """LOOP_* names in the code (reads, docs, messages) are all variables of the settings class."""
    known = {variable(name) for name in Settings.model_fields}
    named = {}
    for path in [*PROJECT_ROOT.glob("include/**/*.py"), *PROJECT_ROOT.glob("dags/*.py"), *PROJECT_ROOT.glob("plugins/*.py")]:
        for name in re.findall(r"\bLOOP_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
            named.setdefault(name, Path(path).relative_to(PROJECT_ROOT).as_posix())
    unknown = {name: where for name, where in named.items() if name not in known}
    assert not unknown, f"not on the settings class: {unknown}"
    assert len(named) > 20

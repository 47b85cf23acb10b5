"""Model supply chain against the session's real MLflow server and a real BentoML store: a model
file changed in the artifact store after training is refused at import (nothing of it reaches the
BentoML store or a bento, the champion gate decides nothing on it, the version is tagged `deploy.rejected` naming the file); an untouched
version imports, and the slot's own check loads exactly the model the gate scores, then refuses
its copy once a byte of it changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from include.integrity import DIGEST_LABEL, ModelTampered
from include.model.gate import run_champion_gate
from include.model.packaging import bento_tag, build_bento, import_bentoml, import_model, model_tag
from include.model.params import TrainParams
from include.model.registry import MODEL_DIGEST, connect
from include.model.training import train_candidate
from include.rollout.infra import golden_records, reference_scores
from include.serving.booster import MLFLOW_DIR, MODEL_FILE, load_booster
from include.serving.schema import request_model
from include.settings import get_settings

pytestmark = [pytest.mark.faults, pytest.mark.slow]
WEAK = TrainParams(window_weeks=8, n_estimators=5, max_depth=2)


@pytest.fixture(scope="module")
def env(validated_weeks, mlflow_server, tmp_path_factory, flights):
    """Settings for this module (its own state directory and model name); two trained versions."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "LOOP_STATE_DIR": str(tmp_path_factory.mktemp("supply-chain")),
            "LOOP_STORAGE_URI": str(validated_weeks),
            "MLFLOW_TRACKING_URI": mlflow_server,
            "LOOP_MODEL_NAME": "faults-supply-chain",
        }.items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        settings = get_settings()
        for i in range(2):
            out = train_candidate(flights, WEAK, settings, dag_id="train", dag_run_id=f"supply_{i}")
            assert out["version"] == str(i + 1)
        yield settings
    get_settings.cache_clear()


def flip_byte(path, at: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_model_file_changed_in_the_artifact_store_is_refused_and_nothing_of_it_is_kept(env, mlflow_store, flights):
    client, name = connect(env.mlflow_tracking_uri), env.model_name
    uri = client.get_model_version_download_uri(name, "1")
    assert uri.startswith("mlflow-artifacts:/"), uri
    stored = mlflow_store / "artifacts" / uri.removeprefix("mlflow-artifacts:/") / MODEL_FILE
    flip_byte(stored)

    # The champion gate reads the version's files checked the same way (as do infra validation
    # and the reference profile): it decides nothing about files that are not the trained ones.
    with pytest.raises(ModelTampered, match="changed: model.ubj"):
        run_champion_gate(flights, env, name, "1")
    assert "gate.decision" not in client.get_model_version(name, "1").tags

    with pytest.raises(ModelTampered) as err:
        build_bento(env, name, "1")
    message = str(err.value)
    assert f"{name} version 1 (run " in message and message.count("changed: model.ubj") == 1, message
    assert "missing" not in message and "added" not in message, message
    print(f"\nrefused: {message}")

    tags = client.get_model_version(name, "1").tags
    assert "changed: model.ubj" in tags["deploy.rejected"] and tags["deploy.rejected_at"]
    bentoml = import_bentoml(env)
    for lookup, tag in ((bentoml.models.get, model_tag(name, "1")), (bentoml.bentos.get, bento_tag(name, "1"))):
        with pytest.raises(bentoml.exceptions.NotFound):
            lookup(tag)

    # The same files, again: refused again (no retry makes them good).
    with pytest.raises(ModelTampered, match="changed: model.ubj"):
        import_model(env, name, "1")

    # A version without the digest (as an older release registered it) is refused too, with the
    # digest an operator may vouch for once they have checked the files.
    client.delete_model_version_tag(name, "1", MODEL_DIGEST)
    with pytest.raises(
        ModelTampered,
        match=rf"version 1 \(run \w+\) has no {MODEL_DIGEST} tag.*tag the version {MODEL_DIGEST} with [0-9a-f]{{64}}\. ",
    ):
        import_model(env, name, "1")
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get(model_tag(name, "1"))


def test_an_untouched_version_imports_and_the_slot_serves_what_the_gate_scores(env, flights):
    client, name = connect(env.mlflow_tracking_uri), env.model_name
    model = import_model(env, name, "2")
    assert model.path == import_bentoml(env).models.get(model.tag).path, "the store's copy was checked, not a temporary one"
    recorded = client.get_model_version(name, "2").tags[MODEL_DIGEST]
    assert model.info.labels[DIGEST_LABEL] == recorded
    assert "deploy.rejected" not in client.get_model_version(name, "2").tags
    assert import_model(env, name, "2").tag == model.tag, "a second import reuses (and checks) the stored copy"

    # Scored as the slot scores a request, and as infra validation scores the registry's model.
    records = golden_records(env, flights, 50)
    parsed = [request_model(flights).model_validate(r).model_dump() for r in records]
    served = load_booster(model).inplace_predict(np.asarray(flights.encode_records(parsed), dtype=np.float32))
    np.testing.assert_allclose(served, reference_scores(env, flights, name, "2", records), atol=1e-6)

    flip_byte(Path(model.path_of(MLFLOW_DIR)) / MODEL_FILE)  # the BentoML store's copy, after the import
    with pytest.raises(ModelTampered, match=rf"^BentoML model {name}:v2: .*changed: model\.ubj$"):
        load_booster(model)

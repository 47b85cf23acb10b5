"""The model digest: any change to the files changes it, and a mismatch is refused naming the files;
the slot loads the booster only from a directory that matches its label."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from include.integrity import (
    DIGEST_LABEL,
    FILES_METADATA,
    ModelTampered,
    file_hashes,
    manifest_digest,
    manifest_text,
    model_digest,
    parse_manifest,
    verify,
)
from include.outcomes import FailNow
from include.serving.booster import MLFLOW_DIR, MODEL_FILE, load_booster


@pytest.fixture
def model_dir(tmp_path):
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "model.ubj").write_bytes(bytes(range(256)) * 4)
    (root / "sub" / "extra.json").write_text("{}")
    return root


def flip_byte(path, at=100):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_digest_depends_on_paths_and_contents_only(model_dir, tmp_path):
    digest = model_digest(model_dir)
    assert len(digest) == 64 and digest == model_digest(model_dir)
    copy = shutil.copytree(model_dir, tmp_path / "elsewhere")  # another place, other timestamps
    assert model_digest(copy) == digest
    assert set(file_hashes(model_dir)) == {"MLmodel", "model.ubj", "sub/extra.json"}
    assert manifest_digest(parse_manifest(manifest_text(file_hashes(model_dir)))) == digest


@pytest.mark.parametrize(
    "change",
    [
        lambda d: flip_byte(d / "model.ubj"),
        lambda d: (d / "model.ubj").rename(d / "model2.ubj"),
        lambda d: (d / "sub" / "extra.json").rename(d / "extra.json"),  # same name, other directory
        lambda d: (d / "added.txt").write_text(""),
        lambda d: (d / "sub" / "extra.json").unlink(),
        lambda d: (d / "MLmodel").write_text("flavors: {}\n\n"),
    ],
    ids=["one-byte", "renamed", "moved", "added-empty", "removed", "appended"],
)
def test_any_change_to_the_files_changes_the_digest(model_dir, change):
    before = model_digest(model_dir)
    change(model_dir)
    assert model_digest(model_dir) != before


def test_verify_passes_the_same_files_and_names_what_differs(model_dir):
    files = file_hashes(model_dir)
    digest = manifest_digest(files)
    assert verify(model_dir, digest, "m version 1", files) == digest

    flip_byte(model_dir / "model.ubj")
    (model_dir / "sub" / "extra.json").unlink()
    (model_dir / "planted.py").write_text("import os")
    with pytest.raises(ModelTampered) as err:
        verify(model_dir, digest, "m version 1", files)
    message = str(err.value)
    assert message.startswith(f"m version 1: the files in {model_dir} are not the ones that were judged")
    assert f"expected {digest}" in message and model_digest(model_dir) in message
    assert "changed: model.ubj; missing: sub/extra.json; added: planted.py" in message
    assert isinstance(err.value, FailNow), "a retry reads the same files: no retries"


def test_without_a_trustworthy_manifest_verify_still_refuses_and_lists_the_files(model_dir):
    digest = model_digest(model_dir)
    flip_byte(model_dir / "model.ubj")
    forged = file_hashes(model_dir)  # a manifest that does not hash to the expected digest is not believed
    for files in (None, forged):
        with pytest.raises(ModelTampered, match=r"files found: MLmodel, model\.ubj, sub/extra\.json$"):
            verify(model_dir, digest, "m version 1", files)


def test_a_symbolic_link_or_a_missing_directory_is_refused(model_dir, tmp_path):
    (model_dir / "link.ubj").symlink_to(model_dir / "model.ubj")
    with pytest.raises(ModelTampered, match=r"link\.ubj is a symbolic link"):
        model_digest(model_dir)
    with pytest.raises(ModelTampered, match=r"nowhere does not exist"):
        model_digest(tmp_path / "nowhere")


@pytest.mark.parametrize("text", [None, "", "not json", "[]", '{"a": 1}', "null"])
def test_a_manifest_that_is_not_one_parses_to_none(text):
    assert parse_manifest(text) is None


# The slot's side: load_booster -------------------------------------------------------------------


@pytest.fixture
def stored_model(tmp_path):
    """A BentoML model as packaging leaves it (the directory layout, the label, the metadata) and
    the classifier saved in it."""
    from xgboost import XGBClassifier

    rng = np.random.default_rng(0)
    X = rng.random((200, 4), dtype=np.float32)
    classifier = XGBClassifier(n_estimators=5, max_depth=2).fit(X, (X[:, 0] > 0.5).astype(int))
    directory = tmp_path / "bento-model" / MLFLOW_DIR
    directory.mkdir(parents=True)
    classifier.save_model(directory / MODEL_FILE)
    (directory / "MLmodel").write_text("flavors: {}\n")
    files = file_hashes(directory)
    info = SimpleNamespace(labels={DIGEST_LABEL: manifest_digest(files)}, metadata={FILES_METADATA: manifest_text(files)})
    model = SimpleNamespace(tag="m:v1", info=info, path_of=lambda p: str(tmp_path / "bento-model" / p))
    return model, classifier, X


def test_the_slot_loads_the_booster_of_a_matching_directory(stored_model):
    model, classifier, X = stored_model
    booster = load_booster(model)
    np.testing.assert_allclose(booster.inplace_predict(X), classifier.predict_proba(X)[:, 1], atol=1e-7)


def test_the_slot_refuses_a_changed_file_or_a_model_without_a_label(stored_model, tmp_path):
    model, _, _ = stored_model
    flip_byte(tmp_path / "bento-model" / MLFLOW_DIR / MODEL_FILE, at=40)
    with pytest.raises(ModelTampered, match=r"^BentoML model m:v1: .*; changed: model\.ubj$"):
        load_booster(model)
    model.info.labels.clear()
    with pytest.raises(ModelTampered, match=rf"BentoML model m:v1 has no {DIGEST_LABEL} label"):
        load_booster(model)

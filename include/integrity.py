"""The model supply chain: a digest that ties the files a slot serves to the files the gate judged.

Training records the digest of the model directory as the artifact store holds it, right after
logging it (run and registered version tag `loop.model_sha256`, with the per-file hashes in
`loop.model_files`); packaging checks the copy it imports into BentoML's store against that tag and
keeps the digest as the BentoML model's label `model_sha256`; a slot checks its directory against
the label before it reads a byte of the model. A changed byte, a renamed, added or removed file all
change the digest; a symbolic link is refused outright.

The digest is the sha256 of the manifest: every file's relative POSIX path and sha256, as canonical
JSON (sorted keys), which is also the text of `loop.model_files`. Pure: hashlib and the file system.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from include.outcomes import FailNow

NATIVE_MODEL_FILE = "model.ubj"
"""XGBoost's native file in a logged model's directory (training logs with `model_format="ubj"`)."""
DIGEST_LABEL = "model_sha256"
"""The BentoML model's label holding the digest packaging checked against the registry."""
FILES_METADATA = "model_files"
"""The BentoML model's metadata entry holding the manifest, so a slot can name what differs."""


class ModelTampered(FailNow):
    """The model's files are not the files that were judged, or nothing records which those were.
    Retrying cannot help: the same files give the same digest."""


def file_hashes(directory: str | Path) -> dict[str, str]:
    """The manifest of `directory`: relative POSIX path → sha256 of every file under it."""
    root = Path(directory)
    if not root.is_dir():
        raise ModelTampered(f"model directory {root} does not exist or is not a directory")
    files = {}
    for here, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            path = Path(here) / name
            if path.is_symlink():
                raise ModelTampered(f"{path} is a symbolic link: a model directory holds regular files only")
        for name in names:
            path = Path(here) / name
            with path.open("rb") as f:
                files[path.relative_to(root).as_posix()] = hashlib.file_digest(f, "sha256").hexdigest()
    return files


def manifest_text(files: dict[str, str]) -> str:
    """The canonical text of a manifest (what `loop.model_files` holds)."""
    return json.dumps(files, sort_keys=True, separators=(",", ":"))


def parse_manifest(text: str | None) -> dict[str, str] | None:
    """The manifest in `text` (a `manifest_text`), or None if there is none or it is not one."""
    try:
        files = json.loads(text or "null")
    except ValueError:
        return None
    ok = isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
    return files if ok else None


def manifest_digest(files: dict[str, str]) -> str:
    return hashlib.sha256(manifest_text(files).encode()).hexdigest()


def model_digest(directory: str | Path) -> str:
    """sha256 over the manifest of every file under `directory` (paths and contents)."""
    return manifest_digest(file_hashes(directory))


def verify(directory: str | Path, expected: str, what: str, files: dict[str, str] | None = None) -> str:
    """`directory`'s digest, if it is `expected`; else ModelTampered naming `what`, both digests and,
    given `files` (the manifest `expected` was computed from), each file that changed, went missing
    or was added."""
    found = file_hashes(directory)
    actual = manifest_digest(found)
    if actual == expected:
        return actual
    message = f"{what}: the files in {directory} are not the ones that were judged: digest {actual}, expected {expected}"
    if files is not None and manifest_digest(files) == expected:
        differences = {
            "changed": sorted(p for p in found.keys() & files.keys() if found[p] != files[p]),
            "missing": sorted(files.keys() - found.keys()),
            "added": sorted(found.keys() - files.keys()),
        }
        message += "".join(f"; {kind}: {', '.join(paths)}" for kind, paths in differences.items() if paths)
    else:
        message += f"; files found: {', '.join(sorted(found)) or 'none'}"
    raise ModelTampered(message)

"""Where a model named in an endpoint lives, and what identifies its weights.

An endpoint's `model` is a hub id, a local directory, or a directory on object storage
(`s3://.../student/model`, as a run with an object-storage `output_dir` writes it). Libraries
that load models (transformers, vLLM) need a local path, so a remote directory is copied to
a local cache once per content version.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdist import storage

CACHE_DIR = Path(os.environ.get("KDIST_MODEL_CACHE", "~/.cache/kdist/models")).expanduser()
# Files whose change means other weights (or another tokenizer) at the same path.
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model", ".gguf")


def local_model(reference: str) -> str:
    """A path or hub id that transformers and vLLM can load."""
    if "://" not in reference:
        path = Path(reference).expanduser()
        return str(path.resolve()) if path.exists() else reference
    if storage.is_local(reference):
        return storage.filesystem_for(reference)[1]
    target = CACHE_DIR / weights_fingerprint(reference)
    if not target.exists():
        storage.download_dir(reference, target)
    return str(target)


def weights_fingerprint(reference: str) -> str:
    """Changes when the files of a model directory change (a model retrained in place is
    another model); a hub id is its own identity."""
    return storage.files_fingerprint(reference, _IDENTITY_SUFFIXES)

"""Where a model named in an endpoint lives, and what identifies its weights.

An endpoint's `model` is a hub id, a local directory, or a directory on object storage
(`s3://.../student/model`, as a run with an object-storage `output_dir` writes it). Libraries
that load models (transformers, vLLM) need a local path, so a remote directory is copied to
a local cache once per content version.
"""

from __future__ import annotations

import hashlib
import json
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
    another model); a hub id is its own identity. Uses sizes and modification times, not
    the content, so it costs a directory listing even for a model of many GB."""
    if "://" not in reference and not Path(reference).expanduser().is_dir():
        return hashlib.sha256(reference.encode()).hexdigest()[:16]
    fs, root = storage.filesystem_for(reference)
    import pyarrow.fs as pafs

    files = [
        (info.path[len(root):], info.size, info.mtime_ns)
        for info in fs.get_file_info(pafs.FileSelector(root, recursive=True))
        if info.type == pafs.FileType.File and info.path.endswith(_IDENTITY_SUFFIXES)
    ]
    return hashlib.sha256(json.dumps(sorted(files), default=str).encode()).hexdigest()[:16]

"""The model and data pickers of the new-analysis form: embedded choices, checks of a
local folder, a hub id or a data file, and stored uploads."""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import pandas as pd

__all__ = ["HUB_ID", "MAX_UPLOAD_MB", "check_data_file", "check_hub_id", "check_model_folder",
           "embedded_models", "embedded_sets", "hub_available", "save_upload", "upload_path"]


MAX_UPLOAD_MB = 50
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def embedded_models() -> dict[str, str]:
    """Embedded model name -> description (with a note when its package is missing)."""
    from floe.models.load import EMBEDDED, embedded_available
    have = embedded_available()
    return {name: m.description + ("" if have[name] else f" (needs {m.package.replace('_', '-')})")
            for name, m in EMBEDDED.items()}


def embedded_sets() -> dict[str, str]:
    from floe.pipeline.data import EMBEDDED_SETS
    return {name: description for name, (_, description) in EMBEDDED_SETS.items()}


def hub_available() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0", "false", "False")


def check_model_folder(path: str) -> str:
    """A usable local model folder: its architecture and depth, or ValueError saying why not."""
    from transformers import AutoConfig

    from floe.models.arch import shape_of, spec_for
    from floe.models.load import ModelNotFoundError, resolve_model_path
    if not path.strip():
        raise ValueError("type the path of a model folder (one with config.json)")
    try:
        folder = resolve_model_path(str(Path(path).expanduser()))
        config = AutoConfig.from_pretrained(folder)
        spec_for(config)
    except (ModelNotFoundError, OSError, ValueError) as e:
        raise ValueError(str(e)) from None
    return f"{config.model_type}, {shape_of(config).n_layers} layers"


def check_hub_id(text: str) -> str:
    if not HUB_ID.match(text.strip()):
        raise ValueError("a hub id looks like owner/name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    return text.strip()


def upload_path(name: str, data: bytes, root: Path | None = None) -> Path:
    """Where an uploaded file is kept: cache/uploads/<content hash>-<sanitised name>."""
    import hashlib

    from floe.pipeline.data import FILE_TYPES
    from floe.store.runs import cache_root, safe_name
    base = Path(name).name
    suffix = Path(base).suffix.lower()
    if suffix not in FILE_TYPES:
        raise ValueError(f"{base}: unsupported file type; use {', '.join(FILE_TYPES)}")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(base).stem).strip("._-")[:60] or "data"
    digest = hashlib.sha256(data).hexdigest()[:12]
    return (root or cache_root()) / "uploads" / safe_name(f"{digest}-{stem}{suffix}")


def save_upload(name: str, data: bytes, root: Path | None = None) -> Path:
    """Size-check, store and check an uploaded data file (same content, same path); a file
    that cannot be used raises DataError and is not kept."""
    from floe.pipeline.data import DataError
    from floe.store.runs import atomic_write_bytes
    if len(data) > MAX_UPLOAD_MB * 2 ** 20:
        raise ValueError(f"{Path(name).name} is {len(data) / 2 ** 20:.0f} MB; the limit is {MAX_UPLOAD_MB} MB")
    path = upload_path(name, data, root)
    if not path.exists():
        atomic_write_bytes(path, data)
    try:
        check_data_file(str(path))
    except DataError as e:
        path.unlink(missing_ok=True)
        raise DataError(str(e).replace(str(path), Path(name).name)) from None
    return path


@functools.lru_cache(maxsize=32)
def _examples(path: str, stamp: int) -> tuple[int, pd.DataFrame]:
    from floe.pipeline.data import load_file_examples
    examples = load_file_examples(path)
    preview = pd.DataFrame([{"prompt": " / ".join(m["content"] for m in ex["messages"])[:300],
                             "response": ex["response"][:300]} for ex in examples[:5]])
    return len(examples), preview


def check_data_file(path: str) -> tuple[int, pd.DataFrame]:
    """(number of usable examples, a preview) of a data file, or floe.pipeline.data.DataError."""
    from floe.pipeline.data import data_file
    p = data_file(path)  # a directory, a missing file or a device: a message saying which
    return _examples(str(p), p.stat().st_mtime_ns)

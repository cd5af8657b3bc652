"""Checkpoints for `--weights PATH`: read safely, one tensor at a time.

* `.safetensors` is parsed here (8-byte little-endian header length, a JSON header of name → dtype, shape and byte
  offsets, then raw little-endian data), so no extra package is needed; a tensor is read from its byte range
  only when a norm needs it, so auditing a checkpoint needs memory for one tensor, not for the model.
* `.pt`, `.pth`, `.bin`, `.ckpt` go through `torch.load(weights_only=True, mmap=True)`: the restricted unpickler
  refuses anything but tensors and plain containers, so a malicious payload is rejected without running.
Nothing else is opened. Shapes are checked against the architecture (from the header) before any data is read.
"""

from __future__ import annotations

import ctypes
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModnormError

__all__ = ["Checkpoint", "open_checkpoint", "save_safetensors", "check_shapes"]

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_NAMES = {v: k for k, v in _DTYPES.items()}
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


@dataclass
class _Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


class Checkpoint:
    """Name → tensor, loaded on demand."""

    def __init__(self, path: Path, entries: dict[str, _Entry] | None = None,
                 tensors: dict[str, torch.Tensor] | None = None) -> None:
        self.path = path
        self._entries = entries or {}
        self._tensors = tensors or {}

    def keys(self) -> list[str]:
        return list(self._entries) + list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._entries:
            return self._entries[name].shape
        return tuple(self._tensors[name].shape)

    def load(self, name: str) -> torch.Tensor:
        """One tensor, read from disk now (safetensors) or from the memory map (torch)."""
        if name in self._tensors:
            return self._tensors[name]
        entry = self._entries[name]
        with open(self.path, "rb") as handle:
            handle.seek(entry.start)
            data = bytearray(handle.read(entry.end - entry.start))
        if not data:
            return torch.empty(entry.shape, dtype=entry.dtype)
        return torch.frombuffer(data, dtype=entry.dtype).reshape(entry.shape)


def open_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise ModnormError(f"no such checkpoint `{path}`", "pass a .safetensors file or a torch state dict")
    if path.suffix == ".safetensors":
        return _open_safetensors(path)
    if path.suffix in _PICKLE_SUFFIXES:
        return _open_torch(path)
    raise ModnormError(f"`{path}` is not a checkpoint modnorm opens",
                       "use .safetensors (preferred) or a torch state dict saved as .pt/.pth/.bin; other formats "
                       "are never unpickled", path)


def _open_safetensors(path: Path) -> Checkpoint:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ModnormError("the safetensors file is truncated (no header)", "re-save the checkpoint", path)
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, 100_000_000):
            raise ModnormError("the safetensors header length is larger than the file", "re-save the checkpoint",
                               path)
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModnormError(f"the safetensors header is not valid JSON ({exc})", "re-save the checkpoint",
                               path) from exc
    entries = {}
    base = 8 + length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ModnormError(f"tensor `{name}` has an unsupported dtype {info.get('dtype')!r}",
                               "save floating-point weights as F32, F16 or BF16", path)
        start, end = info["data_offsets"]
        if base + end > size or start > end:
            raise ModnormError(f"tensor `{name}` points outside the file", "re-save the checkpoint", path)
        entries[name] = _Entry(dtype, tuple(info["shape"]), base + start, base + end)
    return Checkpoint(path, entries=entries)


def _open_torch(path: Path) -> Checkpoint:
    import pickle

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModnormError(f"refused to load the checkpoint: it is not a plain tensor state dict that "
                           f"torch.load(weights_only=True) accepts ({first[:200]})",
                           "modnorm never unpickles arbitrary objects; re-save the weights with "
                           "safetensors or as a state dict of tensors", path) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ModnormError("the checkpoint is not a state dict of tensors",
                           "save `model.state_dict()` (torch.save) or use safetensors", path)
    return Checkpoint(path, tensors=dict(loaded))


def check_shapes(checkpoint: Checkpoint, model: torch.nn.Module) -> dict[str, str]:
    """Every parameter and persistent buffer found in the checkpoint with its shape; returns model name →
    checkpoint name (tied parameters may be stored once). Raises on a missing tensor or a shape mismatch."""
    names: dict[str, str] = {}
    missing, wrong = [], []
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    tensors = {name: t for name, t in model.named_parameters(remove_duplicate=False)}
    tensors.update({name: t for name, t in model.named_buffers(remove_duplicate=False)
                    if _persistent(model, name)})
    for name, tensor in tensors.items():
        stored = next((n for n in [name, *groups.get(id(tensor), [])] if n in checkpoint), None)
        if stored is None:
            if name in dict(model.named_parameters(remove_duplicate=False)):
                missing.append(name)
            continue
        if tuple(checkpoint.shape(stored)) != tuple(tensor.shape):
            wrong.append(f"{name}: checkpoint {list(checkpoint.shape(stored))}, model {list(tensor.shape)}")
            continue
        names[name] = stored
    if missing or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch{'es' if len(wrong) > 1 else ''} ({'; '.join(wrong[:3])}"
                         f"{' …' if len(wrong) > 3 else ''})")
        if missing:
            parts.append(f"{len(missing)} parameter{'s' if len(missing) > 1 else ''} missing "
                         f"({', '.join(missing[:4])}{' …' if len(missing) > 4 else ''})")
        raise ModnormError(f"the checkpoint does not match the architecture: {' and '.join(parts)}",
                           "build the model with the configuration the checkpoint was trained with (--kwargs), "
                           "or check that the file belongs to this model", checkpoint.path)
    return names


def _persistent(model: torch.nn.Module, name: str) -> bool:
    owner_path, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_path) if owner_path else model
    return leaf not in getattr(owner, "_non_persistent_buffers_set", set())


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                     metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` in the safetensors format (for tests and tools; the layout the format specifies)."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    blobs, offset = [], 0
    for name, tensor in tensors.items():
        data = tensor.detach().contiguous().cpu()
        raw = ctypes.string_at(data.data_ptr(), data.numel() * data.element_size()) if data.numel() else b""
        header[name] = {"dtype": _NAMES[data.dtype], "shape": list(data.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for blob in blobs:
            handle.write(blob)


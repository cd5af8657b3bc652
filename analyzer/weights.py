"""Checkpoints for `--weights PATH`: read safely, one tensor at a time.

* `.safetensors` is parsed here (8-byte little-endian header length, a JSON header of name → dtype, shape and byte
  offsets, then raw little-endian data), so no extra package is needed; a tensor is read from its byte range
  only when a norm needs it, so auditing a checkpoint needs memory for one tensor, not for the model. Every header
  entry is validated (an object with a known dtype, a shape of non-negative integers, offsets inside the data area
  whose length is exactly shape × dtype) before anything is read.
* A sharded checkpoint (`model.safetensors.index.json`, or the directory holding it) maps each tensor to a shard
  file next to the index; shards are opened lazily and read the same way, one tensor at a time, with the kernel
  told to read the next tensors ahead (posix_fadvise) so that disk reads overlap the norm computations.
* `.pt`, `.pth`, `.bin`, `.ckpt` go through `torch.load(weights_only=True)`: the restricted unpickler refuses
  anything but tensors and plain containers, so a malicious payload is rejected without running. The archive is
  memory-mapped when its members are stored uncompressed; a compressed archive (its bytes are not the tensors')
  is read into memory instead, up to a declared size we check first.
Nothing else is opened. Shapes are checked against the architecture (from the header) before any data is read;
a tensor with no data (meta), complex values for a real parameter, or NaN/Inf entries is refused by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import struct
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from .errors import ModnormError

__all__ = ["Checkpoint", "open_checkpoint", "save_safetensors", "save_sharded", "check_shapes", "INDEX_NAME",
           "audit_progress"]

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
_NAMES = {v: k for k, v in _DTYPES.items()}
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
INDEX_NAME = "model.safetensors.index.json"
_MAX_HEADER = 100_000_000
_MAX_DECOMPRESSED = 4 << 30  # a compressed torch archive is read into memory: refuse one that claims more
# Small tensors (gains, biases) are asked for by several norms, so recent ones are kept; a weight matrix is read
# for one norm, and keeping the last 512 MB of them made up a third of a 7B audit's peak RSS (profiled).
_CACHE_BYTES = 1 << 26
_CACHE_MAX_TENSOR = 1 << 24
_READ_AHEAD = 2  # tensors the kernel is asked to prefetch after each read
_CHUNK_BYTES = 1 << 23  # 16-bit data is read in chunks this size and widened into the float32 result
_PREFETCH_AHEAD = 1  # matrices computed ahead of the one the analysis waits for: two cores, two norms at once
_M_MMAP_THRESHOLD, _MMAP_THRESHOLD = -3, 1 << 20  # mallopt's parameter number, and 1 MB (see _mmap_above)
_HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14  # Linux: back a large fresh buffer with 2 MB pages: half the page-fault time of filling it


@dataclass(frozen=True)
class _Entry:
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offsets in `file`
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class Checkpoint:
    """Name → tensor, loaded on demand (and checked for non-finite values as it is read)."""

    def __init__(self, path: Path, entries: dict[str, _Entry] | None = None,
                 tensors: dict[str, torch.Tensor] | None = None) -> None:
        self.path = path
        self._entries = entries or {}
        self._tensors = tensors or {}
        self._order = sorted(self._entries, key=lambda n: (str(self._entries[n].file), self._entries[n].start))
        self._next = {name: self._order[i + 1:i + 1 + _READ_AHEAD] for i, name in enumerate(self._order)}
        self._cache: dict[tuple[str, bool], torch.Tensor] = {}
        self._checked: set[str] = set()
        self.bytes_read = 0
        self.on_read: Callable[[str, int], None] | None = None  # progress: (name, bytes) after each first read
        self.prefetch: Prefetch | None = None  # norms computed ahead (Prefetch), closed with the checkpoint
        self._lock = threading.Lock()  # tensors may be read from Prefetch's threads: counts and progress

    def close(self) -> None:
        """Stop computing ahead (Prefetch); the checkpoint can still be read."""
        if self.prefetch is not None:
            self.prefetch.close()

    def keys(self) -> list[str]:
        return list(self._entries) + list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self._entries:
            return self._entries[name].shape
        return tuple(self._tensors[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        if name in self._entries:
            return self._entries[name].dtype
        return self._tensors[name].dtype

    def nbytes(self, name: str) -> int:
        if name in self._entries:
            return self._entries[name].nbytes
        tensor = self._tensors[name]
        return tensor.numel() * tensor.element_size()

    def load(self, name: str, widen: bool = False, tall: bool = False) -> torch.Tensor:
        """One tensor, read from disk now (safetensors) or from memory (torch); NaN or Inf entries are refused.
        `widen`: 16-bit floats come back as float32 (exact: every bf16 and fp16 value is a float32 value),
        converted chunk by chunk as they are read, so the 16-bit copy never exists whole. `tall` (with `widen`, for
        a 16-bit matrix with fewer rows than columns): the float32 matrix is stored transposed — `.T` of the result
        is contiguous — so that block Lanczos (norms.py), which works on the taller side, needs no transposed copy
        (180 MB for a Llama-2-7B down projection, held at the audit's peak beside the head)."""
        if name in self._tensors:
            tensor = self._tensors[name]
            if name not in self._checked:
                _require_finite(tensor, name, self.path)
                self._checked.add(name)
                self._count(name, self.nbytes(name))
            if widen and tall and _transposable(tensor.shape, tensor.dtype):
                return _fresh(tuple(reversed(tensor.shape)), torch.float32).copy_(tensor.T).T
            return _widened(tensor) if widen else tensor
        entry = self._entries[name]
        widened = widen and _is_16bit(entry.dtype)
        key = (name, widened, widened and tall and _transposable(entry.shape, entry.dtype))
        if key in self._cache:
            self._cache[key] = self._cache.pop(key)  # most recent last
            return self._cache[key]
        tensor, finite = self._read(name, key[1], key[2])
        if not finite:  # unknown, or seen not finite: the full check says how many NaN and Inf
            _require_finite(tensor, name, self._entries[name].file)
        self._remember(key, tensor)
        return tensor

    def _read(self, name: str, widen: bool, tall: bool = False) -> tuple[torch.Tensor, bool]:
        """The tensor, and True when it was already seen to be finite while read."""
        entry = self._entries[name]
        shape = tuple(reversed(entry.shape)) if tall else entry.shape
        out, finite = _fresh(shape, torch.float32 if widen else entry.dtype), False
        if tall:
            out = out.T
        if entry.nbytes:
            with open(entry.file, "rb", buffering=0) as handle:
                handle.seek(entry.start)
                if widen:
                    finite = self._read_widened(handle, name, out)
                else:
                    _read_exactly(handle, _writable_bytes(out), name, entry.file)
                self._read_ahead(handle.fileno(), name)
        self._count(name, entry.nbytes)
        return out, finite

    def _count(self, name: str, nbytes: int) -> None:
        with self._lock:
            self.bytes_read += nbytes
            if self.on_read is not None:
                self.on_read(name, nbytes)

    def _read_widened(self, handle: Any, name: str, out: torch.Tensor) -> bool:
        """Read the 16-bit data of `name` in _CHUNK_BYTES pieces into one reused buffer, widening each into `out`;
        True when every chunk was finite (checked while the chunk is in cache, not in another pass)."""
        entry = self._entries[name]
        size, finite = entry.dtype.itemsize, True
        if out.is_contiguous():
            rows, target = out.numel(), out.view(-1)  # one "row" per element: any chunk boundary will do
        else:  # stored transposed (load's `tall`): whole rows per chunk, each written as a column of the storage
            rows, target = out.shape[0], out
        row_bytes = entry.nbytes // max(rows, 1)
        buffer = bytearray(min(max(_CHUNK_BYTES // row_bytes, 1) * row_bytes, entry.nbytes))
        for start in range(0, entry.nbytes, len(buffer)):
            count = min(len(buffer), entry.nbytes - start)
            _read_exactly(handle, memoryview(buffer)[:count], name, entry.file)
            raw = torch.frombuffer(buffer, dtype=entry.dtype, count=count // size)
            finite = finite and all(map(math.isfinite, map(float, torch.aminmax(raw))))
            first = start // row_bytes
            target[first:first + count // row_bytes].copy_(raw.view(-1, *target.shape[1:]))
        return finite

    def _read_ahead(self, fd: int, name: str) -> None:
        """Ask the kernel to start reading the next tensors of the same file while we compute on this one."""
        if not hasattr(os, "posix_fadvise"):
            return
        for following in self._next.get(name, []):
            entry = self._entries[following]
            if entry.file == self._entries[name].file and entry.nbytes:
                os.posix_fadvise(fd, entry.start, entry.nbytes, os.POSIX_FADV_WILLNEED)

    def _remember(self, key: tuple[str, bool], tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes > _CACHE_MAX_TENSOR:
            return
        self._cache[key] = tensor
        total = sum(t.numel() * t.element_size() for t in self._cache.values())
        while total > _CACHE_BYTES:
            oldest = next(iter(self._cache))
            total -= self._cache[oldest].numel() * self._cache[oldest].element_size()
            del self._cache[oldest]


class Prefetch:
    """Norms of a checkpoint's large matrices computed ahead, two at a time: while the analysis waits for one, the
    next one it will ask for (in `order`) is read and computed on the other core. Block Lanczos is bound by memory
    bandwidth and runs in one thread (norms.py: Threads); two of them at once took 5.3 s where one after the other
    took 7.6 s (4 matrices of 4096 x 11008, load 4, measured). Torch runs in one thread while this is open, so
    each norm gives the figures one thread gives, whichever thread computed it (measured identical)."""

    def __init__(self, checkpoint: Checkpoint, order: list[str], compute: Callable[[torch.Tensor], Any],
                 ahead: int = _PREFETCH_AHEAD) -> None:
        self._checkpoint, self._compute, self._ahead = checkpoint, compute, ahead  # ahead 0: one core (--jobs 1)
        self._order = list(dict.fromkeys(order))
        self._position = {name: i for i, name in enumerate(self._order)}
        self._futures: dict[str, Any] = {}
        self._handed: set[str] = set()
        self._pool: Any = None
        self._threads = 0

    def __contains__(self, name: str) -> bool:
        return name in self._position

    def result(self, name: str) -> Any:
        """compute(the float32 tensor `name`), waiting for it; the next matrix in `order` starts meanwhile."""
        at = self._position[name]
        for following in self._order[at:at + 1 + self._ahead]:
            if following not in self._futures:
                if self._pool is None:
                    self._start()
                self._futures[following] = self._pool.submit(self._one, following)
        try:
            return self._futures[name].result()
        finally:
            self._handed.add(name)
            if self._handed.issuperset(self._order):
                self.close()  # nothing left to compute ahead: give torch its threads back now

    def _start(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        _mmap_above(_MMAP_THRESHOLD)
        self._pool = ThreadPoolExecutor(1 + self._ahead, thread_name_prefix="modnorm-norms")

    def _one(self, name: str) -> Any:
        torch.set_num_threads(1)  # this thread's OpenMP setting (a new thread starts from the default)
        return self._compute(self._checkpoint.load(name, widen=True, tall=True))

    def close(self) -> None:
        """Finish the norms being computed, drop the ones not started, restore torch's thread count."""
        if self._pool is None:
            return
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None
        self._futures = {n: f for n, f in self._futures.items() if f.done() and not f.cancelled()}
        torch.set_num_threads(self._threads)


def _mmap_above(nbytes: int) -> None:
    """glibc: serve every allocation above `nbytes` by mmap, returned to the system when freed. Otherwise glibc
    raises its threshold to the largest block freed (up to 32 MB), and the work buffers of hundreds of Lanczos
    runs on two threads stay in per-thread heaps: a 7B audit peaked at 2.26 GB where 8 layers peaked at 1.26."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, nbytes)
    except (OSError, AttributeError):
        pass


def _is_16bit(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point and dtype.itemsize < 4


def _transposable(shape: Any, dtype: torch.dtype) -> bool:
    """A 16-bit matrix wider than tall: load(tall=True) stores its float32 widening transposed."""
    return len(shape) == 2 and shape[0] < shape[1] and _is_16bit(dtype)


def _widened(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.float32) if _is_16bit(tensor.dtype) else tensor


def _fresh(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; a large one is advised onto huge pages before it is first written (filling a
    180 MB tensor took 135 ms on 4 KB pages and 67 ms on 2 MB pages, measured on this bench's VM)."""
    out = torch.empty(shape, dtype=dtype)
    nbytes = out.numel() * out.element_size()
    if nbytes >= 4 * _HUGE_PAGE and _madvise is not None:
        start = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        end = (out.data_ptr() + nbytes) // _HUGE_PAGE * _HUGE_PAGE
        _madvise(start, end - start, _MADV_HUGEPAGE)  # advice only: failure changes nothing but speed
    return out


def _libc_madvise() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return function


_madvise = _libc_madvise()


def _writable_bytes(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, for readinto (no intermediate copy, no zero-filled bytearray)."""
    nbytes = tensor.numel() * tensor.element_size()
    return memoryview((ctypes.c_char * nbytes).from_address(tensor.data_ptr())).cast("B")


def _read_exactly(handle: Any, view: memoryview, name: str, file: Path) -> None:
    got = 0
    while got < len(view):
        chunk = handle.readinto(view[got:])
        if not chunk:
            raise ModnormError(f"tensor `{name}` ends past the end of the file (the file was truncated "
                               "or changed while modnorm read it)", "re-save the checkpoint", file)
        got += chunk


@contextlib.contextmanager
def audit_progress(checkpoint: tuple[Checkpoint, dict[str, str]] | None) -> Iterator[None]:
    """A progress bar (tensors read, GB read, ETA) while the analysis reads `checkpoint`'s tensors; see
    progress.py for when it shows. `checkpoint` is (Checkpoint, model name -> stored name) or None."""
    if checkpoint is None:
        yield
        return
    from .progress import meter

    opened, names = checkpoint
    stored = set(names.values())
    with meter(f"auditing {opened.path.name}", len(stored), "tensors",
               sum(opened.nbytes(name) for name in stored)) as bar:
        opened.on_read = lambda name, nbytes: bar.advance(1 if bar.done < bar.total else 0, nbytes)
        try:
            yield
        finally:
            opened.on_read = None
            opened.close()


def _require_finite(tensor: torch.Tensor, name: str, path: Path) -> None:
    if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
        return
    if tensor.is_floating_point() and all(map(math.isfinite, map(float, torch.aminmax(tensor)))):
        return  # min and max propagate NaN and show ±Inf: one pass, no boolean copy of the tensor
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    nan = int(torch.isnan(tensor).sum())
    inf = int((~finite).sum()) - nan
    raise ModnormError(f"layer weight `{name}` has non-finite weights ({nan} NaN, {inf} Inf of {tensor.numel()} "
                       "entries): no norm of it means anything",
                       "find where training diverged (the last finite checkpoint, a lower learning rate, loss "
                       "scaling) and audit that checkpoint", path)


def open_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint by path: .safetensors, a sharded index (or its directory), or a torch state dict."""
    path = Path(path)
    if path.is_dir() and (path / INDEX_NAME).is_file():
        path = path / INDEX_NAME
    elif path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"
    if not path.is_file():
        raise ModnormError(f"no such checkpoint `{path}`", "pass a .safetensors file, a sharded "
                           f"{INDEX_NAME} or a torch state dict")
    if path.name.endswith(".safetensors.index.json"):
        return _open_sharded(path)
    if path.suffix == ".safetensors":
        return Checkpoint(path, entries=_safetensors_entries(path))
    if path.suffix in _PICKLE_SUFFIXES:
        return _open_torch(path)
    raise ModnormError(f"`{path}` is not a checkpoint modnorm opens",
                       "use .safetensors (preferred), a sharded model.safetensors.index.json, or a torch state "
                       "dict saved as .pt/.pth/.bin; other formats are never unpickled", path)


def _safetensors_entries(path: Path) -> dict[str, _Entry]:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ModnormError("the safetensors file is truncated (no header)", "re-save the checkpoint", path)
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, _MAX_HEADER):
            raise ModnormError("the safetensors header length is larger than the file", "re-save the checkpoint",
                               path)
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModnormError(f"the safetensors header is not valid JSON ({exc})", "re-save the checkpoint",
                               path) from exc
    if not isinstance(header, dict):
        raise ModnormError(f"the safetensors header is a JSON {type(header).__name__}, not an object of tensor "
                           "entries", "re-save the checkpoint with safetensors or torch", path)
    base = 8 + length
    entries = {name: _entry(name, info, path, base, size - base) for name, info in header.items()
               if name != "__metadata__"}
    return entries


def _entry(name: str, info: Any, path: Path, base: int, data_size: int) -> _Entry:
    """One validated header entry: dtype known, shape non-negative integers, offsets inside the data area and
    exactly shape × dtype bytes long (anything else would read other bytes as this tensor's)."""
    def bad(problem: str) -> ModnormError:
        return ModnormError(f"tensor `{name}` in the safetensors header {problem}",
                            "re-save the checkpoint (the file is corrupt or was not written by a safetensors "
                            "writer)", path)

    if not isinstance(info, dict):
        raise bad(f"is a JSON {type(info).__name__}, not an object with dtype, shape and data_offsets")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in info]
    if missing:
        raise bad(f"has no {' or '.join(missing)}")
    dtype = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise ModnormError(f"tensor `{name}` has an unsupported dtype {info['dtype']!r}",
                           "save floating-point weights as F32, F16 or BF16", path)
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"has shape {shape!r}, not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)):
        raise bad(f"has data_offsets {offsets!r}, not two integers [begin, end]")
    start, end = offsets
    if start < 0 or end < start or end > data_size:
        raise bad(f"has data_offsets {offsets} outside the data area (0 to {data_size} bytes after the header)")
    expected = _numel(shape) * torch.empty((), dtype=dtype).element_size()
    if end - start != expected:
        raise bad(f"spans {end - start} bytes, but shape {shape} of {info['dtype']} needs {expected}")
    return _Entry(dtype, tuple(shape), path, base + start, base + end)


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _open_sharded(index: Path) -> Checkpoint:
    """`model.safetensors.index.json`: {"weight_map": {tensor name: shard file next to the index}}."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModnormError(f"the shard index is not valid JSON ({exc})", "re-save the checkpoint", index) from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in weight_map.items()):
        raise ModnormError("the shard index has no `weight_map` object of tensor name -> shard file",
                           "re-save the checkpoint with transformers' save_pretrained or safetensors", index)
    shards: dict[str, dict[str, _Entry]] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or not shard.endswith(".safetensors"):
            raise ModnormError(f"the shard index names `{shard}`, which is not a .safetensors file next to it",
                               "shards must sit in the index's directory", index)
        if not (index.parent / shard).is_file():
            raise ModnormError(f"shard `{shard}` named by the index does not exist",
                               "download or copy every shard next to the index", index)
        shards[shard] = _safetensors_entries(index.parent / shard)
    entries = {}
    for name, shard in weight_map.items():
        if name not in shards[shard]:
            raise ModnormError(f"the shard index maps `{name}` to `{shard}`, which does not contain it",
                               "re-save the checkpoint (index and shards disagree)", index)
        entries[name] = shards[shard][name]
    return Checkpoint(index, entries=entries)


def _open_torch(path: Path) -> Checkpoint:
    import pickle

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=_stored_uncompressed(path))
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
    meta = [name for name, tensor in loaded.items() if tensor.is_meta]
    if meta:
        raise ModnormError(f"the checkpoint holds tensors on the meta device, with no data "
                           f"({', '.join(map(str, meta[:4]))}{' …' if len(meta) > 4 else ''})",
                           "save the state dict of a model whose weights exist (built on the CPU or loaded), "
                           "not of one built on the meta device", path)
    return Checkpoint(path, tensors=dict(loaded))


def _stored_uncompressed(path: Path) -> bool:
    """True for a zip archive whose members are stored as-is (torch.save's layout, safe to memory-map); False
    for a compressed one, which must be decompressed (refused above _MAX_DECOMPRESSED) or a legacy pickle."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return True  # let torch.load report what is wrong with it
    if all(m.compress_type == zipfile.ZIP_STORED for m in members):
        return True
    declared = sum(m.file_size for m in members)
    if declared > _MAX_DECOMPRESSED:
        raise ModnormError(f"the checkpoint is a compressed archive that declares {declared / 2**30:.1f} GiB of "
                           "data", "re-save it with torch.save (uncompressed) or safetensors", path)
    return False


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
        if checkpoint.dtype(stored).is_complex and not tensor.is_complex():
            # Reading it as real would silently drop the imaginary part: a different matrix, a different norm.
            wrong.append(f"{name}: checkpoint {checkpoint.dtype(stored)} (complex), model {tensor.dtype}")
            continue
        names[name] = stored
    if missing or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape or dtype mismatch{'es' if len(wrong) > 1 else ''} ({'; '.join(wrong[:3])}"
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



def save_sharded(tensors: dict[str, torch.Tensor], directory: str | Path, shard_bytes: int) -> Path:
    """Write `tensors` as shards of about `shard_bytes` plus `model.safetensors.index.json` (the layout
    transformers' save_pretrained uses); returns the index path. For tests and the bench."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for i, group in enumerate(groups, 1):
        shard = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_safetensors(group, directory / shard, metadata={"format": "pt"})
        weight_map.update({name: shard for name in group})
    index = directory / INDEX_NAME
    index.write_text(json.dumps({"metadata": {"total_size": sum(t.numel() * t.element_size()
                                                                for t in tensors.values())},
                                 "weight_map": weight_map}, indent=2))
    return index

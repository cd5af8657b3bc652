"""Write a synthetic Llama-2-layout bf16 sharded safetensors checkpoint (bench/fixtures/llama2.py's names and
shapes), one shard in memory at a time: `python bench/checkpoint.py DIR [--kwargs dim=512 ...]`.

Values: one seeded Gaussian block per distinct shape, scaled per layer (1 + layer/100) so that no two tensors are
equal, std 0.02 like a trained Llama; norm gains ones. Never commit the output (write it under /tmp)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench/fixtures"))
sys.path.insert(0, str(ROOT))


def write(directory: Path, kwargs: dict, shard_bytes: int = 2 << 30) -> Path:
    import llama2

    from modnorm.weights import INDEX_NAME, save_safetensors

    with torch.device("meta"):
        model = llama2.build_model(**kwargs)
    directory.mkdir(parents=True, exist_ok=True)
    bases: dict[tuple[int, ...], torch.Tensor] = {}
    generator = torch.Generator().manual_seed(0)

    def value(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.bfloat16)
        if shape not in bases:
            bases[shape] = (0.02 * torch.randn(shape, generator=generator)).to(torch.bfloat16)
        layer = next((int(p) for p in name.split(".") if p.isdigit()), 0)
        return bases[shape] * (1 + layer / 100)

    entries = list(model.state_dict().items())
    shards, current, size = [], [], 0
    for name, meta in entries:
        nbytes = meta.numel() * 2
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, tuple(meta.shape)))
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: value(name, shape) for name, shape in shard}
        save_safetensors(tensors, directory / file, metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update({name: file for name in tensors})
        del tensors
    index = directory / INDEX_NAME
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return index


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("--kwargs", action="append", default=[])
    args = parser.parse_args()
    print(write(args.directory, {k: int(v) for k, v in (item.split("=") for item in args.kwargs)}))

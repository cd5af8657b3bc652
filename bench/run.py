"""modnorm's benchmark: `python bench/run.py [--quick]`.

Table 1, per model on the meta device, each in a fresh process: the floor every tool pays (import torch, build the
model on meta, trace it with the shape-aware tracer), modnorm's full `check` (load + trace + calculus + rules),
their ratio, the share of the analysis passes, plain torch.fx's trace time where it works, peak RSS, nodes.
Table 2: the spectral-norm estimators against exact SVD on real layer shapes, Gaussian and spiked spectra.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPT = str(ROOT / "fixtures/nanogpt.py")
LLAMA = str(ROOT / "fixtures/llama_block.py")

CASES = [
    ("GPT-2 small", GPT, {"n_layer": 12, "n_embd": 768, "n_head": 12}, [], True),
    ("GPT-2 XL", GPT, {"n_layer": 48, "n_embd": 1600, "n_head": 25}, [], False),
    ("Llama 7B", LLAMA, {"dim": 4096, "n_layers": 32, "n_heads": 32, "vocab": 32000}, [], True),
    ("Llama 70B", LLAMA, {"dim": 8192, "n_layers": 80, "n_heads": 64, "vocab": 32000}, [], False),
    ("ResNet-50", str(ROOT / "bench/models.py"), {}, [], True),
    ("sweep 4 widths x 4 depths (GPT-2-small heads)", GPT, {"n_head": 12},
     ["n_embd=192,384,576,768", "n_layer=2,4,8,12"], True),
]

SHAPES = [(768, 768), (768, 3072), (4096, 4096), (4096, 11008), (8192, 28672)]


def _child(mode: str, target: str, kwargs: dict, sweep: list) -> dict:
    """Run one mode of a case in a fresh process: its JSON, wall time and peak RSS (the child's own rusage)."""
    spec = json.dumps({"mode": mode, "target": target, "kwargs": kwargs, "sweep": sweep})
    code = ("import resource, runpy, sys; sys.argv = ['_case.py', sys.argv[1]]; "
            f"runpy.run_path({str(ROOT / 'bench/_case.py')!r}, run_name='__main__'); "
            "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:120]}
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-2])
    result["wall_s"] = wall
    result["rss_mb"] = int(lines[-1].split()[1]) / 1024
    return result


def models_table(quick: bool) -> list[str]:
    rows = ["| case | params | nodes | floor s (import+build+trace) | check s (import+check) | check/floor | "
            "analysis share | plain fx trace s | modnorm trace / plain fx | peak RSS MB |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, target, kwargs, sweep, in_quick in CASES:
        if quick and not in_quick:
            continue
        base, full = _child("floor", target, kwargs, sweep), _child("check", target, kwargs, sweep)
        if "error" in base or "error" in full:
            rows.append(f"| {name} | | | | | | | | | error: {base.get('error') or full.get('error')} |")
            print(rows[-1], flush=True)
            continue
        floor = base["import_s"] + base["build_s"] + base["trace_s"]
        total = full["import_s"] + full["check_s"]
        plain = base["plain_fx_s"]
        plain_text = f"{plain:.2f}" if plain is not None else "fails"
        ratio = f"{base['trace_s'] / plain:.1f}" if plain else "–"
        rows.append(f"| {name} | {base['parameters'] / 1e9:.2f}B | {base['nodes']} | {floor:.2f} | {total:.2f} | "
                    f"{total / floor:.2f} | {max(total - floor, 0) / total:.0%} | {plain_text} | {ratio} | "
                    f"{max(base['rss_mb'], full['rss_mb']):.0f} |")
        print(rows[-1], flush=True)
    return rows


def norms_table(quick: bool) -> list[str]:
    import torch

    from modnorm.norms import spectral_norm

    rows = ["| shape | spectrum | exact s (svdvals) | fast s | speed-up | rel. error | lower ≤ exact ≤ upper | "
            "upper/exact |", "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    torch.manual_seed(0)
    for rows_, cols in SHAPES:
        if quick and rows_ * cols > 5_000_000:
            continue
        for kind in ("gaussian", "spiked"):
            w = torch.randn(rows_, cols) / math.sqrt(cols)
            if kind == "spiked":
                u, v = torch.randn(rows_, 1), torch.randn(1, cols)
                w += 3.0 * (u / u.norm()) @ (v / v.norm())
            t0 = time.perf_counter()
            exact = float(torch.linalg.svdvals(w.double() if rows_ * cols <= 4_000_000 else w)[0])
            exact_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            est = spectral_norm(w, method="fast")
            fast_s = time.perf_counter() - t0
            inside = est.lower <= exact * (1 + 2e-6) and exact <= est.upper
            rows.append(f"| {rows_}x{cols} | {kind} | {exact_s:.2f} | {fast_s:.2f} | {exact_s / fast_s:.1f}x | "
                        f"{abs(est.value - exact) / exact:.1e} | {'yes' if inside else 'NO'} | "
                        f"{est.upper / exact:.4f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="skip the largest models and matrices (< 2 min)")
    parser.add_argument("--only", choices=("models", "norms"), help="run one table")
    args = parser.parse_args()
    print(f"# modnorm bench ({os.cpu_count()} cores, {time.strftime('%Y-%m-%d')})\n")
    if args.only in (None, "models"):
        print("\n".join(models_table(args.quick)) + "\n")
    if args.only in (None, "norms"):
        print("\n".join(norms_table(args.quick)))


if __name__ == "__main__":
    main()

"""Issue 21's bench: where users wait. `python bench/perf.py [--only weights|routes|checkpoint|sweep] [--layers N]`.

Every figure is a ratio measured in one run (the machine is shared; `uptime` is printed beside each section):
  weights     measured-weight analysis (CPU build, real weights) of the vision fixtures and tiny transformers
              configs, run as the CLI runs it, against the same process's import + build floor; quiet, then
              with two CPU-bound torch processes beside it, and the slowdown factor; by default and --jobs 1
  routes      op-log route vs fx route on a Llama-2-7B shape; 70B meta check vs its import+build+trace floor
  checkpoint  a synthetic Llama-2-layout bf16 sharded safetensors checkpoint (written under /tmp, never kept in the
              repository): `cat` of the shards vs `modnorm check --weights` (wall, peak RSS)
  sweep       a 4 x 4 sweep with --jobs 2 vs --jobs 1 (wall, identical JSON), beside what two processes can gain
              on the machine at that moment (one-thread float64 products, two at once vs one)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
MODNORM = [PY, "-m", "modnorm.cli"]
LLAMA2 = str(ROOT / "bench/fixtures/llama2.py")

VISION = ["bench/fixtures/convnext_nano.py", "bench/fixtures/efficientnet_b0.py", "bench/models.py",
          "fixtures/vit.py", "fixtures/mlp_mixer.py", "fixtures/bert_encoder.py", "fixtures/resnet_bn.py"]
TINY_HF = {
    "gpt2": "GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=100, "
            "architectures=['GPT2LMHeadModel'])",
    "llama": "LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, "
             "intermediate_size=128, max_position_embeddings=64, vocab_size=100, architectures=['LlamaForCausalLM'])",
    "bert": "BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, "
            "max_position_embeddings=64, vocab_size=100, architectures=['BertModel'])",
}

# One child: import torch, build on CPU (the floor), then the whole measured-weight check in the same process,
# twice, as the CLI runs it (worker.run_isolated: a forked child, one torch thread): with the machine's cores (the
# default: a helper thread computes norms ahead on the second core) and with one core (`--jobs 1`).
WEIGHTS_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
import_s = time.perf_counter() - t0
from modnorm.loading import load
from modnorm.check import check_model
from modnorm.config import Settings
from modnorm.worker import run_isolated
target = sys.argv[1]
t0 = time.perf_counter(); load(target, device="cpu"); build_s = time.perf_counter() - t0
t0 = time.perf_counter(); load(target, device="cpu"); warm_build_s = time.perf_counter() - t0
t0 = time.perf_counter(); run_isolated(check_model, target, Settings(device="cpu"), target=target)
cli_s = time.perf_counter() - t0
t0 = time.perf_counter(); run_isolated(check_model, target, Settings(device="cpu"), target=target, cores=1)
one_s = time.perf_counter() - t0
# The check loads (imports + builds) again, warm: its analysis is what it spends beyond a warm build. The cold
# build (the floor) also pays first imports, e.g. transformers' modeling code for a config.json target. Both
# runs pay the check's own first imports (the forked child's never reach this process).
print(json.dumps({"import_s": import_s, "build_s": build_s, "analysis_s": max(cli_s - warm_build_s, 0.0),
                  "one_core_analysis_s": max(one_s - warm_build_s, 0.0)}))
"""

ROUTE_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
import_s = time.perf_counter() - t0
from modnorm.check import check_model
from modnorm.config import Settings
from modnorm.loading import load
from modnorm.routes import trace
target, tracer, kwargs, mode = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
t0 = time.perf_counter()
if mode == "floor":
    loaded = load(target, device="meta", kwargs=kwargs)
    trace(loaded.model, loaded.inputs, user_file=loaded.file, tracer="fx")
else:
    check_model(target, Settings(device="meta", tracer=tracer), kwargs=kwargs)
print(json.dumps({"import_s": import_s, "s": time.perf_counter() - t0,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

BURNER = "import torch\nx = torch.randn(1500, 1500)\nwhile True:\n    x = torch.tanh(x @ x)\n"
# What a second process can add right now: float64 products in one thread for CAPACITY_S, alone and two at once.
CAPACITY_S = 4.0
PROBE = (f"import time, torch\ntorch.set_num_threads(1)\na = torch.randn(600, 600, dtype=torch.float64)\n"
         f"t, n = time.perf_counter(), 0\nwhile time.perf_counter() - t < {CAPACITY_S}:\n    a @ a\n    n += 1\n"
         f"print(n)\n")


def load_factor(job_threads: int) -> float:
    """The slowdown a fair share of the cores gives a job of `job_threads` busy threads beside the two burners:
    each burner runs torch's default thread count, so 2B + J threads share the cores where the job alone had
    min(J, cores) of them. 2.5 for one thread on 2 cores (B = 2), 3.0 for two; the default job's second thread
    (norms ahead) is busy only part of the time, so its factor lies between the two."""
    burner = int(subprocess.run([PY, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True,
                                text=True, check=True).stdout)
    cores = os.cpu_count() or 1
    busy_share = job_threads * cores / max(2 * burner + job_threads, cores)
    return min(job_threads, cores) / busy_share


def load_average() -> str:
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def child(code: str, *args: str) -> dict:
    out = subprocess.run([PY, "-c", code, *args], capture_output=True, text=True, env=ENV)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:160]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def hf_targets(folder: Path) -> list[str]:
    import transformers

    targets = []
    for name, expression in TINY_HF.items():
        config = eval(f"transformers.{expression}", {"transformers": transformers})  # noqa: S307 - our literal
        config.save_pretrained(folder / name)
        targets.append(str(folder / name / "config.json"))
    return targets


def weights_section() -> list[str]:
    one, two = load_factor(1), load_factor(2)
    rows = ["| model | import+build floor s | analysis s (quiet) | analysis / floor | analysis s (2 burners) | "
            f"analysis / floor | slowdown (load factor {one:.1f}-{two:.1f}) | --jobs 1: quiet s / burners s / "
            f"slowdown (load factor {one:.1f}) | load |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        targets = [str(ROOT / t) for t in VISION] + hf_targets(Path(tmp))
        for target in targets:
            quiet_load = load_average()
            quiet = child(WEIGHTS_CHILD, target)
            burners = [subprocess.Popen([PY, "-c", BURNER]) for _ in range(2)]
            try:
                time.sleep(1.0)
                busy = child(WEIGHTS_CHILD, target)
                busy_load = load_average()
            finally:
                for burner in burners:
                    burner.kill()
                    burner.wait()
            name = Path(target).parent.name if target.endswith("config.json") else Path(target).stem
            if "error" in quiet or "error" in busy:
                rows.append(f"| {name} | error: {quiet.get('error') or busy.get('error')} |")
            else:
                rows.append(_weights_row(name, quiet, busy, f"{quiet_load} / {busy_load}"))
            print(rows[-1], flush=True)
    return rows


def _weights_row(name: str, quiet: dict, busy: dict, load: str) -> str:
    """The CLI's way (forked child, one torch thread) against the floor, quiet and beside the burners; with both
    cores and with one. The load factor is the slowdown a fair share of the cores gives: the job's threads plus
    the two burners' over 2 cores (4/2 with the helper thread, 3/2 with --jobs 1)."""
    floor_q, floor_b = quiet["import_s"] + quiet["build_s"], busy["import_s"] + busy["build_s"]
    cli_q, cli_b = quiet["analysis_s"], busy["analysis_s"]
    one_q, one_b = quiet["one_core_analysis_s"], busy["one_core_analysis_s"]
    return (f"| {name} | {floor_q:.2f} | {cli_q:.2f} | {cli_q / floor_q:.2f} | {cli_b:.2f} | {cli_b / floor_b:.2f} | "
            f"{cli_b / max(cli_q, 1e-9):.1f}x | {one_q:.2f} / {one_b:.2f} / {one_b / max(one_q, 1e-9):.1f}x "
            f"| {load} |")


def routes_section() -> list[str]:
    llama7b = {"vocab": 32000, "dim": 4096, "n_layers": 32, "n_heads": 32, "hidden": 11008}
    llama70 = {"dim": 8192, "n_layers": 80, "n_heads": 64, "vocab": 32000}
    rows = ["| case | a | s | b | s | a / b | load |", "| --- | --- | ---: | --- | ---: | ---: | --- |"]
    fx = child(ROUTE_CHILD, LLAMA2, "fx", json.dumps(llama7b), "check")
    oplog = child(ROUTE_CHILD, LLAMA2, "oplog", json.dumps(llama7b), "check")
    if "error" in fx or "error" in oplog:
        rows.append(f"| Llama-2-7B shape | error: {fx.get('error') or oplog.get('error')} |")
    else:
        rows.append(f"| Llama-2-7B shape, check after import | op log | {oplog['s']:.2f} | fx | {fx['s']:.2f} | "
                    f"{oplog['s'] / fx['s']:.2f} | {load_average()} |")
    print(rows[-1], flush=True)
    target = str(ROOT / "fixtures/llama_block.py")
    floor = child(ROUTE_CHILD, target, "fx", json.dumps(llama70), "floor")
    check = child(ROUTE_CHILD, target, "auto", json.dumps(llama70), "check")
    if "error" in floor or "error" in check:
        rows.append(f"| Llama 70B on meta | error: {floor.get('error') or check.get('error')} |")
    else:
        a, b = check["import_s"] + check["s"], floor["import_s"] + floor["s"]
        rows.append(f"| Llama 70B on meta (peak RSS {check['rss_mb']:.0f} MB) | import+check | {a:.2f} | "
                    f"import+build+trace | {b:.2f} | {a / b:.2f} | {load_average()} |")
    print(rows[-1], flush=True)
    return rows


def checkpoint_section(layers: int, keep: bool) -> list[str]:
    kwargs = {"n_layers": layers}
    directory = Path(tempfile.gettempdir()) / f"modnorm_bench_llama2_{layers}"
    started = time.perf_counter()
    if not (directory / "model.safetensors.index.json").is_file():
        subprocess.run([PY, str(ROOT / "bench/checkpoint.py"), str(directory), "--kwargs", f"n_layers={layers}"],
                       check=True, env=ENV, capture_output=True)
    write_s = time.perf_counter() - started
    shards = sorted(directory.glob("*.safetensors"))
    size_gb = sum(s.stat().st_size for s in shards) / 1e9
    load_before = load_average()
    started = time.perf_counter()
    subprocess.run(["cat", *map(str, shards)], stdout=subprocess.DEVNULL, check=True)
    cat_s = time.perf_counter() - started
    started = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "RSS %M", *MODNORM, "check", LLAMA2, "--kwargs",
                          f"n_layers={layers}", "--weights", str(directory), "-f", "json", "--exit-zero"],
                         capture_output=True, text=True, env=ENV)
    audit_s = time.perf_counter() - started
    rss = next((int(line.split()[1]) / 1024 for line in out.stderr.splitlines() if line.startswith("RSS")), 0)
    ok = out.returncode == 0 and json.loads(out.stdout)["model"]["weights"] == str(directory)
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)
    rows = ["| checkpoint | GB | write s | cat s | audit s | audit / cat | peak RSS MB | load |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
            f"| Llama-2-7B layout, {layers} layers, bf16, {len(shards)} shards{'' if ok else ' (FAILED)'} | "
            f"{size_gb:.1f} | {write_s:.0f} | {cat_s:.1f} | {audit_s:.0f} | {audit_s / cat_s:.0f} | {rss:.0f} | "
            f"{load_before} / {load_average()} |"]
    print(rows[-1], flush=True)
    return rows


def capacity() -> float:
    """Products per second of two one-thread processes at once over one alone: the --jobs 2 speed-up the machine
    allows at this moment (2.0 on two idle cores; ~1.0 when another job already takes a core)."""
    def probe(count: int) -> int:
        procs = [subprocess.Popen([PY, "-c", PROBE], stdout=subprocess.PIPE, text=True) for _ in range(count)]
        return sum(int(proc.communicate()[0]) for proc in procs)
    return probe(2) / max(probe(1), 1)


def sweep_section(rounds: int) -> list[str]:
    args = [*MODNORM, "check", str(ROOT / "fixtures/nanogpt.py"), "--kwargs", "n_head=12", "--sweep",
            "n_embd=192,384,576,768", "--sweep", "n_layer=2,4,8,12", "-f", "json", "--exit-zero"]
    rows = ["| sweep (round) | --jobs 1 s | --jobs 2 s | speed-up | two processes' throughput / one's, before | "
            "identical JSON | load |",
            "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    speedups = []
    for round_ in range(1, rounds + 1):  # alternating pairs: the machine's load moves between them
        outputs, walls = [], []
        ceiling = capacity()
        for jobs in ("1", "2"):
            started = time.perf_counter()
            out = subprocess.run([*args, "--jobs", jobs], capture_output=True, text=True, env=ENV)
            walls.append(time.perf_counter() - started)
            outputs.append(out.stdout if out.returncode == 0 else f"error {out.stderr[-200:]}")
        speedups.append(walls[0] / walls[1])
        rows.append(f"| nanoGPT 4 widths x 4 depths, cold process ({round_}) | {walls[0]:.1f} | {walls[1]:.1f} | "
                    f"{speedups[-1]:.2f}x | {ceiling:.2f}x | {'yes' if outputs[0] == outputs[1] else 'NO'} | "
                    f"{load_average()} |")
        print(rows[-1], flush=True)
    rows.append(f"| median of {rounds} | | | {sorted(speedups)[len(speedups) // 2]:.2f}x | | | |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("weights", "routes", "checkpoint", "sweep"))
    parser.add_argument("--layers", type=int, default=32, help="decoder layers of the synthetic checkpoint")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint under /tmp")
    parser.add_argument("--rounds", type=int, default=3, help="alternating --jobs 1 / --jobs 2 pairs of the sweep")
    args = parser.parse_args()
    print(f"# modnorm perf bench ({os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, {load_average()})\n")
    sections = {"weights": weights_section, "routes": routes_section,
                "checkpoint": lambda: checkpoint_section(args.layers, args.keep),
                "sweep": lambda: sweep_section(args.rounds)}
    for name, run in sections.items():
        if args.only in (None, name):
            print("\n".join(run()) + "\n", flush=True)


if __name__ == "__main__":
    main()

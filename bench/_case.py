"""One bench case in a fresh process (so every figure is a cold start, like a CI job), printed as JSON.

mode "floor": import torch, build the model on meta, trace it with the shape-aware tracer (and time plain
torch.fx's trace where it works); mode "check": import torch and run modnorm's whole check. For a sweep, every
grid point is built and traced (floor) or checked. Run by bench/run.py, which reads the peak RSS.
"""

import json
import sys
import time

start = time.perf_counter()
import torch  # noqa: E402

import_s = time.perf_counter() - start


def points(kwargs, sweep):
    from modnorm.sweep import grid, parse_sweep

    return [{**kwargs, **p} for p in grid(parse_sweep(sweep))] if sweep else [kwargs]


def floor(target, kwargs, sweep):
    from modnorm.loading import load
    from modnorm.routes import trace

    build_s = trace_s = 0.0
    plain_s, nodes, parameters = 0.0, 0, 0
    for point in points(kwargs, sweep):
        t0 = time.perf_counter()
        loaded = load(target, device="meta", kwargs=point)
        build_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        traced = trace(loaded.model, loaded.inputs, user_file=loaded.file, tracer="fx")
        trace_s += time.perf_counter() - t0
        nodes += len(traced.graph.nodes)
        parameters = max(parameters, loaded.parameters)
        try:
            t0 = time.perf_counter()
            torch.fx.symbolic_trace(loaded.model)
            plain_s += time.perf_counter() - t0
        except Exception:  # noqa: BLE001 - plain fx fails on most real models (that is the point)
            plain_s = None if plain_s is not None else None
            plain_s = None
    return {"import_s": import_s, "build_s": build_s, "trace_s": trace_s, "plain_fx_s": plain_s, "nodes": nodes,
            "parameters": parameters}


def check(target, kwargs, sweep):
    from modnorm.check import check_model, check_sweep
    from modnorm.config import Settings
    from modnorm.sweep import parse_sweep

    settings = Settings(device="meta")
    t0 = time.perf_counter()
    if sweep:
        check_sweep(target, settings, parse_sweep(sweep), kwargs=kwargs)
    else:
        check_model(target, settings, kwargs=kwargs)
    return {"import_s": import_s, "check_s": time.perf_counter() - t0}


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    run = floor if spec["mode"] == "floor" else check
    print(json.dumps(run(spec["target"], spec.get("kwargs", {}), spec.get("sweep", []))))

"""--jobs N: sweep grid points and several models in worker processes, results identical to the serial run; and
the progress bar's rules (after a second, at a terminal, never in machine formats)."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from modnorm import progress
from modnorm.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def run(*args):
    result = runner.invoke(app, ["check", *map(str, args)])
    assert result.exit_code in (0, 1), result.output
    return result.stdout


def test_sweep_with_two_jobs_is_identical_to_one():
    args = [ROOT / "fixtures/sweep_nanogpt.py", "--sweep", "n_embd=32,64", "--sweep", "n_layer=2,4", "-f", "json"]
    serial, parallel = run(*args, "--jobs", "1"), run(*args, "--jobs", "2")
    assert json.loads(serial)["sweep"]["points"] and serial == parallel


def test_several_models_with_two_jobs_are_identical_and_in_order():
    models = [ROOT / "fixtures" / name for name in ("deep_mlp.py", "clean_mlp.py", "resnet_bn.py")]
    serial, parallel = run(*models, "-f", "json", "-j", "1"), run(*models, "-f", "json", "-j", "2")
    assert serial == parallel


def test_a_bad_grid_point_in_a_worker_is_the_same_clear_error(tmp_path):
    model = tmp_path / "picky.py"
    model.write_text("import torch\n\n\ndef build_model(width=8):\n    if width == 24:\n"
                     "        raise ValueError('width 24 is not supported')\n    return torch.nn.Linear(width, width)\n\n\n"
                     "def example_inputs(model):\n    return torch.randn(2, model.in_features)\n")
    outcomes = [runner.invoke(app, ["check", str(model), "--sweep", "width=8,16,24,32", "-j", jobs])
                for jobs in ("1", "2")]
    for outcome in outcomes:
        assert outcome.exit_code == 2 and "Traceback" not in outcome.stderr
        assert "width 24 is not supported" in outcome.stderr and "picky.py:6" in outcome.stderr
    assert outcomes[0].stderr == outcomes[1].stderr


def test_costliest_items_start_first_and_results_keep_input_order():
    from modnorm.parallel import _largest_first, run_all

    assert _largest_first([1.0, 4.0, 2.0, 4.0], 4) == [1, 3, 2, 0]  # ties in input order
    assert _largest_first(None, 3) == [0, 1, 2]
    assert run_all(pow, [(2, 1), (2, 5), (2, 3)], jobs=2, costs=[1, 5, 3]) == [2, 32, 8]


def test_the_calling_process_is_one_of_the_jobs_and_other_failures_surface():
    import os

    from modnorm.parallel import run_all

    assert os.getpid() in run_all(os.getpid, [()] * 4, jobs=2, in_caller=True)  # starts while the server imports
    assert os.getpid() not in run_all(os.getpid, [()] * 4, jobs=2)  # the default: items may fork (the CLI's)
    for in_caller in (False, True):
        with pytest.raises(ValueError):
            run_all(int, [("x",), ("y",), ("z",)], jobs=2, in_caller=in_caller)


@pytest.mark.parametrize("inline", [False, True])
def test_a_check_job_runs_in_one_thread_and_the_callers_count_is_kept(monkeypatch, inline):
    from modnorm.worker import run_isolated

    if inline:
        monkeypatch.setenv("MODNORM_WORKER", "inline")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = str(ROOT / "fixtures/deep_mlp.py")
        assert run_isolated(torch.get_num_threads, target=model) == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ --jobs = cores
def test_jobs_are_cores_shared_by_the_independent_checks():
    from modnorm.parallel import cores_each

    assert cores_each(2, 1) == 2  # one model: both cores (a helper thread computes norms ahead)
    assert cores_each(2, 16) == 1  # a 4 x 4 sweep: two processes of one thread
    assert cores_each(4, 2) == 2 and cores_each(3, 2) == 1 and cores_each(1, 1) == 1


def _cores_and_norms_ahead(target):
    """In the job's child: its core budget and whether norms were computed ahead while checking `target`."""
    from modnorm import weightstore
    from modnorm.check import check_model
    from modnorm.config import Settings

    started, original = [], weightstore.NormsAhead.start
    weightstore.NormsAhead.start = lambda self: (started.append(self), original(self))[1]  # the child's copy only
    check_model(target, Settings(device="cpu"))
    return weightstore.JOB_CORES, bool(started)


@pytest.mark.skipif((__import__("os").cpu_count() or 1) < 2, reason="a helper thread needs a second core")
def test_one_core_computes_no_norms_ahead_two_do():
    from modnorm.worker import run_isolated

    target = str(ROOT / "fixtures/resnet_bn.py")
    assert run_isolated(_cores_and_norms_ahead, target, target=target, cores=1) == (1, False)
    assert run_isolated(_cores_and_norms_ahead, target, target=target, cores=2) == (2, True)


@pytest.mark.parametrize("extra, expected", [((), "all"), (("-j", "1"), 1), (("-j", "2", "--sweep", "width=8,16"), 1),
                                             (("-j", "4", "--sweep", "width=8,16"), 2)])
def test_the_cli_gives_each_check_its_share_of_the_cores(monkeypatch, extra, expected):
    from modnorm import worker
    from modnorm.parallel import usable_cores

    seen = []
    real = worker.run_isolated
    monkeypatch.setattr(worker, "run_isolated", lambda *a, **k: (seen.append(k["cores"]), real(*a, **k))[1])
    model = ROOT / "fixtures/deep_mlp.py"
    run(model, "-f", "json", *extra)
    assert seen == [usable_cores() if expected == "all" else expected]


def test_the_fork_server_is_gone_once_stopped():
    """A server left running exits with the process and then holds our stderr for ~1 s: the CLI stops it."""
    import os
    from multiprocessing import forkserver

    from modnorm.parallel import run_all, stop

    assert run_all(abs, [(-1,), (-2,)], jobs=2) == [1, 2]
    pid = forkserver._forkserver._forkserver_pid
    assert pid is not None
    stop()
    assert forkserver._forkserver._forkserver_pid is None
    with pytest.raises(ChildProcessError):  # killed and reaped: no longer our child
        os.waitpid(pid, os.WNOHANG)
    assert run_all(abs, [(-3,), (-4,)], jobs=2) == [3, 4]  # a later pool starts a new one
    stop()


def test_jobs_must_be_positive():
    result = runner.invoke(app, ["check", str(ROOT / "fixtures/deep_mlp.py"), "--jobs", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output


# ------------------------------------------------------------------------------------------------ progress bar
@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


@pytest.mark.parametrize("allowed, terminal, shown", [(True, True, True), (True, False, False),
                                                      (False, True, False)])
def test_bar_shows_only_when_allowed_and_at_a_terminal(monkeypatch, allowed, terminal, shown):
    monkeypatch.setattr(progress, "_allowed", allowed)
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: terminal)
    assert progress.Meter("x", 10, "tensors").show is shown


def test_bar_appears_only_after_a_second(clock, monkeypatch):
    opened = []
    monkeypatch.setattr(progress.Meter, "_open", lambda self: opened.append(self.done) or setattr(self, "_bar", None))
    bar = progress.Meter("x", 10, "tensors", show=True)
    clock[0] = 0.5
    bar.advance()
    assert opened == []
    clock[0] = 1.5
    bar.advance()
    assert opened == [2]


def test_machine_formats_disallow_the_bar():
    progress.allow(True)
    run(ROOT / "fixtures/deep_mlp.py", "-f", "json")
    assert progress._allowed is False
    run(ROOT / "fixtures/deep_mlp.py", "-f", "concise")
    assert progress._allowed is True
    progress.allow(False)


def test_audit_counts_every_stored_tensor_and_byte_once(tmp_path, monkeypatch):
    """The bar's totals are the checkpoint's tensors and bytes; each read advances it by one tensor."""
    import sys

    from modnorm.check import check_model
    from modnorm.config import Settings
    from modnorm.weights import save_sharded

    sys.path.insert(0, str(ROOT / "fixtures"))
    import deep_mlp

    state = deep_mlp.build_model().state_dict()
    index = save_sharded(state, tmp_path, shard_bytes=20_000)
    meters = []
    original = progress.Meter.__init__

    def record(self, *args, **kwargs):
        original(self, *args, **kwargs)
        meters.append(self)

    monkeypatch.setattr(progress.Meter, "__init__", record)
    check_model(str(ROOT / "fixtures/deep_mlp.py"), Settings(weights=str(index)))
    (bar,) = meters
    assert bar.total == len(state) and bar.total_bytes == sum(t.numel() * t.element_size() for t in state.values())
    assert bar.done == bar.total and bar.bytes == bar.total_bytes

import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = sorted(p for p in (ROOT / "fixtures").glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)


pytest_plugins = ["pytester"]


def pytest_terminal_summary(terminalreporter) -> None:
    """The adversarial verifier's table: the tightest measured/bound ratio per registry entry (tests/adversary.py)."""
    adversary = sys.modules.get("tests.adversary")
    if adversary is not None and adversary.WORST:
        terminalreporter.write_sep("-", "adversarial verifier: worst measured / certified bound per registry entry")
        terminalreporter.write_line(adversary.table())


# Cases of 4-12 s each (measured on an idle 2-core machine, `pytest --durations`) that repeat what cheaper cases in
# the default run already show; they run in CI's slow step so that the default run stays near 5 minutes.
SLOW_CASES = {
    "tests/test_properties.py::test_analysis_never_crashes_and_bounds_hold",  # hundreds of archs: slow variant
    "tests/test_routes.py::test_torch_compile_code_is_a_leaf_not_modelled",
    "tests/test_corpus.py::test_tightness_network_bound_holds_at_init_and_clean_designs_are_within_100x",
    "tests/test_bad_inputs.py::test_bad_input_exits_2_with_one_paragraph_naming_it[hang-at-import]",
    "tests/test_default_size.py::test_llama_7b_certified_profile_reports_figures_past_float_range_by_their_log",
    "tests/test_plugin.py::test_plugin_passes_and_fails_user_models",
    "tests/test_sweep.py::test_sweep_json_and_plot",
    "tests/test_parallel.py::test_sweep_with_two_jobs_is_identical_to_one",
    "tests/test_constants.py::test_attention_bound_on_an_additive_mask_input_holds",
    "tests/test_sweep.py::test_nanogpt_drifts_with_width_and_grows_with_depth",
    "tests/test_parallel.py::test_a_bad_grid_point_in_a_worker_is_the_same_clear_error",
}


def pytest_collection_modifyitems(config, items) -> None:
    import pytest

    for item in items:
        if item.nodeid in SLOW_CASES:
            item.add_marker(pytest.mark.slow)

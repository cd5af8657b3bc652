"""Each claim README makes, quoted, and the tests that prove it; docs/claims.md is this table rendered.

A claim whose words leave README, or a test that no longer exists, fails here; so does a stale docs/claims.md
(`python docs/generate.py` rewrites it). Tests marked slow run in CI's second step (`pytest -m slow`).
"""

import importlib
import re

import pytest

from tests.conftest import ROOT

CLAIMS = [
    ("Every bound it prints is an upper bound on what the model really does",
     ["test_soundness.py::test_network_sensitivity_bound_holds", "test_soundness.py::test_every_atom_bound_holds",
      "test_soundness.py::test_token_models_are_bounded_from_each_embedding",
      "test_properties.py::test_analysis_never_crashes_and_bounds_hold",
      "test_properties.py::test_analysis_never_crashes_and_bounds_hold_on_hundreds_of_architectures",
      "test_sharpness.py::test_measured_second_derivatives_stay_below_the_certified_triple",
      "test_sharpness.py::test_measured_curvature_of_the_loss_stays_below_the_gradient_lipschitz_bound",
      "test_probe.py::test_every_measurement_is_within_its_bound"]),
    ("`--profile modula` reproduces the real Modula package's numbers exactly (all 39 reference configurations: "
     "targets, mass shares, downstream and total sensitivities)",
     ["test_reference.py::test_modula_profile_reproduces_the_reference",
      "test_reference.py::test_every_ok_config_is_covered"]),
    ("within 3% (median under 1%) for nanoGPT's normal(0, 0.02) at width 256, exact for orthogonal inits",
     ["test_initlaw.py::test_custom_normal_init_is_predicted_within_three_percent",
      "test_initlaw.py::test_orthogonal_and_unit_row_inits_are_exact"]),
    ("opened with `torch.load(weights_only=True)`; nothing else is ever unpickled",
     ["test_weights.py::test_malicious_pickle_is_refused_without_running",
      "test_weights.py::test_other_formats_are_not_opened"]),
    ("a blown-up layer is MN101 with its name", ["test_weights.py::test_blown_up_layer_is_flagged_by_name"]),
    ("an upper bound 1% above the value that fails with probability δ ≤ 10⁻⁹ per matrix",
     ["test_norms.py::test_bracket_contains_the_true_norm",
      "test_norms.py::test_failure_probability_bounds_the_observed_failure_rate",
      "test_norms.py::test_fast_upper_is_tight_and_says_how_it_holds"]),
    ("a measurement above its bound is reported as a bug (exit 1)",
     ["test_probe.py::test_a_wrong_bound_is_reported_as_a_bug"]),
    ("Tiny GPT-2, BERT, Llama, Mistral, Qwen2 and T5 configs and a 7B-shaped Llama trace with the fx route and no "
     "unknown op", ["test_hf.py::test_tiny_transformers_models_trace_with_no_unknown_op",
                    "test_hf.py::test_llama_7b_shape_on_meta_in_seconds"]),
    ("each analysed with no unknown op and its route asserted",
     ["test_real_fixtures.py::test_real_model_traces_with_fx_and_no_unknown_op",
      "test_routes.py::test_op_log_reproduces_the_fx_route"]),
    ("A 65B-parameter Llama shape is checked on meta in a test (peak RSS of the checking process about 375 MB; the "
     "test, in a fresh process, requires under 500 MB)",
     ["test_cli.py::test_a_65b_parameter_llama_shape_is_analysed_on_meta_in_little_memory"]),
    ("Unknown keys, unknown codes and wrong types are errors (exit 2) naming the file, line and key",
     ["test_config.py::test_bad_configuration_is_exit_two_naming_file_and_key",
      "test_config.py::test_unknown_codes_on_the_command_line_are_exit_two"]),
    ("A suppression that suppresses nothing is itself reported as MN001",
     ["test_suppression.py::test_the_comment_suppresses_and_the_stale_one_is_reported"]),
    ("Exit codes are 0/1/2 in every format", ["test_formats.py::test_exit_codes_are_the_same_in_every_format",
                                              "test_cli.py::test_findings_exit_one_and_exit_zero_overrides",
                                              "test_cli.py::test_missing_file_and_bad_options_exit_two"]),
    ("importing it does not import torch", ["test_plugin.py::test_plugin_is_registered_and_light_to_import"]),
    ("its closed forms (tested to 1e-9 up to L = 1024)",
     ["test_sharpness.py::test_scaled_residual_stack_matches_the_closed_form_and_stays_bounded"]),
    ("`2V(cdM)² + V·cd + cdM` for softmax attention (certified; checked against nested jvp)",
     ["test_sharpness.py::test_attention_hessian_bounds_the_op_alone",
      "test_sharpness.py::test_attention_and_softmax_second_derivatives"]),
    ("the report prints the Lipschitz constant of the loss gradient `σα + τA²` and the safe normalized step",
     ["test_sharpness.py::test_gradient_lipschitz_bound_and_safe_step_by_hand"]),
    ("exact per-atom norms after SGD, momentum, Adam and AdamW steps",
     ["test_optim.py::test_every_atom_moves_by_lr_times_its_target"]),
    ("Modula's normalized gradient on all 39 reference configurations, GPT included",
     ["test_optim.py::test_normalized_sgd_is_modulas_normalized_gradient",
      "test_optim.py::test_normalized_sgd_is_modulas_normalized_gradient_on_every_reference_config"]),
    ("a teacher–student task trains", ["test_optim.py::test_training_with_the_wrapper_reduces_the_loss"]),
    ("every norm, sensitivity and target has |p| < 0.02 in width, and the design sensitivity is depth-independent",
     ["test_sweep.py::test_modula_gpt_is_flat_in_width_and_depth"]),
    ("Each rule is one file in `rules/`, documented like ruff's rules",
     ["test_fixtures.py::test_every_rule_is_documented_and_demonstrated",
      "test_fixtures.py::test_readme_rules_table_is_generated_from_the_rule_docs",
      "test_docs.py::test_rule_pages_are_up_to_date_with_the_docstrings"]),
    ("each declaring the findings it must produce",
     ["test_fixtures.py::test_fixture_reports_exactly_what_it_declares",
      "test_fixtures.py::test_fixture_findings_have_their_severity_count_and_line"]),
]


def flat(text: str) -> str:
    return " ".join(text.split())


def node_parts(node: str) -> tuple[str, str]:
    module, name = node.split("::")
    return module.removesuffix(".py"), name


def is_slow(node: str) -> bool:
    module, name = node_parts(node)
    function = getattr(importlib.import_module(f"tests.{module}"), name)
    return any(mark.name == "slow" for mark in getattr(function, "pytestmark", []))


def render() -> str:
    """docs/claims.md."""
    lines = ["<!-- generated from tests/test_claims.py by docs/generate.py: edit the table there -->", "",
             "# What the tests prove", "",
             "Each claim of the README, quoted, and the tests that back it (in `tests/`). Tests marked *slow* run in "
             "CI's second step, `pytest -m slow`; the others in every `pytest` run.", "",
             "| claim (README) | tests |", "| --- | --- |"]
    for claim, tests in CLAIMS:
        cells = "<br>".join(f"`{t}`" + (" (slow)" if is_slow(t) else "") for t in tests)
        lines.append(f"| {claim.replace('|', '&#124;')} | {cells} |")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("claim", [c for c, _ in CLAIMS], ids=lambda c: re.sub(r"\W+", "-", c[:40]))
def test_the_claim_is_in_the_readme(claim):
    assert flat(claim) in flat((ROOT / "README.md").read_text()), claim


def test_every_cited_test_exists():
    for _, tests in CLAIMS:
        for node in tests:
            module, name = node_parts(node)
            assert callable(getattr(importlib.import_module(f"tests.{module}"), name, None)), node


def test_docs_claims_table_is_rendered_from_this_list():
    assert (ROOT / "docs" / "claims.md").read_text() == render(), "run `python docs/generate.py`"

"""What a user sees at default sizes (issue 16, "What it must show"): a 12-layer nanoGPT's report is short and
grouped by role, and Llama-2-7B- and 70B-shaped configs on meta give finite figures that MN204 can judge.

Sensitivities are path sums of products of hundreds of constants: they are computed in log space too
(combinators.log_series / log_parallel), so a figure past float range is still known (JSON: null next to a finite
`log10_*`; text: `1.2e+412`) and inf means an unbounded op, never an overflow.
"""

import json
import math
import re

import pytest
from typer.testing import CliRunner

from modnorm.cli import app
from modnorm.rules import all_rules
from tests.conftest import ROOT

runner = CliRunner()
NANOGPT_12 = ["--kwargs", "n_layer=12", "--kwargs", "n_embd=768", "--kwargs", "n_head=12", "--device", "meta"]
FINDING_LINE = re.compile(r"^(error|warning|info)\s+MN\d{3}\b")  # finding lines, not the ranked changes


def _check(target, *args):
    result = runner.invoke(app, ["check", str(target), "--exit-zero", "--isolated", "--color", "never", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_nanogpt_12_layers_prints_at_most_15_finding_lines_by_default():
    output = _check(ROOT / "fixtures/nanogpt.py", *NANOGPT_12)
    lines = [line for line in output.splitlines() if FINDING_LINE.search(line)]
    assert 0 < len(lines) <= 15, f"{len(lines)} finding lines:\n" + "\n".join(lines[:40])


def test_nanogpt_12_layers_names_each_role_and_its_instance_count():
    report = json.loads(_check(ROOT / "fixtures/nanogpt.py", *NANOGPT_12, "-f", "json"))
    per_block = [f for f in report["findings"] if re.search(r"\bh\.(\d+|\*)(\.|$)", f["module"])]
    assert per_block, "a 12-layer nanoGPT has per-block findings (unscaled residuals, 1/sqrt(d) attention)"
    for finding in per_block:
        assert re.search(r"\bh\.\*", finding["module"]), finding["module"]
        assert re.search(r"(×|x)\s?12\b", finding["message"]), finding["message"]


def _llama(tmp_path, name, **shape):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=256, max_position_embeddings=4096,
                                      architectures=["LlamaForCausalLM"], **shape)
    config.save_pretrained(tmp_path / name)
    return tmp_path / name


LLAMA_SHAPES = {
    "llama2_7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32),
    "llama2_70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8),
}
def _figures(report):
    """Every number the report prints about the network, its layers and its ops, each with its log10 where the JSON
    has one: a figure past float range is null in JSON (no bare Infinity) and finite through its log10."""
    net = report["network"]
    yield "network.sensitivity", net["sensitivity"], net.get("log10_sensitivity")
    yield "network.design_sensitivity", net["design_sensitivity"], net.get("log10_design_sensitivity")
    for layer in report["layers"]:
        for key in ("sensitivity", "downstream_sensitivity", "target_norm", "norm_at_init", "mass_share"):
            yield f"{layer['name']}.{key}", layer[key], layer.get(f"log10_{key}")
    sharp, loss = net["sharpness"], net["loss"]
    for key in ("alpha", "beta", "gamma", "weight_sensitivity"):
        yield f"sharpness.{key}", sharp[key], sharp.get(f"log10_{key}")
    yield "loss.gradient_lipschitz", net["gradient_lipschitz"], loss.get("log10_gradient_lipschitz")


def _finite(value, log10) -> bool:
    return any(isinstance(v, (int, float)) and math.isfinite(v) for v in (value, log10))


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[pytest.mark.slow] if "70b" in n else []) for n in LLAMA_SHAPES])
def test_llama_shapes_on_meta_have_finite_figures_and_mn204_is_evaluated(tmp_path, name):
    report = json.loads(_check(_llama(tmp_path, name, **LLAMA_SHAPES[name]), "-f", "json", "--device", "meta"))
    bad = [key for key, value, log10 in _figures(report) if not _finite(value, log10)]
    assert bad == [], f"{len(bad)} non-finite figures, e.g. {bad[:5]}"

    net = report["network"]
    # the sharpness products leave float range too (α ~ 1e288 at 7B, 1e825 at 70B): certified, by their log10
    assert net["sharpness"]["certified"], net["sharpness"]["reason"]
    if not net["certified"]:  # only a really unbounded op may leave the network uncertified, and it is named
        assert net["uncertified_reasons"] and all(re.search(r":\d+", r) for r in net["uncertified_reasons"])
    # MN204 judges the design sensitivity: present exactly when it is above the rule's warn threshold.
    warn = all_rules()["MN204"].options["warn"]
    fired = any(f["code"] == "MN204" for f in report["findings"])
    design_log10 = net["log10_design_sensitivity"]
    assert fired == (design_log10 > math.log10(warn))


def test_llama_7b_certified_profile_reports_figures_past_float_range_by_their_log(tmp_path):
    """The unconditional worst case (`--profile certified`: 1/sqrt(eps) = 1000 per RMSNorm, 65 of them) exceeds
    float64 (1e308): before the log-space path sums this was inf and "not certified (unbounded constant)". Now
    the network is certified, JSON writes null with the figure's log10, and the text prints the figure itself."""
    target = _llama(tmp_path, "llama2_7b", **LLAMA_SHAPES["llama2_7b"])
    report = json.loads(_check(target, "-f", "json", "--device", "meta", "--profile", "certified"))
    net = report["network"]
    assert net["certified"] and net["uncertified_reasons"] == []
    # 65 normalizers at 1/sqrt(1e-6) = 1e3 each are 1e195 on their own: past float range once the rest is counted
    assert net["sensitivity"] is None and 308 < net["log10_sensitivity"] < 1000
    assert net["design_sensitivity"] == pytest.approx(10 ** net["log10_design_sensitivity"], rel=1e-4)
    text = _check(target, "--device", "meta", "--profile", "certified")
    exponent = int(net["log10_sensitivity"])
    assert re.search(rf"sensitivity \d\.\d+e\+{exponent}\b", text), text[-2000:]

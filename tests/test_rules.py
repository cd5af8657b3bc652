"""Rules at their thresholds, on hand-built `Analysis` objects: the rule engine promises that a rule reads only the
frozen result, so each rule is specified here without tracing any model. Every threshold is tested on both sides:
at the limit (no finding, or the lower severity) and just past it. Limits come from the rule docs
(docs/rules/*.md), not from the rule code: MN201 1 + 2/L; MN202 the same limit with the skip at 1; MN203 e and 10;
MN204 2 and 10; MN301 an aligned logit c·d above 1.5 (1/√d scaling) and above 8.
"""

import math

import pytest

from modnorm.result import Analysis, Merge, ModelInfo, Network, Op, Stream
from modnorm.rules import RuleSelection, all_rules, run_rules

EPS = 1e-6  # "just past the limit"


def network(design_sensitivity: float = 1.0) -> Network:
    return Network(mass=3.0, sensitivity=design_sensitivity, design_sensitivity=design_sensitivity, certified=True,
                   uncertified_reasons=(), unknown_ops=(), assumptions=())


def analysis(*, merges=(), ops=(), design_sensitivity: float = 1.0) -> Analysis:
    """A hand-built result: one residual stream through `merges` (in order), plus `ops`."""
    streams = (Stream(tuple(m.op for m in merges)),) if merges else ()
    return Analysis(ModelInfo(file="model.py", entry="build_model", tracer="fx", device="meta", parameters=0,
                              nodes=0), "certified", "roles", 1.0, (), tuple(ops), tuple(merges), streams,
                    network(design_sensitivity))


def merge(index: int, skip: float, branch: float, branch_sensitivity: float) -> Merge:
    return Merge(op=f"add_{index}", skip=f"x_{index}", branch=f"f_{index}", skip_coefficient=skip,
                 branch_coefficient=branch, branch_sensitivity=branch_sensitivity,
                 design_branch_sensitivity=branch_sensitivity, module=f"blocks.{index}", file="model.py",
                 line=10 + index)


def stream(depth: int, skip: float, branch: float, branch_sensitivity: float) -> Analysis:
    return analysis(merges=[merge(i, skip, branch, branch_sensitivity) for i in range(depth)])


def attention(scale: float, head_dim: int) -> Op:
    return Op(name="sdpa", target="sdpa", kind="bond", inputs=("q", "k", "v"), lipschitz=(1.0, 1.0, 1.0),
              downstream_sensitivity=1.0, upper=1.0, lower=0.0, certified=True, reason="", source="attention",
              module="blocks.0.attn", file="model.py", line=20, tags=("attention",),
              attention_scale=scale, head_dim=head_dim)


def findings(code: str, result: Analysis, **options):
    return list(all_rules()[code](**options).check(result))


def severities(code: str, result: Analysis, **options):
    return [f.severity for f in findings(code, result, **options)]


# ---------------------------------------------------------------- MN201: block sensitivity above 1 + 2/L
def test_mn201_allows_a_block_at_exactly_one_plus_two_over_l():
    # L = 4 merges: limit 1 + 2/4 = 1.5. Block 0.8 + 0.7 · s with s = 1: 1.5 (the skip is not 1, so not MN202).
    assert findings("MN201", stream(4, 0.8, 0.7, 1.0)) == []


def test_mn201_flags_every_merge_just_past_the_limit():
    past = stream(4, 0.8, 0.7, 1.0 + EPS / 0.7 * 10)  # block 1.5 + 1e-5
    found = findings("MN201", past)
    assert [f.line for f in found] == [10, 11, 12, 13] and {f.severity for f in found} == {"warning"}
    assert "1.5" in found[0].message and found[0].module == "blocks.0"
    assert "0.75" in found[0].fix and "0.25" in found[0].fix  # the fix names 1 - 1/L and 1/L for L = 4


def test_mn201_limit_scales_with_depth_and_the_slack_option():
    # L = 8: limit 1.25. A block of 1.3 passes at L = 4 and fails at L = 8; slack 4 moves the limit to 1.5.
    assert findings("MN201", stream(4, 0.6, 0.7, 1.0)) == []
    assert len(findings("MN201", stream(8, 0.6, 0.7, 1.0))) == 8
    assert findings("MN201", stream(8, 0.6, 0.7, 1.0), slack=4.0) == []


def test_mn201_leaves_x_plus_b_f_with_b_below_one_to_mn202():
    underscaled = stream(4, 1.0, 0.5, 1.0)  # 1 + 0.5 = 1.5 at the limit: neither rule
    assert findings("MN201", underscaled) == [] and findings("MN202", underscaled) == []
    past = stream(4, 1.0, 0.5, 1.0 + 10 * EPS)
    assert findings("MN201", past) == [] and severities("MN202", past) == ["error"] * 4
    plain = stream(4, 1.0, 1.0, 1.0)  # x + f(x): MN201's
    assert len(findings("MN201", plain)) == 4 and findings("MN202", plain) == []


# ---------------------------------------------------------------- MN203: stream growth above e², error above 100
@pytest.mark.parametrize("depth", [2, 4, 8])
def test_mn203_at_and_past_e_squared(depth):
    per_block = (math.e ** 2 * (1 - 1e-12)) ** (1 / depth)  # the product of `depth` blocks is e², rounded down
    assert findings("MN203", stream(depth, per_block - 0.5, 0.5, 1.0)) == []
    past = findings("MN203", stream(depth, per_block - 0.5 + EPS, 0.5, 1.0))
    assert [f.severity for f in past] == ["warning"] and past[0].line == 10 + depth - 1  # the last merge


def test_mn203_is_an_error_past_a_hundred():
    per_block = (100 * (1 - 1e-12)) ** (1 / 4)
    assert severities("MN203", stream(4, per_block - 0.5, 0.5, 1.0)) == ["warning"]  # 100, rounded down
    assert severities("MN203", stream(4, per_block - 0.5 + EPS, 0.5, 1.0)) == ["error"]
    assert severities("MN203", stream(4, per_block - 0.5 + EPS, 0.5, 1.0), error=200.0) == ["warning"]


# ---------------------------------------------------------------- MN204: network sensitivity above e, error above 10
# e is the (1 + 1/L)^L envelope of a well-scaled residual network (2.64 at L = 16 must not warn).
@pytest.mark.parametrize("sensitivity, expected", [(1.0, []), (2.0, []), (2.64, []), (math.e, []),
                                                   (math.e + EPS, ["warning"]),
                                                   (10.0, ["warning"]), (10.0 + EPS, ["error"]),
                                                   (math.inf, []), (math.nan, [])])
def test_mn204_thresholds(sensitivity, expected):
    # An infinite or unknown sensitivity is not this rule's to report: MN901 names the op that made it so.
    assert severities("MN204", analysis(design_sensitivity=sensitivity)) == expected


def test_mn204_options_move_the_thresholds():
    assert severities("MN204", analysis(design_sensitivity=4.0), warn=5.0) == []
    assert severities("MN204", analysis(design_sensitivity=6.0), warn=5.0, error=5.5) == ["error"]


# ---------------------------------------------------------------- MN301: attention scaled for initialization
@pytest.mark.parametrize("scale, head_dim, expected", [
    (1 / 64, 64, []),                   # Modula's 1/d: aligned logit c·d = 1
    (1.5 / 64, 64, []),                 # c·d = 1.5: at the limit of "scaled like 1/d"
    (1.5 / 64 + EPS, 64, ["warning"]),  # just past it
    (1 / 4, 16, ["warning"]),           # 1/√d at d = 16: c·d = 4
    (1 / 8, 64, ["warning"]),           # 1/√d at d = 64: c·d = 8, exactly max_aligned_logit
    (1 / 8 + EPS, 64, ["error"]),       # past 8
    (1 / math.sqrt(128), 128, ["error"]),  # 1/√d at d = 128: c·d = 11.3
])
def test_mn301_thresholds(scale, head_dim, expected):
    assert severities("MN301", analysis(ops=[attention(scale, head_dim)])) == expected


def test_mn301_option_and_fix():
    assert severities("MN301", analysis(ops=[attention(1 / 8 + EPS, 64)]), max_aligned_logit=16.0) == ["warning"]
    found = findings("MN301", analysis(ops=[attention(1 / 4, 16)]))[0]
    assert found.line == 20 and found.module == "blocks.0.attn" and "0.0625" in found.fix  # 1/d = 1/16


# ---------------------------------------------------------------- the engine on a hand-built analysis
def test_run_rules_selects_orders_and_applies_options():
    result = analysis(merges=[merge(i, 1.0, 1.0, 1.0) for i in range(4)], ops=[attention(1 / 4, 16)],
                      design_sensitivity=16.0)  # x + f(x) × 4: blocks of 2, stream ×16, network 16
    found = run_rules(result)
    codes = [f.code for f in found]
    assert codes[0] == "MN204"  # the error first (network 16 > 10); the stream ×16 is a warning (e² < 16 < 100)
    assert [f.severity for f in found] == ["error"] + ["warning"] * (len(found) - 1)
    assert codes.count("MN201") == 4 and "MN301" in codes
    selected = run_rules(result, RuleSelection(select=("MN2",), ignore=("MN201",)))
    assert sorted(f.code for f in selected) == ["MN203", "MN204"]
    relaxed = run_rules(result, RuleSelection(select=("MN204",), options={"MN204": {"error": 20.0}}))
    assert [f.severity for f in relaxed] == ["warning"]
    per_module = run_rules(result, RuleSelection(select=("MN201",), per_module_ignores=(("blocks.*", ("MN2",)),)))
    assert per_module == ()

"""The labeled corpus (tests/corpus/): what modnorm must say about designs whose verdict is known in advance.

Each file in tests/corpus/ is a small, self-contained architecture whose module docstring carries its label:
`Label: clean` (a Modula-style design with Modula's init, in one of several spellings) or
`Defect: <what> -> MNxxx` (a clean design with exactly one known defect). The specification, issue 16 item 3:

* a clean design produces no finding at warning level or above;
* a defect produces its code, and nothing else, at warning level or above (info notes are free).

Cases modnorm gets wrong today are `xfail(strict=True)` with the cause, so the calibration work flips them (and
must delete the entry when it does). The per-rule precision/recall table and the tightness of the certified
network sensitivity against a measured input Lipschitz constant are printed (`pytest -s` not needed).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.func import functional_call, jvp, vjp
from typer.testing import CliRunner

import modnorm
from modnorm.probe import block_rows
from modnorm.cli import app
from modnorm.rules import all_rules

CORPUS = Path(__file__).resolve().parent / "corpus"
CASES = sorted(CORPUS.glob("*.py"))
BLOCKING = ("warning", "error")

XFAIL: dict[str, str] = {}  # case -> why modnorm gets it wrong today (empty: every label holds)


@dataclass(frozen=True)
class Label:
    case: str
    defect: str | None  # None for a clean design
    code: str | None  # the one code the defect must produce


def label_of(path: Path) -> Label:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    if re.search(r"^Label:\s*clean\s*$", doc, re.MULTILINE):
        return Label(path.stem, None, None)
    match = re.search(r"^Defect:\s*(.+?)\s*->\s*(MN\d{3})\s*$", doc, re.MULTILINE)
    assert match, f"{path.name}: its docstring needs `Label: clean` or `Defect: <what> -> MNxxx`"
    return Label(path.stem, match.group(1), match.group(2))


@functools.cache
def report(case: str) -> dict:
    """`modnorm check CASE.py -f json` in-process, once per case (the table and the cases share it)."""
    result = CliRunner().invoke(app, ["check", str(CORPUS / f"{case}.py"), "--output-format", "json",
                                      "--exit-zero", "--isolated"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def blocking_codes(case: str) -> set[str]:
    return {f["code"] for f in report(case)["findings"] if f["severity"] in BLOCKING}


def _param(path: Path) -> pytest.param:
    marks = [pytest.mark.xfail(strict=True, reason=XFAIL[path.stem])] if path.stem in XFAIL else []
    return pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("path", [_param(p) for p in CASES])
def test_corpus_case_reports_its_label(path):
    label = label_of(path)
    codes = blocking_codes(label.case)
    if label.code is None:
        assert codes == set(), f"clean design {label.case} flagged at warning or above: {sorted(codes)}"
    else:
        assert codes == {label.code}, f"{label.case} ({label.defect}) should be {label.code} alone: {sorted(codes)}"


@pytest.mark.parametrize("case, consequences", [
    ("defect_gpt_unscaled_residual", {"MN203", "MN204", "MN501"}),
    ("defect_resmlp_affine_gain", {"MN204"}),
    ("defect_gpt_sqrt_depth_branch", {"MN203", "MN204", "MN501"}),
    ("defect_default_init_readout", {"MN101"}),
])
def test_a_consequence_stays_in_the_report_as_info_naming_its_cause(case, consequences):
    """One defect, one code: the stream growth, network figure and target spread an unscaled residual causes are
    still reported, at info, each saying which finding it follows from (the rule re-run with that fix applied)."""
    label = label_of(CORPUS / f"{case}.py")
    follows = {f["code"]: f["message"] for f in report(case)["findings"] if "— follows from" in f["message"]}
    assert set(follows) == consequences
    assert all(f"follows from {label.code}" in message or f", {label.code} (" in message for message in follows.values())
    assert all(f["severity"] == "info" for f in report(case)["findings"] if "— follows from" in f["message"])


def precision_recall(labels: list[Label], fired: dict[str, set[str]]) -> dict[str, tuple[int, int, int]]:
    """Per code: (true positives, false positives, false negatives) over the corpus, at warning or above."""
    codes = sorted({l.code for l in labels if l.code} | set().union(*fired.values()))
    counts = {}
    for code in codes:
        tp = sum(1 for l in labels if l.code == code and code in fired[l.case])
        fp = sum(1 for l in labels if l.code != code and code in fired[l.case])
        fn = sum(1 for l in labels if l.code == code and code not in fired[l.case])
        counts[code] = (tp, fp, fn)
    return counts


def _ratio(num: int, den: int) -> str:
    return f"{num / den:9.2f}" if den else "        -"


def test_precision_recall_table(capsys):
    labels = [label_of(p) for p in CASES]
    fired = {l.case: blocking_codes(l.case) for l in labels}
    counts = precision_recall(labels, fired)
    clean = [l for l in labels if l.code is None]
    lines = [f"labeled corpus: {len(labels)} designs ({len(clean)} clean, {len(labels) - len(clean)} with one "
             "defect); findings at warning or above",
             f"{'code':6} {'labeled':>7} {'TP':>4} {'FP':>4} {'FN':>4} {'precision':>9} {'recall':>9}"]
    for code, (tp, fp, fn) in counts.items():
        lines.append(f"{code:6} {tp + fn:7d} {tp:4d} {fp:4d} {fn:4d} {_ratio(tp, tp + fp)} {_ratio(tp, tp + fn)}")
    flagged = [l.case for l in clean if fired[l.case]]
    exact = sum(1 for l in labels if fired[l.case] == ({l.code} if l.code else set()))
    lines.append(f"clean designs flagged: {len(flagged)}/{len(clean)}; cases exactly right: {exact}/{len(labels)}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))

    # The corpus itself: large enough, both kinds, and every label names a real rule.
    assert len(labels) >= 24 and len(clean) >= 10 and len(labels) - len(clean) >= 10
    assert {l.code for l in labels if l.code} <= set(all_rules())
    # The table counts what it should: every labeled defect is a TP or an FN of its own code.
    assert sum(tp + fn for tp, _, fn in counts.values()) == len(labels) - len(clean)


# --- tightness: certified network sensitivity against the measured input Lipschitz constant at init ---------


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"corpus_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rms_max(t: torch.Tensor, feature_dim: int) -> float:
    """The max-position RMS norm the bounds are stated in (features along `feature_dim`)."""
    return float(t.movedim(feature_dim, -1).pow(2).mean(-1).sqrt().max())


def measured_input_lipschitz(model: torch.nn.Module, x: torch.Tensor, *, steps: int = 12, trials: int = 2) -> float:
    """Largest ratio ||J v|| / ||v|| seen by power iteration on JᵀJ (autograd, float64): a lower bound on the
    network's input Lipschitz constant at x, so it must never exceed a certified upper bound."""
    params = {k: v.detach() for k, v in model.named_parameters()}  # no graph through the weights

    def f(inp: torch.Tensor) -> torch.Tensor:
        return functional_call(model, params, (inp,))

    feature_dim = 1 if x.dim() == 4 else -1
    best = 0.0
    for _ in range(trials):
        v = torch.randn_like(x)
        for _ in range(steps):
            v = v / v.norm()
            _, jv = jvp(f, (x,), (v,))
            best = max(best, _rms_max(jv.detach(), -1) / _rms_max(v, feature_dim))
            (v,) = vjp(f, x)[1](jv)
            v = v.detach()
    return best


CONTINUOUS = [p for p in CASES if "gpt" not in p.stem]  # GPTs read token ids: no input Lipschitz to measure


# Where the default profile's bound is looser than 100x on a clean design, and why (asserted: a case not listed here
# must be within 100x; a listed one must stay within its stated ratio, or be inf for the stated reason).
CLEAN_TIGHTNESS = 100.0
LOOSER = {
    "clean_rescnn_mul_after": (1e6, "its RMS division normalizes over (C, H, W) together, so a change at one pixel "
                               "moves every pixel: given a floor per group and a ceiling on the normalized output "
                               "(docs/theory/constants.md#coupled-normalizers) each block is within 13x of its "
                               "measured constant, and the network figure multiplies the blocks' worst cases, which "
                               "no single input reaches in every block at once; without eps the unconditional "
                               "constant is unbounded"),
    "clean_rescnn_mul_before": (1e6, "same as clean_rescnn_mul_after"),
}


def test_tightness_network_bound_holds_at_init_and_clean_designs_are_within_100x(capsys):
    """For the default profile (`assumed`: normalizer floors at 0.5x their RMS at init, measured on these very
    inputs) the bound must hold at the inputs it is measured on (they satisfy the assumption by construction:
    the floors are half their values here); the unconditional `certified` column is printed next to it."""
    rows = []
    for path in CONTINUOUS:
        module = _load(path)
        torch.manual_seed(0)
        model = module.build_model().eval()
        x = module.example_inputs(model)
        bound = modnorm.analyze(model, x).network.sensitivity
        worst_case = modnorm.analyze(model, x, profile="certified").network.sensitivity
        model, x = model.double(), x.double()
        x = x / max(1.0, _rms_max(x, 1 if x.dim() == 4 else -1))  # into the unit ball the bounds assume
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small tensors: threads only contend on a shared machine
        try:
            measured = measured_input_lipschitz(model, x)
        finally:
            torch.set_num_threads(threads)
        blocks = block_rows(model, (x,), modnorm.analyze(model, x), trials=1, steps=6)
        assert not any(r.violated for r in blocks), [(r.what, r.bound, r.measured) for r in blocks if r.violated]
        loosest = max((r.bound / r.measured for r in blocks if r.measured > 0), default=math.nan)
        rows.append((path.stem, bound, worst_case, measured, loosest))
        assert measured <= bound * (1 + 1e-6), f"{path.stem}: measured {measured:.6g} above bound {bound:.6g}"
        assert measured <= worst_case * (1 + 1e-6), f"{path.stem}: measured {measured:.6g} above {worst_case:.6g}"
    lines = ["tightness at init (default profile `assumed`): network sensitivity bound / measured input Lipschitz; "
             "loosest block: max over residual blocks of bound / measured (modnorm probe's block rows)",
             f"{'case':42} {'assumed':>10} {'certified':>10} {'measured':>10} {'tightness':>10} {'block':>8}"]
    for case, bound, worst_case, measured, loosest in rows:
        ratio = bound / measured if measured > 0 else math.inf
        why = f"  looser: {LOOSER[case][1]}" if case in LOOSER else ""
        block = "-" if math.isnan(loosest) else f"{loosest:.3g}"
        lines.append(f"{case:42} {bound:10.3g} {worst_case:10.3g} {measured:10.3g} {ratio:10.3g} {block:>8}{why}")
    finite = [b / m for _, b, _, m, _ in rows if math.isfinite(b) and m > 0]
    lines.append(f"within 100x (issue 16 aim): {sum(t <= 100 for t in finite)}/{len(rows)}; "
                 f"uncertified (inf): {sum(not math.isfinite(b) for _, b, _, _, _ in rows)}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    for case, bound, _, measured, _ in rows:
        if not case.startswith("clean_"):
            continue  # a defect may be loose: the defect is what makes its constants large
        limit = LOOSER.get(case, (CLEAN_TIGHTNESS, ""))[0]
        ratio = bound / measured
        assert ratio <= limit or (math.isinf(limit) and math.isinf(ratio)), f"{case}: tightness {ratio:.3g} > {limit}"

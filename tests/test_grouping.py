"""Findings on repeated blocks are grouped by role (issue 16 item 2): one finding per code and role, with the
block count, the worst instance and the range of the figures that differ."""

from modnorm.grouping import group_by_role, role_of
from modnorm.result import Finding, Severity


def _finding(module, norm, line=10, code="MN101"):
    return Finding(code, "atom-norm-out-of-band", Severity.WARNING, f"Linear `{module}` has norm {norm} at init",
                   "fix", module, "model.py", line)


def test_role_stars_block_indices_only():
    assert role_of("transformer.h.3.mlp.c_fc") == "transformer.h.*.mlp.c_fc"
    assert role_of("blocks.0.attn.1") == "blocks.*.attn.*"
    assert role_of("lm_head") == "lm_head"
    assert role_of("fc2") == "fc2"  # a digit inside a name is not an index


def test_repeats_become_one_finding_on_the_worst_instance():
    findings = [_finding(f"h.{i}.mlp.fc", norm) for i, norm in enumerate((2.0, 3.5, 2.5))]
    (grouped,) = group_by_role(findings)
    assert grouped.module == "h.*.mlp.fc"
    assert "×3" in grouped.message and "worst instance h.1.mlp.fc" in grouped.message
    assert "has norm 3.5" in grouped.message and "2..3.5" in grouped.message


def test_different_codes_and_unrepeated_modules_stay_apart():
    findings = [_finding("h.0.fc", 2.0), _finding("h.1.fc", 2.0, code="MN102"), _finding("head", 2.0)]
    assert [f.module for f in group_by_role(findings)] == ["h.0.fc", "h.1.fc", "head"]


def test_a_single_instance_names_its_role_when_the_block_repeats():
    (grouped,) = group_by_role([_finding("h.1", 5.0)], modules=["h.0.fc", "h.1.fc", "h.2.fc", "head"])
    assert grouped.module == "h.*" and "×3: instance h.1" in grouped.message

"""The graph questions an Analysis answers for the rules, and what crosses a process boundary: a residual
branch's own ops (upstream of the branch, not of the skip) are what a walk over the op inputs finds, and the
caches behind the answers are not pickled."""

import pickle
from pathlib import Path

import pytest

from modnorm.check import check_model
from modnorm.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def _walk(analysis, start):
    ops, seen, todo = analysis.ops_by_name(), set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen and name in ops:
            seen.add(name)
            todo.extend(ops[name].inputs)
    return seen


@pytest.fixture(scope="module")
def analysis():
    return check_model(str(ROOT / "fixtures/nanogpt.py"), Settings(device="meta")).analysis


def test_a_branch_s_own_ops_are_the_walk_s(analysis):
    assert analysis.merges
    order = [op.name for op in analysis.ops]
    for merge in analysis.merges:
        own = analysis.upstream_only(merge.branch, merge.skip)
        assert set(own) == _walk(analysis, merge.branch) - _walk(analysis, merge.skip)
        assert own == sorted(own, key=order.index) and merge.branch in own and merge.skip not in own


def test_unknown_names_have_no_upstream(analysis):
    assert analysis.upstream_only("no_such_op", analysis.ops[0].name) == []


def test_the_caches_are_not_pickled(analysis):
    analysis.upstream_only(analysis.merges[0].branch, analysis.merges[0].skip)
    assert "_upstream" in analysis.__dict__ and "_op_index" in analysis.__dict__
    copy = pickle.loads(pickle.dumps(analysis))
    assert "_upstream" not in copy.__dict__ and copy == analysis
    assert copy.upstream_only(analysis.merges[0].branch, analysis.merges[0].skip) == \
        analysis.upstream_only(analysis.merges[0].branch, analysis.merges[0].skip)

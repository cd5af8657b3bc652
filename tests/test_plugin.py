"""The pytest plugin (entry point `pytest11`): a user's suite asserts its models are well-normed."""

import subprocess
import sys

USER_SUITE = '''
import math

import torch
import torch.nn.functional as F
from torch import nn

from modnorm.testing import assert_well_normed


class Orthogonal(nn.Module):
    def __init__(self, fan_out, fan_in):
        super().__init__()
        self.weight = nn.Parameter(nn.init.orthogonal_(torch.empty(fan_out, fan_in)))
        self.scale = math.sqrt(fan_out / fan_in)

    def forward(self, x):
        return F.linear(x, self.weight) * self.scale


def test_well_normed_model_passes():
    model = nn.Sequential(Orthogonal(64, 16), nn.Tanh(), Orthogonal(8, 64))
    assert_well_normed(model, torch.randn(4, 16))


def test_default_init_head_fails(modnorm):
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 8))
    modnorm.testing.assert_well_normed(model, torch.randn(4, 16), select=["MN1"])
'''


def test_plugin_passes_and_fails_user_models(pytester):
    pytester.makepyfile(test_models=USER_SUITE)
    # A subprocess: an in-process run would unload and re-import torch modules, which torch does not allow.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*modnorm found 1 problem in Sequential:*", "*MN101 warning [[]2[]]*"])
    output = result.stdout.str()
    assert "test_default_init_head_fails" in output
    # The failure shows the user's assertion line, not the plugin's frames, and never dumps the input tensor.
    assert "modnorm/testing.py" not in output and "analyzer/testing.py" not in output
    assert "tensor(" not in output and "example_inputs = " not in output


def test_plugin_is_registered_and_light_to_import():
    """Importing the plugin (which pytest does at start-up in every user's run) must not import torch."""
    code = ("import sys; import modnorm.testing; "
            "from importlib.metadata import entry_points; "
            "eps = [e.value for e in entry_points(group='pytest11') if e.name == 'modnorm']; "
            "print(eps, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['modnorm.testing'] False"

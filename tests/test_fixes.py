"""Fixes that apply (issue 19): each rule's fix text, applied as written to the model that triggered it, makes the
finding go away. The numbers applied are read from the fix text itself, so a wrong formula there fails here."""

import math
import re

import torch
from torch import nn

from modnorm.testing import check_module
from tests.test_idioms import load


def findings(model, x, code):
    return [f for f in check_module(model, x, isolated=True).findings if f.code == code]


def number_after(text: str, label: str) -> float:
    return float(re.search(rf"{label}\s*([0-9.e+-]+)", text).group(1))


def test_mn101_conv_fix_brings_every_conv_into_band():
    """'each kernel position w[:, :, i, j] orthogonal with gain g = sqrt(out/in) / kernel size', applied to the
    convs of a CIFAR CNN; the printed gain is checked against that formula for the instance it names."""
    model, x = load("cifar_cnn.py"), torch.randn(2, 3, 32, 32)
    (conv,) = [f for f in findings(model, x, "MN101") if f.module.startswith("features")]
    assert "each kernel position w[:, :, i, j] orthogonal" in conv.fix
    named = model.features[6]
    out, inp, kh, kw = named.weight.shape
    assert math.isclose(number_after(conv.fix, "gain"), math.sqrt(out / inp) / (kh * kw), rel_tol=1e-2)
    with torch.no_grad():
        for layer in model.features:
            if isinstance(layer, nn.Conv2d):
                out, inp, kh, kw = layer.weight.shape
                for i in range(kh):
                    for j in range(kw):
                        nn.init.orthogonal_(layer.weight[:, :, i, j], gain=math.sqrt(out / inp) / (kh * kw))
    assert not [f for f in findings(model, x, "MN101") if f.module.startswith("features")]


def test_mn101_linear_and_embedding_fixes_apply():
    """The Linear head: orthogonal with the printed gain; the Embedding: rows rescaled to the printed RMS."""
    model, x = load("recurrent.py"), torch.randint(0, 100, (2, 7))
    by_module = {f.module: f for f in findings(model, x, "MN101")}
    assert "give every row RMS" in by_module["embed"].fix and "orthogonal" in by_module["head"].fix
    with torch.no_grad():
        nn.init.orthogonal_(model.head.weight, gain=number_after(by_module["head"].fix, "gain"))
        w, rms = model.embed.weight, number_after(by_module["embed"].fix, "row RMS")
        w.copy_(w / w.pow(2).mean(1, keepdim=True).sqrt() * rms)
    assert not findings(model, x, "MN101")


def test_mn101_multiplier_alternative_applies():
    """'or multiply the output by c': a Linear followed by that constant is in band."""
    model, x = load("recurrent.py"), torch.randint(0, 100, (2, 7))
    head = next(f for f in findings(model, x, "MN101") if f.module == "head")
    c = number_after(head.fix, "multiply the output by")

    class Scaled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) * c

    model.head = Scaled(model.head)
    assert not [f for f in findings(model, x, "MN101") if f.module.startswith("head")]


def tied_lm():
    """fixtures/tied_lm.py: the token embedding is the output head (one tensor, N(0, 0.02) init)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "fixtures" / "tied_lm.py"
    spec = importlib.util.spec_from_file_location("tied_lm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model()
    return model, module.example_inputs(model)


def test_mn101_gives_one_fix_for_a_tied_embedding_and_head():
    """One finding for the tied pair, not two contradicting ones (rows of RMS 1 for the embedding, orthogonal for
    the head). Applied as written: scaling the tensor by c puts the embedding at norm 1 (its norm, the largest row
    RMS, is linear in the tensor) and the head at (its norm · c); the printed head multiplier is then
    1 / (head norm · c) = embed norm / head norm, which brings the head to 1."""
    model, x = tied_lm()
    tied = [f for f in findings(model, x, "MN101") if f.module in ("embed", "head")]
    assert len(tied) == 1 and tied[0].module == "embed" and "head" in tied[0].message
    fix = tied[0].fix
    scale, multiplier = number_after(fix, r"scale the tensor by"), number_after(fix, r"`head` by")
    with torch.no_grad():
        model.embed.weight.mul_(scale)
    head = model.head
    model.head = nn.Sequential(head, Scale(multiplier))
    assert model.head[0].weight is model.embed.weight  # still tied
    assert not [f for f in findings(model, x, "MN101") if f.module.startswith(("embed", "head"))]


def test_mn101_tied_fix_untie_alternative_applies():
    """'or untie them and give each its own init (embed: rows of RMS 1; head: orthogonal with gain g)'."""
    model, x = tied_lm()
    (tied,) = [f for f in findings(model, x, "MN101") if f.module == "embed"]
    untie = tied.fix.split("or untie them", 1)[1]
    gain = number_after(untie.split("head:", 1)[1], "gain")
    with torch.no_grad():
        model.head.weight = nn.Parameter(torch.empty_like(model.embed.weight))
        nn.init.orthogonal_(model.head.weight, gain=gain)
        w = model.embed.weight
        w.copy_(w / w.pow(2).mean(1, keepdim=True).sqrt())
    assert not [f for f in findings(model, x, "MN101") if f.module.startswith(("embed", "head"))]


def test_mn301_fix_fits_hand_written_attention():
    """Meta's hand-written attention: 'divide the logits by head_dim', done by setting the divisor to d."""
    model, x = load("meta_llama.py"), torch.randn(2, 8, 32)
    (finding,) = findings(model, x, "MN301")
    assert "divide the logits by head_dim" in finding.fix and "sdpa" not in finding.fix
    d = int(number_after(finding.fix, r"k\.transpose\(-2, -1\) /"))
    import tests.data.idioms.meta_llama as source  # noqa: F401  (the class whose forward reads math.sqrt)

    module = type(model.attn)
    module_globals = module.forward.__globals__
    original = module_globals["math"]
    try:
        module_globals["math"] = type("M", (), {"sqrt": staticmethod(lambda v: float(d))})  # / sqrt(d) -> / d
        assert not findings(model, x, "MN301")
    finally:
        module_globals["math"] = original


def test_mn301_fix_fits_sdpa():
    from fixtures.llama_block import build_model

    model = build_model()
    x = torch.randint(0, model.vocab, (2, model.max_len))
    (finding,) = findings(model, x, "MN301")
    assert "pass scale=1/head_dim" in finding.fix
    scale = number_after(finding.fix, "1/head_dim =")
    import torch.nn.functional as F

    sdpa = F.scaled_dot_product_attention
    try:
        F.scaled_dot_product_attention = lambda *a, **k: sdpa(*a, **{**k, "scale": scale})
        assert not findings(model, x, "MN301")
    finally:
        F.scaled_dot_product_attention = sdpa


class Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        return x * self.c


def test_mn201_fix_applies_to_blocks_added_in_a_loop():
    """'scale the skip by 1 - 1/L and the branch by 1/L', with the printed numbers."""
    model, x = load("sequential_blocks.py"), torch.randn(4, 32)
    (finding,) = findings(model, x, "MN201")
    a, b = number_after(finding.fix, "skip by"), number_after(finding.fix, "branch by")
    assert "the branch's largest constants" in finding.fix  # which op in f(x) weighs most

    def forward(self, x):
        for block in self.blocks:
            x = a * x + b * block(x)
        return self.head(x)

    type(model).forward = forward
    assert not findings(model, x, "MN201")


def test_mn201_on_scaled_merges_names_the_branch_ops_not_the_multipliers():
    """A model already written 0.875·x + 0.125·f(x) whose branch is too sensitive: the fix names the op of f(x)
    with the largest constant (here a ×8 between GELU and the second Linear) instead of repeating the multipliers it has."""
    model, x = load("sequential_blocks.py"), torch.randn(4, 32)
    depth = len(model.blocks)
    for block in model.blocks:
        block.insert(3, Scale(8.0))  # LayerNorm, Linear, GELU, ×8, Linear

    def forward(self, x):
        for block in self.blocks:
            x = (1 - 1 / depth) * x + (1 / depth) * block(x)
        return self.head(x)

    type(model).forward = forward
    (finding,) = findings(model, x, "MN201")
    assert "are in place" in finding.fix and "scale the skip" not in finding.fix, finding.fix
    assert re.search(r"largest constants \([^)]*mul[^)]* 8\b", finding.fix), finding.fix  # the ×8, first


def test_mn204_fix_names_the_pools_and_applying_it_clears_the_finding():
    model, x = load("cifar_cnn.py"), torch.randn(2, 3, 32, 32)
    (finding,) = findings(model, x, "MN204")
    assert "MaxPool2d 2 ×3 ops = 8" in finding.fix  # three 2×2 max-pools, each sqrt(4) = 2: 2^3 = 8
    (pools,) = [c for c in check_module(model, x, isolated=True).analysis.op_constants() if c.target == "MaxPool2d"]
    assert (pools.count, pools.largest, pools.product) == (3, 2.0, 8.0)  # what the report prints under the figures
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.MaxPool2d):
            model.features[i] = nn.Sequential(layer, Scale(1 / math.sqrt(layer.kernel_size ** 2)))
    assert not findings(model, x, "MN204")


def test_a_checkpoint_audit_does_not_say_at_init(tmp_path):
    """--weights reads trained weights: MN101 and the summary say 'in/of the checkpoint', never 'at init'."""
    from typer.testing import CliRunner

    from modnorm.cli import app
    from tests.test_idioms import IDIOMS

    model = load("recurrent.py")
    with torch.no_grad():
        model.head.weight.mul_(3)  # a trained head, out of band
    checkpoint = tmp_path / "trained.pt"
    torch.save(model.state_dict(), checkpoint)
    result = CliRunner().invoke(app, ["check", str(IDIOMS / "recurrent.py"), "--weights", str(checkpoint),
                                      "--isolated", "--exit-zero", "--color", "never", "-v"])
    assert result.exit_code == 0, result.output
    assert "MN101" in result.stdout and "in the checkpoint" in result.stdout
    assert "at init" not in result.stdout, result.stdout


def test_probe_share_rows_carry_no_ratio_and_the_footer_says_so():
    """The share rows compare two shares (not a bound): no measured/bound figure to read as a violation, and the
    footer that says every measurement holds counts them apart."""
    from typer.testing import CliRunner

    from modnorm.cli import app
    from tests.test_idioms import IDIOMS

    result = CliRunner(env={"NO_COLOR": "1", "COLUMNS": "240"}).invoke(app, ["probe", str(IDIOMS / "raw_lora.py")])
    assert result.exit_code == 0, result.output
    shares = [line for line in result.stdout.splitlines() if "share of the output change" in line]
    assert shares and all("—" in line for line in shares)
    assert f"the {len(shares)} share rows compare mass shares with measured shares, they bound nothing" in \
        result.stdout.replace("\n", " ")


def test_mn204_fix_names_the_residual_merges_before_op_constants():
    """nanoGPT as written: four unscaled merges (design block sensitivity 2.1–23 each) make most of its design
    sensitivity, GELU's 1.13 a little; the fix says so in that order, with the product of the merges' own figures."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("nanogpt", Path(__file__).parents[1] / "fixtures" / "nanogpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model()
    result = check_module(model, module.example_inputs(model), isolated=True)
    (finding,) = [f for f in result.findings if f.code == "MN204"]
    merges = result.analysis.merges
    assert len(merges) == 4 and all(m.design_block_sensitivity > 1.05 for m in merges)
    assert finding.fix.startswith("4 residual merges with design block sensitivity above 1")
    assert math.isclose(number_after(finding.fix, "product"), math.prod(m.design_block_sensitivity for m in merges),
                        rel_tol=5e-3)
    assert finding.fix.index("residual merges") < finding.fix.index("GELU")

"""Every fixture declares the findings it must produce (`Expect: ...` in its docstring); `modnorm check`
produces exactly those — each with its severity, count and source line (FINDINGS below) — and every rule is
documented and demonstrated by some fixture."""

import ast
import functools
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modnorm.cli import app
from modnorm.rules import all_rules
from tests.conftest import FIXTURES

runner = CliRunner()


def declared_codes(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    match = re.search(r"^Expect:\s*(.+)$", doc, re.MULTILINE)
    assert match, f"{path.name} declares no `Expect:` line"
    text = match.group(1).strip()
    return set() if text == "nothing" else {c.strip() for c in text.split(",")}


def declared_args(path):
    """Command-line options a fixture is checked with (`Args: --hidden-mass 200` in its docstring)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    match = re.search(r"^Args:\s*(.+)$", doc, re.MULTILINE)
    return match.group(1).split() if match else []


@functools.lru_cache(maxsize=None)  # one check per fixture for the whole module (the tests only read it)
def check_json(path, *args):
    args = (*declared_args(path), *args)
    result = runner.invoke(app, ["check", str(path), "--output-format", "json", "--exit-zero", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_fixture_reports_exactly_what_it_declares(fixture):
    report = check_json(fixture)
    assert {f["code"] for f in report["findings"]} == declared_codes(fixture)  # the docstring's `Expect:` line


# Per fixture: (code, severity, how many, the source line the findings point at). A line is given by its text
# (stripped), prefixed with `file.py:` when it is not in the fixture itself: a residual finding points at the line
# of the addition, an atom's at the line where the module is called in `forward` (or, for modules built and called
# by torch's own code, like nn.Sequential or nn.TransformerEncoder, at the factory that builds them). Read against
# each fixture's source: one finding per merge, atom or attention op, the stream and network findings once, and
# repeated blocks folded into one finding per role (grouping.py: `blocks.*.mlp`, at its worst instance's line), so
# a merge or atom inside a block repeated N times counts once.
FINDINGS = {
    "bert_encoder": [
        ('MN101', 'warning', 1, 'embeddings = embeddings + self.position_embeddings(position_ids)'),
        ('MN101', 'warning', 2, 'embeddings = self.word_embeddings(input_ids) + self.token_type_embeddi'),
        ('MN101', 'warning', 1, 'hidden_states = self.dropout(self.dense(hidden_states))@@1'),  # not @@2
        ('MN101', 'warning', 1, 'key_layer = self.transpose_for_scores(self.key(hidden_states))'),
        ('MN101', 'warning', 1, 'query_layer = self.transpose_for_scores(self.query(hidden_states))'),
        ('MN101', 'warning', 1, 'return self.activation(self.dense(first_token_tensor))'),
        ('MN101', 'warning', 1, 'return self.intermediate_act_fn(self.dense(hidden_states))'),
        ('MN101', 'warning', 1, 'value_layer = self.transpose_for_scores(self.value(hidden_states))'),
        ('MN201', 'warning', 1, 'return self.LayerNorm(hidden_states + input_tensor)@@1'),
        ('MN203', 'info', 1, 'return self.LayerNorm(hidden_states + input_tensor)@@1'),
        ('MN204', 'info', 1, 'embeddings = self.word_embeddings(input_ids) + self.token_type_embeddi'),
        ('MN301', 'warning', 1, 'context_layer = torch.matmul(attention_probs, value_layer)'),
        ('MN501', 'warning', 1, 'query_layer = self.transpose_for_scores(self.query(hidden_states))'),
        ('MN601', 'info', 1, 'embeddings = self.LayerNorm(embeddings)'),
        ('MN601', 'info', 1, 'return self.LayerNorm(hidden_states + input_tensor)@@1'),
        ('MN601', 'info', 1, 'return self.LayerNorm(hidden_states + input_tensor)@@2'),
        ('MN602', 'info', 1, 'context_layer = torch.matmul(attention_probs, value_layer)'),
        ('MN602', 'info', 1, 'return self.intermediate_act_fn(self.dense(hidden_states))'),
    ],
    "checkpoint_gains": [
        ('MN103', 'warning', 1, 'x = (1 - 1 / self.blocks) * x + (1 / self.blocks) * torch.tanh(fc(norm'),
        ('MN201', 'info', 1, 'x = (1 - 1 / self.blocks) * x + (1 / self.blocks) * torch.tanh(fc(norm'),
        ('MN601', 'info', 1, 'x = (1 - 1 / self.blocks) * x + (1 / self.blocks) * torch.tanh(fc(norm'),
    ],
    "clean_mlp": [
    ],
    "switch_moe": [
        ('MN101', 'warning', 1, 'probs = F.softmax(self.router(tokens), dim=-1)'),
        ('MN101', 'warning', 1, 'expert = self.down[e](F.relu(self.up[e](tokens)))'),
        ('MN204', 'error', 1, 'probs = F.softmax(self.router(tokens), dim=-1)'),
        ('MN602', 'info', 1, 'expert = self.down[e](F.relu(self.up[e](tokens)))'),
        ('MN901', 'warning', 1, 'prob, chosen = torch.topk(probs, 1, dim=-1)'),
        ('MN902', 'info', 8, 'out = out + routed[:, e:e + 1] * prob * expert'),
    ],
    "topk_moe": [
        ('MN101', 'warning', 1, 'return self.down(F.gelu(self.up(x)))'),
        ('MN101', 'warning', 1, 'probs = F.softmax(self.router(x), dim=-1)'),
        ('MN201', 'warning', 1, 'return x + self.moe(self.norm(x))'),
        ('MN203', 'warning', 1, 'return x + self.moe(self.norm(x))'),
        ('MN204', 'error', 1, 'return x + self.moe(self.norm(x))'),
        ('MN601', 'info', 1, 'return x + self.moe(self.norm(x))'),
        ('MN602', 'info', 1, 'return self.down(F.gelu(self.up(x)))'),
        ('MN901', 'warning', 1, 'weights, chosen = torch.topk(probs, self.k, dim=-1)'),
        ('MN901', 'warning', 1, 'weights = weights / weights.sum(dim=-1, keepdim=True)'),
        ('MN902', 'info', 4, 'out = out + gate * expert(x)'),
    ],
    "data_dependent": [
        ('MN904', 'warning', 1, 'if h.abs().amax() > self.limit:  # data-dependent: never true for tanh'),
    ],
    "deep_mlp": [
        ('MN101', 'warning', 1, 'def build_model(width=64, depth=8, classes=10):'),
        ('MN602', 'info', 1, 'def build_model(width=64, depth=8, classes=10):'),
    ],
    "llama_block": [
        ('MN101', 'warning', 1, 'return self.down(F.silu(self.gate(x)) * self.up(x))'),
        ('MN101', 'warning', 1, 'x = self.embed(tokens)'),
        ('MN201', 'warning', 1, 'x = x + self.attn(self.attn_norm(x))'),
        ('MN203', 'info', 1, 'return x + self.ffn(self.ffn_norm(x))'),
        ('MN204', 'error', 1, 'x = self.embed(tokens)'),
        ('MN301', 'warning', 1, 'y = F.scaled_dot_product_attention(q, k, v, is_causal=True)'),
        ('MN501', 'info', 1, 'q = self.wq(x).view(B, T, self.h, self.d).transpose(1, 2)'),
        ('MN601', 'info', 3, 'return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * s'),
        ('MN602', 'info', 1, 'y = F.scaled_dot_product_attention(q, k, v, is_causal=True)'),
        ('MN902', 'info', 1, 'return self.down(F.silu(self.gate(x)) * self.up(x))'),
    ],
    "mlp_mixer": [
        ('MN101', 'error', 1, 'x = self.stem(x).flatten(2).transpose(1, 2)  # (B, N, D)'),
        ('MN101', 'warning', 3, 'return self.fc2(self.act(self.fc1(x)))'),  # token-mixing fc1 and fc2 as TokenMixing atoms
        ('MN101', 'warning', 1, 'return self.head(x)'),
        ('MN201', 'warning', 1, 'x = x + self.token_mixing(self.norm1(x).transpose(1, 2)).transpose(1, '),
        ('MN203', 'info', 1, 'x = x + self.channel_mixing(self.norm2(x))'),
        ('MN204', 'info', 1, 'x = self.stem(x).flatten(2).transpose(1, 2)  # (B, N, D)'),
        ('MN601', 'info', 1, 'x = self.norm(x)'),
        ('MN601', 'info', 1, 'x = x + self.channel_mixing(self.norm2(x))'),
        ('MN601', 'info', 1, 'x = x + self.token_mixing(self.norm1(x).transpose(1, 2)).transpose(1, '),
        ('MN602', 'info', 1, 'return self.fc2(self.act(self.fc1(x)))'),
    ],
    "modula_gpt": [
        ('MN601', 'info', 1, 'return self.fc2(scaled_gelu(self.fc1(layer_norm(x))))'),
        ('MN601', 'info', 1, 'return self.head(layer_norm(x))'),
        ('MN601', 'info', 1, 'x = (1 - self.b) * x + self.b * self.attn(layer_norm(x))'),
        ('MN602', 'info', 1, 'return self.fc2(scaled_gelu(self.fc1(layer_norm(x))))'),
    ],
    "modula_rescnn": [
        ('MN601', 'info', 1, 'x = mean_subtract(torch.abs(conv(rms_divide(x, DIMS))), DIMS)'),
        ('MN602', 'info', 1, 'x = mean_subtract(torch.abs(conv(rms_divide(x, DIMS))), DIMS)'),
    ],
    "modula_resmlp": [
        ('MN601', 'info', 1, 'return self.out(rms_divide(x))'),
        ('MN601', 'info', 1, 'x = mean_subtract(torch.abs(layer(rms_divide(x))))'),
    ],
    "nanogpt": [
        ('MN101', 'warning', 1, 'q, k, v = self.c_attn(x).split(self.n_embd, dim=2)'),
        ('MN101', 'warning', 1, 'return self.c_proj(self.gelu(self.c_fc(x)))'),
        ('MN101', 'warning', 1, 'return self.c_proj(y)'),
        ('MN101', 'warning', 2, 'x = self.transformer.wte(idx) + self.transformer.wpe(pos)'),
        ('MN201', 'warning', 1, 'x = x + self.attn(self.ln_1(x))'),
        ('MN203', 'info', 1, 'x = x + self.mlp(self.ln_2(x))'),
        ('MN204', 'info', 1, 'x = self.transformer.wte(idx) + self.transformer.wpe(pos)'),
        ('MN301', 'warning', 1, 'y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)'),
        ('MN501', 'info', 1, 'q, k, v = self.c_attn(x).split(self.n_embd, dim=2)'),
        ('MN601', 'info', 1, 'logits = self.lm_head(self.transformer.ln_f(x))'),
        ('MN601', 'info', 1, 'x = x + self.attn(self.ln_1(x))'),
        ('MN601', 'info', 1, 'x = x + self.mlp(self.ln_2(x))'),
        ('MN602', 'info', 1, 'return self.c_proj(self.gelu(self.c_fc(x)))'),
        ('MN903', 'info', 1, 'x = self.transformer.wte(idx) + self.transformer.wpe(pos)'),
    ],
    "resnet_bn": [
        ('MN101', 'warning', 1, 'out = F.relu(self.bn1(self.conv1(x)))'),
        ('MN101', 'warning', 1, 'return F.relu(self.bn2(self.conv2(out)) + x)'),
        ('MN101', 'warning', 1, 'return self.fc(torch.flatten(self.pool(x), 1))'),
        ('MN101', 'warning', 1, 'x = self.layers(F.relu(self.bn(self.stem(x))))'),
        ('MN201', 'warning', 1, 'return F.relu(self.bn2(self.conv2(out)) + x)'),
        ('MN203', 'info', 1, 'return F.relu(self.bn2(self.conv2(out)) + x)'),
        ('MN204', 'info', 1, 'x = self.layers(F.relu(self.bn(self.stem(x))))'),
        ('MN602', 'info', 1, 'x = self.layers(F.relu(self.bn(self.stem(x))))'),
    ],
    "sqrt_depth_resmlp": [
        ('MN202', 'error', 1, 'x = x + block(x) / math.sqrt(self.depth)'),  # blocks.*: one per role
        ('MN203', 'info', 1, 'x = x + block(x) / math.sqrt(self.depth)'),
        ('MN204', 'info', 1, 'x = self.inp(x)'),
        ('MN501', 'info', 1, 'return torch.tanh(self.fc(rms_divide(x)))'),
        ('MN601', 'info', 1, 'return torch.tanh(self.fc(rms_divide(x)))'),
    ],
    "stated_floor_broken": [
        ('MN603', 'warning', 1, 'return self.readout(self.norm(x))'),
    ],
    "starved_readout": [
        ('MN503', 'warning', 1, 'return self.readout(x)'),
        ('MN503', 'warning', 1, 'x = torch.tanh(self.inp(x))'),
    ],
    "suppressed_head": [
        ('MN001', 'warning', 1, 'h = torch.tanh(self.body(x))  # modnorm: ignore[MN301]'),
    ],
    "sweep_modula_gpt": [
        ('MN601', 'info', 3, '_modula_atoms.py:return x / x.square().mean(dim, keepdim=True).sqrt()'),
        ('MN602', 'info', 1, '_modula_atoms.py:return math.sqrt(2) * F.gelu(x)'),
    ],
    "sweep_nanogpt": [
        ('MN101', 'warning', 1, 'nanogpt.py:q, k, v = self.c_attn(x).split(self.n_embd, dim=2)'),
        ('MN101', 'warning', 2, 'nanogpt.py:return self.c_proj(self.gelu(self.c_fc(x)))'),
        ('MN101', 'warning', 1, 'nanogpt.py:return self.c_proj(y)'),
        ('MN101', 'warning', 2, 'nanogpt.py:x = self.transformer.wte(idx) + self.transformer.wpe(pos)'),
        ('MN201', 'warning', 1, 'nanogpt.py:x = x + self.attn(self.ln_1(x))'),
        ('MN203', 'info', 1, 'nanogpt.py:x = x + self.mlp(self.ln_2(x))'),
        ('MN204', 'info', 1, 'nanogpt.py:x = self.transformer.wte(idx) + self.transformer.wpe(pos)'),
        ('MN301', 'warning', 1, 'nanogpt.py:y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)'),
        ('MN401', 'warning', 1, 'from nanogpt import build_model'),  # the network's drift: where the entry is bound
        ('MN401', 'warning', 1, 'nanogpt.py:logits = self.lm_head(self.transformer.ln_f(x))'),
        ('MN401', 'warning', 1, 'nanogpt.py:q, k, v = self.c_attn(x).split(self.n_embd, dim=2)'),
        ('MN401', 'warning', 2, 'nanogpt.py:return self.c_proj(self.gelu(self.c_fc(x)))'),
        ('MN401', 'warning', 1, 'nanogpt.py:return self.c_proj(y)'),
        ('MN401', 'warning', 2, 'nanogpt.py:x = self.transformer.wte(idx) + self.transformer.wpe(pos)'),
        ('MN402', 'warning', 1, 'nanogpt.py:x = self.transformer.wte(idx) + self.transformer.wpe(pos)'),
        ('MN403', 'warning', 1, 'nanogpt.py:y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)'),
        ('MN501', 'info', 1, 'nanogpt.py:q, k, v = self.c_attn(x).split(self.n_embd, dim=2)'),
        ('MN601', 'info', 1, 'nanogpt.py:logits = self.lm_head(self.transformer.ln_f(x))'),
        ('MN601', 'info', 1, 'nanogpt.py:x = x + self.attn(self.ln_1(x))'),
        ('MN601', 'info', 1, 'nanogpt.py:x = x + self.mlp(self.ln_2(x))'),
        ('MN602', 'info', 1, 'nanogpt.py:return self.c_proj(self.gelu(self.c_fc(x)))'),
        ('MN602', 'info', 1, 'nanogpt.py:y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)'),
        ('MN903', 'info', 1, 'nanogpt.py:x = self.transformer.wte(idx) + self.transformer.wpe(pos)'),
    ],
    "tied_lm": [
        ('MN101', 'warning', 1, 'return x + self.proj(self.act(self.fc(self.norm(x))))'),
        ('MN101', 'warning', 1, 'x = self.embed(tokens)'),
        ('MN201', 'warning', 1, 'return x + self.proj(self.act(self.fc(self.norm(x))))'),
        ('MN601', 'info', 1, 'return self.head(self.norm(x))'),
        ('MN601', 'info', 1, 'return x + self.proj(self.act(self.fc(self.norm(x))))'),
        ('MN602', 'info', 1, 'return x + self.proj(self.act(self.fc(self.norm(x))))'),
        ('MN903', 'info', 1, 'x = self.embed(tokens)'),
    ],
    "torch_transformer": [
        ('MN101', 'warning', 2, 'def build_model(d_in=16, width=32, heads=4, layers=2, d_out=4):'),
        ('MN201', 'warning', 1, 'def build_model(d_in=16, width=32, heads=4, layers=2, d_out=4):'),
        ('MN203', 'info', 1, 'def build_model(d_in=16, width=32, heads=4, layers=2, d_out=4):'),
        ('MN204', 'info', 1, 'def build_model(d_in=16, width=32, heads=4, layers=2, d_out=4):'),
        ('MN301', 'warning', 1, 'def build_model(d_in=16, width=32, heads=4, layers=2, d_out=4):'),
        ('MN501', 'info', 1, 'def build_model(d_in=16, width=32, heads=4, layers=2, d_out=4):'),
        ('MN601', 'info', 2, 'def build_model(d_in=16, width=32, heads=4, layers=2, d_out=4):'),
        ('MN602', 'info', 2, 'def build_model(d_in=16, width=32, heads=4, layers=2, d_out=4):'),
    ],
    "uncertified_ops": [
        ('MN901', 'error', 1, 'h = torch.cumprod(torch.tanh(self.fc1(x)), dim=-1)'),
        ('MN901', 'warning', 1, 'h = h / (1 + h.abs().sum(-1, keepdim=True))'),
    ],
    "vit": [
        ('MN101', 'error', 1, 'return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)'),
        ('MN101', 'warning', 1, 'return self.fc2(self.act(self.fc1(x)))'),
        ('MN101', 'warning', 1, 'return self.head(x[:, 0])'),
        ('MN201', 'warning', 1, 'x = x + self.attn(self.norm1(x))'),
        ('MN203', 'info', 1, 'x = x + self.mlp(self.norm2(x))'),
        ('MN204', 'info', 1, 'return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)'),
        ('MN301', 'warning', 1, 'x = F.scaled_dot_product_attention(q, k, v)'),
        ('MN501', 'info', 1, 'qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).perm'),
        ('MN601', 'info', 1, 'x = self.norm(x)'),
        ('MN601', 'info', 1, 'x = x + self.attn(self.norm1(x))'),
        ('MN601', 'info', 1, 'x = x + self.mlp(self.norm2(x))'),
        ('MN602', 'info', 1, 'return self.fc2(self.act(self.fc1(x)))'),
        ('MN602', 'info', 1, 'x = F.scaled_dot_product_attention(q, k, v)'),
    ],
    "convnext_block": [
        ('MN601', 'info', 1, 'x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)'),
        ('MN101', 'error', 1, 'x = self.dwconv(x).permute(0, 2, 3, 1)'),
        ('MN101', 'warning', 1, 'x = self.pwconv2(F.gelu(self.pwconv1(self.norm(x))))'),
        ('MN601', 'info', 1, 'x = self.pwconv2(F.gelu(self.pwconv1(self.norm(x))))'),
        ('MN602', 'info', 1, 'x = self.pwconv2(F.gelu(self.pwconv1(self.norm(x))))'),
        ('MN101', 'warning', 1, 'x = self.blocks(self.stem_norm(self.stem(x)))'),
        ('MN103', 'warning', 1, 'x = self.blocks(self.stem_norm(self.stem(x)))'),
        ('MN501', 'info', 1, 'x = self.blocks(self.stem_norm(self.stem(x)))'),
        ('MN101', 'warning', 1, 'return self.head(self.head_norm(x.mean((2, 3))))'),
        ('MN601', 'info', 1, 'return self.head(self.head_norm(x.mean((2, 3))))'),
    ],
    "efficientnet_block": [
        ('MN101', 'warning', 1, 's = self.conv_expand(F.silu(self.conv_reduce(s)))'),
        ('MN101', 'warning', 1, 'h = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))'),
        ('MN501', 'warning', 1, 'h = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))'),
        ('MN101', 'warning', 1, 'h = self.bn3(self.conv_pwl(self.se(h)))'),
        ('MN201', 'warning', 1, 'return x + drop_path(h, self.drop, self.training)'),
        ('MN101', 'warning', 1, 'x = self.blocks(self.bn_stem(self.conv_stem(x)))'),
        ('MN204', 'info', 1, 'x = self.blocks(self.bn_stem(self.conv_stem(x)))'),
    ],
    "swin_block": [
        ('MN501', 'info', 1, 'q, k, v = self.qkv(x).reshape(x.shape[0], w * w, 3, heads, C // heads).permute(2, 0, 3, 1, 4)'),
        ('MN301', 'warning', 1, 'x = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(x.shape[0], w * w, C)'),
        ('MN602', 'info', 1, 'x = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(x.shape[0], w * w, C)'),
        ('MN201', 'warning', 1, 'x = x + self.attn(self.norm1(x))'),
        ('MN601', 'info', 1, 'x = x + self.attn(self.norm1(x))'),
        ('MN101', 'warning', 1, 'return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))'),
        ('MN203', 'info', 1, 'return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))'),
        ('MN601', 'info', 1, 'return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))'),
        ('MN602', 'info', 1, 'return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))'),
        ('MN101', 'warning', 1, 'x = self.norm0(self.patch(x).permute(0, 2, 3, 1))'),
        ('MN204', 'error', 1, 'x = self.norm0(self.patch(x).permute(0, 2, 3, 1))'),
        ('MN601', 'info', 1, 'x = self.norm0(self.patch(x).permute(0, 2, 3, 1))'),
        ('MN601', 'info', 1, 'x = self.norm(self.blocks(x))'),
        ('MN101', 'warning', 1, 'return self.head(x.mean((1, 2)))'),
    ],
    "wide_classifier": [
        ('MN101', 'info', 1, 'def build_model(d_in=256, width=1024, classes=10):'),
        ('MN102', 'warning', 1, 'def build_model(d_in=256, width=1024, classes=10):'),
    ],
}
# A known bug (tests stay honest): a network-level MN401 finding of an imported factory names the swept file with
# the factory's line in its own file (sweep_nanogpt.py:97, a file of 8 lines) instead of nanogpt.py:97.
KNOWN_WRONG: dict[str, str] = {}


def line_of(fixture: Path, where: str) -> tuple[str, int]:
    """(file name, line number) of the one line whose stripped text starts with `where` (`file.py:text` for a line
    of another file)."""
    name, text = (where.split(":", 1) if re.match(r"^[\w.]+\.py:", where) else (fixture.name, where))
    text, _, occurrence = text.partition("@@")  # `text@@2`: the second of several lines that read the same
    source = (fixture.parent / name).read_text().split("\n")
    lines = [i for i, line in enumerate(source, 1) if line.strip().startswith(text)]
    assert len(lines) == 1 or occurrence, f"{name}: {len(lines)} lines read {text!r}"
    return name, lines[int(occurrence or 1) - 1]


@pytest.mark.parametrize("fixture", [
    pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=KNOWN_WRONG[f.stem])) if f.stem in KNOWN_WRONG else f
    for f in FIXTURES], ids=lambda p: p.stem)
def test_fixture_findings_have_their_severity_count_and_line(fixture):
    report = check_json(fixture)
    got = Counter((f["code"], f["severity"], Path(f["file"]).name if f["file"] else None, f["line"])
                  for f in report["findings"])
    expected = Counter()
    for code, severity, count, where in FINDINGS[fixture.stem]:
        expected[(code, severity, *line_of(fixture, where))] += count
    assert got == expected


def test_every_fixture_has_its_findings_listed():
    assert sorted(FINDINGS) == sorted(f.stem for f in FIXTURES)
    for fixture in FIXTURES:
        assert {code for code, *_ in FINDINGS[fixture.stem]} == declared_codes(fixture), fixture.stem


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.stem)
def test_fixture_has_no_unknown_op_unless_it_demonstrates_one(fixture):
    report = check_json(fixture)
    if "MN901" not in declared_codes(fixture):
        assert report["network"]["unknown_ops"] == []


def test_every_rule_is_documented_and_demonstrated():
    demonstrated = set().union(*(declared_codes(f) for f in FIXTURES))
    for code, rule in all_rules().items():
        for section in ("## What it does", "## Why is this bad?", "## Example", "## Use instead", "## Options",
                        "## References"):
            assert section in (rule.__doc__ or ""), f"{code} lacks {section}"
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", rule.name), code
        assert code in demonstrated, f"no fixture triggers {code}"


def test_clean_designs_have_no_warnings_or_errors():
    for name in ("modula_gpt", "modula_resmlp", "modula_rescnn", "clean_mlp"):
        report = check_json(next(f for f in FIXTURES if f.stem == name))
        assert [f for f in report["findings"] if f["severity"] != "info"] == [], name


def test_readme_rules_table_is_generated_from_the_rule_docs():
    from modnorm.rules import rules_markdown
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- rules:start -->")[1].split("<!-- rules:end -->")[0].strip()
    assert section == rules_markdown()

"""Coverage of transformers architectures: each built from a tiny config on the meta device with the config's own
defaults (KV cache on) and the init laws recorded around the build (`modnorm.initlaw.record_init`, as
`modnorm.analyze`'s docstring asks for a meta build), read through the library API `modnorm.analyze`, and held to what "read in full" means:

- the graph route (fx with values, or torch.export), not the op log or the module hierarchy;
- no unknown op;
- every figure finite (network sensitivity and mass, each atom's sensitivity, S_down and target);
- the expected residual merges, derived from the config (pre-norm blocks: two merges per layer);
- the expected atom count, derived from the config (layers x Linears per layer + embeddings + head).

The expected counts are written next to each case from the architecture's definition in transformers, never read
back from modnorm. Architectures not read in full yet are `xfail(strict=True)` with the construct that stops them
and where, so the matrix is honest: when one starts passing, the strict xfail fails and the entry must be promoted.

`python -m pytest tests/test_hf_coverage.py -s` prints the matrix; `MODNORM_UPDATE_README=1` rewrites README's
table of architectures read (between the `architectures-read` markers) from it.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

transformers = pytest.importorskip("transformers")

import modnorm  # noqa: E402
import modnorm.initlaw  # noqa: E402

L = 2  # layers of every tiny config
D, HEADS, KV, FF, VOCAB, CTX = 32, 4, 2, 64, 100, 64
SEQ = 8
MATRIX_KINDS = {"Linear", "Conv1d", "Conv2d", "Embedding", "Batched"}  # Batched: a stack of experts


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Any]  # the model, on meta
    inputs: Callable[[Any], tuple]  # example inputs for the built model
    atoms: int  # Linear/Conv/Embedding atoms, derived from the config (see each case)
    merges: int  # residual merges, derived from the config
    family: str
    xfail: str | None = None  # construct that stops a full read, and where
    notes: dict[str, Any] = field(default_factory=dict)


def _on_meta(config_class: Any, model_class: Any, **fields: Any) -> Callable[[], Any]:
    def build() -> Any:
        config = config_class(**fields)
        with torch.device("meta"), modnorm.initlaw.record_init() as recorder:
            model = model_class(config).eval()
        return _with_laws(model, recorder)
    return build


def _with_laws(model: Any, recorder: Any) -> Any:
    """The init laws recorded around the meta build, kept for `modnorm.analyze(init_laws=...)` as its docstring
    asks of a model built on meta (they predict the norms and the constants written in the constructor)."""
    model._modnorm_laws = modnorm.initlaw.laws_of(model, recorder)
    return model


def ids(model: Any) -> tuple:
    return (torch.zeros(1, SEQ, dtype=torch.long),)


def seq2seq(model: Any) -> tuple:
    return (torch.zeros(1, SEQ, dtype=torch.long), torch.ones(1, SEQ, dtype=torch.long),
            torch.zeros(1, 4, dtype=torch.long))


DECODER = dict(hidden_size=D, num_hidden_layers=L, num_attention_heads=HEADS, num_key_value_heads=KV,
               intermediate_size=FF, vocab_size=VOCAB, max_position_embeddings=CTX)
ENCODER = dict(hidden_size=D, num_hidden_layers=L, num_attention_heads=HEADS, intermediate_size=FF,
               vocab_size=VOCAB, max_position_embeddings=CTX)
T = transformers

CASES = [
    # GPT-2: c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj per layer; wte, wpe; lm_head (tied to wte).
    Case("gpt2", _on_meta(T.GPT2Config, T.GPT2LMHeadModel, n_embd=D, n_layer=L, n_head=HEADS, n_positions=CTX,
                          vocab_size=VOCAB), ids, atoms=4 * L + 2 + 1, merges=2 * L, family="decoder"),
    # GPT-NeoX: query_key_value, dense, dense_h_to_4h, dense_4h_to_h; embed_in; embed_out. Parallel residual
    # (the default): `mlp_output + attn_output + residual`, one branch (attn + mlp) merged once per layer.
    Case("gpt_neox", _on_meta(T.GPTNeoXConfig, T.GPTNeoXForCausalLM, **ENCODER), ids,
         atoms=4 * L + 1 + 1, merges=L, family="decoder"),
    # OPT: q, k, v, out_proj, fc1, fc2; embed_tokens, embed_positions; lm_head (tied).
    Case("opt", _on_meta(T.OPTConfig, T.OPTForCausalLM, hidden_size=D, num_hidden_layers=L, num_attention_heads=HEADS,
                         ffn_dim=FF, vocab_size=VOCAB, max_position_embeddings=CTX, word_embed_proj_dim=D), ids,
         atoms=6 * L + 2 + 1, merges=2 * L, family="decoder"),
    # GPTBigCode (StarCoder 1): c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj; wte, wpe; lm_head (tied).
    Case("gpt_bigcode", _on_meta(T.GPTBigCodeConfig, T.GPTBigCodeForCausalLM, n_embd=D, n_layer=L, n_head=HEADS,
                                 n_positions=CTX, vocab_size=VOCAB), ids, atoms=4 * L + 2 + 1, merges=2 * L,
         family="decoder"),
    # GPT-J: q, k, v, out_proj, fc_in, fc_out; wte; lm_head. Parallel block `attn + mlp + residual`: one merge.
    Case("gptj", _on_meta(T.GPTJConfig, T.GPTJForCausalLM, n_embd=D, n_layer=L, n_head=HEADS, n_positions=CTX,
                          rotary_dim=4, vocab_size=VOCAB), ids, atoms=6 * L + 1 + 1, merges=L, family="decoder"),
    # BLOOM: query_key_value, dense, dense_h_to_4h, dense_4h_to_h; word_embeddings; lm_head (tied).
    Case("bloom", _on_meta(T.BloomConfig, T.BloomForCausalLM, hidden_size=D, n_layer=L, n_head=HEADS,
                           vocab_size=VOCAB), ids, atoms=4 * L + 1 + 1, merges=2 * L, family="decoder"),
    # Falcon: query_key_value, dense, dense_h_to_4h, dense_4h_to_h (FalconLinear: `input @ self.weight.T`);
    # word_embeddings; lm_head. Parallel attention is the default (parallel_attn=True): `mlp_output +=
    # attention_output; output = mlp_output + residual`, one branch merged once per layer.
    Case("falcon", _on_meta(T.FalconConfig, T.FalconForCausalLM, hidden_size=D, num_hidden_layers=L,
                            num_attention_heads=HEADS, vocab_size=VOCAB), ids,
         atoms=4 * L + 1 + 1, merges=L, family="decoder"),
    # Llama-style (q, k, v, o, gate, up, down per layer; embed_tokens; lm_head).
    *[Case(n, _on_meta(c, m, **DECODER), ids, atoms=7 * L + 1 + 1, merges=2 * L, family="decoder")
      for n, c, m in [("llama", T.LlamaConfig, T.LlamaForCausalLM), ("mistral", T.MistralConfig, T.MistralForCausalLM),
                      ("qwen2", T.Qwen2Config, T.Qwen2ForCausalLM), ("qwen3", T.Qwen3Config, T.Qwen3ForCausalLM),
                      ("gemma", T.GemmaConfig, T.GemmaForCausalLM), ("gemma2", T.Gemma2Config, T.Gemma2ForCausalLM),
                      ("olmo", T.OlmoConfig, T.OlmoForCausalLM)]],
    # Mixtral (transformers 5.x): q, k, v, o; router gate (a Linear); the experts are two 3-D stacks,
    # MixtralExperts.gate_up_proj (E, 2 * I, H) and down_proj (E, H, I), each one Batched atom of E experts;
    # embed_tokens; lm_head.
    Case("mixtral", _on_meta(T.MixtralConfig, T.MixtralForCausalLM, **DECODER, num_local_experts=4,
                             num_experts_per_tok=2), ids, atoms=(4 + 1 + 2) * L + 1 + 1, merges=2 * L,
         family="decoder (MoE)"),
    # Qwen2-MoE: q, k, v, o; router gate; experts gate_up_proj and down_proj stacks (2); shared expert gate, up,
    # down (3) and its scalar gate shared_expert_gate (1); embed_tokens; lm_head.
    Case("qwen2_moe", _on_meta(T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM, **DECODER, num_experts=4,
                               num_experts_per_tok=2, moe_intermediate_size=FF, shared_expert_intermediate_size=FF),
         ids, atoms=(4 + 1 + 2 + 3 + 1) * L + 1 + 1, merges=2 * L, family="decoder (MoE)"),
    # Phi: q, k, v, dense, fc1, fc2; embed_tokens; lm_head. Parallel block `attn + mlp + residual`: one merge.
    Case("phi", _on_meta(T.PhiConfig, T.PhiForCausalLM, **DECODER), ids, atoms=6 * L + 1 + 1, merges=L,
         family="decoder"),
    # Phi-3: qkv_proj, o_proj, gate_up_proj, down_proj; embed_tokens; lm_head.
    Case("phi3", _on_meta(T.Phi3Config, T.Phi3ForCausalLM, **DECODER, pad_token_id=0), ids, atoms=4 * L + 1 + 1, merges=2 * L,
         family="decoder"),
    # StarCoder2: q, k, v, o, c_fc, c_proj; embed_tokens; lm_head.
    Case("starcoder2", _on_meta(T.Starcoder2Config, T.Starcoder2ForCausalLM, **DECODER), ids,
         atoms=6 * L + 1 + 1, merges=2 * L, family="decoder"),
    # Mamba: in_proj, conv1d, x_proj, dt_proj, out_proj; embeddings; lm_head (tied). One merge per layer.
    Case("mamba", _on_meta(T.MambaConfig, T.MambaForCausalLM, hidden_size=D, num_hidden_layers=L,
                           vocab_size=VOCAB, state_size=4, expand=2), ids, atoms=5 * L + 1 + 1, merges=L,
         family="decoder (SSM)"),
    # BERT / RoBERTa / ELECTRA: q, k, v, attention.output.dense, intermediate.dense, output.dense;
    # word, position, token_type embeddings; BERT and RoBERTa add a pooler dense. Post-norm: two merges per layer.
    Case("bert", _on_meta(T.BertConfig, T.BertModel, **ENCODER), ids, atoms=6 * L + 3 + 1, merges=2 * L,
         family="encoder"),
    Case("roberta", _on_meta(T.RobertaConfig, T.RobertaModel, **ENCODER, pad_token_id=1), ids,
         atoms=6 * L + 3 + 1, merges=2 * L, family="encoder"),
    Case("electra", _on_meta(T.ElectraConfig, T.ElectraModel, **ENCODER, embedding_size=D), ids,
         atoms=6 * L + 3, merges=2 * L, family="encoder"),
    # DistilBERT: q_lin, k_lin, v_lin, out_lin, lin1, lin2; word and position embeddings.
    Case("distilbert", _on_meta(T.DistilBertConfig, T.DistilBertModel, dim=D, n_layers=L, n_heads=HEADS,
                                hidden_dim=FF, vocab_size=VOCAB, max_position_embeddings=CTX), ids,
         atoms=6 * L + 2, merges=2 * L, family="encoder"),
    # DeBERTa-v2 (defaults: no relative attention, position_biased_input, type_vocab_size 0): q, k, v, output,
    # intermediate, output; word and position embeddings.
    Case("deberta_v2", _on_meta(T.DebertaV2Config, T.DebertaV2Model, **ENCODER), ids, atoms=6 * L + 2,
         merges=2 * L, family="encoder"),
    # T5: encoder layer q, k, v, o, wi, wo; decoder layer self q, k, v, o, cross q, k, v, o, wi, wo; shared
    # embedding, looked up once by each stack (2 uses of one tensor); relative_attention_bias of each stack's first
    # layer; lm_head. Encoder 2 merges/layer, decoder 3.
    Case("t5", _on_meta(T.T5Config, T.T5ForConditionalGeneration, d_model=D, num_layers=L, num_heads=HEADS, d_ff=FF,
                        d_kv=D // HEADS, vocab_size=VOCAB), seq2seq, atoms=6 * L + 10 * L + 2 + 2 + 1,
         merges=2 * L + 3 * L, family="encoder-decoder"),
    # BART: encoder q, k, v, out, fc1, fc2; decoder 4 + 4 + 2; shared embedding looked up by each stack (2 uses),
    # 2 learned position embeddings; lm_head (tied to shared).
    Case("bart", _on_meta(T.BartConfig, T.BartForConditionalGeneration, d_model=D, encoder_layers=L,
                          decoder_layers=L, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                          encoder_ffn_dim=FF, decoder_ffn_dim=FF, vocab_size=VOCAB, max_position_embeddings=CTX),
         seq2seq, atoms=6 * L + 10 * L + 2 + 2 + 1, merges=2 * L + 3 * L, family="encoder-decoder"),
    # Whisper: conv1, conv2; encoder embed_positions; encoder 6/layer; decoder 10/layer; decoder embed_tokens,
    # embed_positions; proj_out (tied to embed_tokens).
    Case("whisper", _on_meta(T.WhisperConfig, T.WhisperForConditionalGeneration, d_model=D, encoder_layers=L,
                             decoder_layers=L, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
                             encoder_ffn_dim=FF, decoder_ffn_dim=FF, vocab_size=VOCAB, num_mel_bins=8,
                             max_source_positions=16, max_target_positions=CTX, pad_token_id=0,
                             bos_token_id=0, eos_token_id=0, decoder_start_token_id=0),
         lambda m: (torch.zeros(1, 8, 32), None, torch.zeros(1, 4, dtype=torch.long)),
         atoms=2 + 1 + 6 * L + 10 * L + 2 + 1, merges=2 * L + 3 * L, family="encoder-decoder"),
    # ViT: patch projection conv; q, k, v, attention.output.dense, intermediate.dense, output.dense; pooler.
    Case("vit", _on_meta(T.ViTConfig, T.ViTModel, hidden_size=D, num_hidden_layers=L, num_attention_heads=HEADS,
                         intermediate_size=FF, image_size=16, patch_size=4), lambda m: (torch.zeros(1, 3, 16, 16),),
         atoms=1 + 6 * L + 1, merges=2 * L, family="vision"),
    # CLIP: text token and position embeddings, 6/layer; vision patch conv, position embedding, 6/layer;
    # text_projection, visual_projection.
    Case("clip", lambda: _clip(), lambda m: (torch.zeros(1, SEQ, dtype=torch.long), torch.zeros(1, 3, 16, 16)),
         atoms=2 + 6 * L + 2 + 6 * L + 2, merges=4 * L, family="multimodal"),
    # wav2vec2: 2 feature-extractor convs; feature_projection; positional conv; 6/layer. Merges: the positional
    # conv added to its input (`hidden + pos_conv(hidden)`), then 2 per post-norm layer.
    Case("wav2vec2", _on_meta(T.Wav2Vec2Config, T.Wav2Vec2Model, hidden_size=D, num_hidden_layers=L,
                              num_attention_heads=HEADS, intermediate_size=FF, conv_dim=(16, 16), conv_kernel=(10, 3),
                              conv_stride=(5, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                              vocab_size=VOCAB), lambda m: (torch.zeros(1, 400),),
         atoms=2 + 1 + 1 + 6 * L, merges=1 + 2 * L, family="audio"),
]


def _clip() -> Any:
    text = dict(hidden_size=D, num_hidden_layers=L, num_attention_heads=HEADS, intermediate_size=FF,
                vocab_size=VOCAB, max_position_embeddings=CTX)
    vision = dict(hidden_size=D, num_hidden_layers=L, num_attention_heads=HEADS, intermediate_size=FF,
                  image_size=16, patch_size=4)
    config = T.CLIPConfig(text_config=text, vision_config=vision, projection_dim=D)
    with torch.device("meta"), modnorm.initlaw.record_init() as recorder:
        model = T.CLIPModel(config).eval()
    return _with_laws(model, recorder)


@dataclass
class Reading:
    """What modnorm read of one architecture, or why it could not build or trace it."""

    route: str = "-"
    unknown: tuple[str, ...] = ()
    atoms: int = -1
    merges: int = -1
    nonfinite: tuple[str, ...] = ()
    uncertified: tuple[str, ...] = ()
    error: str = ""

    def problems(self, case: Case) -> list[str]:
        if self.error:
            return [self.error]
        found = []
        if self.route not in ("fx_values", "export"):
            found.append(f"route {self.route}")
        if self.unknown:
            found.append(f"unknown ops {', '.join(self.unknown[:4])}")
        if self.nonfinite:
            found.append(f"non-finite {', '.join(self.nonfinite[:3])}")
        if self.atoms != case.atoms:
            found.append(f"atoms {self.atoms} (config: {case.atoms})")
        if self.merges != case.merges:
            found.append(f"residual merges {self.merges} (config: {case.merges})")
        return found


def _figures(analysis: Any) -> dict[str, float]:
    net = analysis.network
    figures = {"network sensitivity": net.sensitivity, "mass": net.mass}
    for layer in analysis.layers:
        for what in ("sensitivity", "downstream_sensitivity", "target_norm"):
            figures[f"{layer.name} {what}"] = getattr(layer, what)
    return figures


@functools.cache
def read(name: str) -> Reading:
    """Build and analyse once per architecture (the matrix and the per-case test share it)."""
    case = next(c for c in CASES if c.name == name)
    try:
        model = case.build()
        analysis = modnorm.analyze(model, case.inputs(model), init_laws=getattr(model, "_modnorm_laws", None))
    except Exception as exc:  # noqa: BLE001 - a failure is a row of the matrix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Reading(error=f"{type(exc).__name__}: {first[:200]}")
    return Reading(
        route=analysis.model.tracer,
        unknown=tuple(analysis.network.unknown_ops),
        atoms=sum(1 for l in analysis.layers if l.kind in MATRIX_KINDS),
        merges=sum(len(s.merges) for s in analysis.streams),
        nonfinite=tuple(k for k, v in _figures(analysis).items() if not math.isfinite(v)),
        uncertified=tuple(analysis.network.uncertified_reasons),
    )


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case.name, marks=marks, id=case.name)


@pytest.mark.parametrize("name", [_param(c) for c in CASES])
def test_architecture_is_read_in_full(name):
    case = next(c for c in CASES if c.name == name)
    problems = read(name).problems(case)
    assert not problems, f"{name}: " + "; ".join(problems)


def test_at_least_thirty_architectures_are_covered():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


def matrix() -> str:
    rows = ["| architecture | family | route | read in full | not certified / what stops it |",
            "|---|---|---|---|---|"]
    for case in CASES:
        reading = read(case.name)
        problems = reading.problems(case)
        gaps = "; ".join(problems) or "; ".join(reading.uncertified[:2]) or "-"
        rows.append(f"| {case.name} | {case.family} | {reading.route} | {'yes' if not problems else 'no'} | "
                    f"{gaps.replace('|', '/')[:160]} |")
    return "\n".join(rows)


README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- architectures-read:begin -->", "<!-- architectures-read:end -->"


@pytest.mark.slow
def test_print_matrix_and_readme_table():
    """Prints the matrix; with MODNORM_UPDATE_README=1 writes it into README between the markers."""
    table = matrix()
    print("\n" + table)
    if os.environ.get("MODNORM_UPDATE_README"):
        text = README.read_text()
        block = f"{BEGIN}\n{table}\n{END}"
        if BEGIN in text:
            text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        else:
            text = text.rstrip() + "\n\n## Architectures read\n\nGenerated by `tests/test_hf_coverage.py` " \
                   "(`MODNORM_UPDATE_README=1`).\n\n" + block + "\n"
        README.write_text(text)

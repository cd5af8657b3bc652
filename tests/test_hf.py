"""Hugging Face transformers models, built from a config.json on the meta device (optional: `pip install
"modnorm[hf]"`). The shape-aware fx route reads GPT-2, BERT, Llama, Mistral, Qwen2 and T5 with no unknown op."""

import json
import time

import pytest
from typer.testing import CliRunner

transformers = pytest.importorskip("transformers")

from modnorm.check import check_model  # noqa: E402
from modnorm.cli import app  # noqa: E402
from modnorm.config import Settings  # noqa: E402

TINY = dict(vocab_size=100)
CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, **TINY,
                                            architectures=["GPT2LMHeadModel"]),
    "bert": lambda: transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=128, max_position_embeddings=64, **TINY,
                                            architectures=["BertModel"]),
    "llama": lambda: transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                              num_key_value_heads=2, intermediate_size=128,
                                              max_position_embeddings=64, **TINY, architectures=["LlamaForCausalLM"]),
    "mistral": lambda: transformers.MistralConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                  num_key_value_heads=2, intermediate_size=128,
                                                  max_position_embeddings=64, **TINY,
                                                  architectures=["MistralForCausalLM"]),
    "qwen2": lambda: transformers.Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                              num_key_value_heads=2, intermediate_size=128,
                                              max_position_embeddings=64, **TINY, architectures=["Qwen2ForCausalLM"]),
    "t5": lambda: transformers.T5Config(d_model=64, num_layers=2, num_heads=4, d_ff=128, d_kv=16, **TINY,
                                        architectures=["T5ForConditionalGeneration"]),
    # not token ids: the example input is the processor's (mel frames padded to 2 x max_source_positions, which
    # Whisper checks; an image of image_size²)
    "whisper": lambda: transformers.WhisperConfig(d_model=64, encoder_layers=2, decoder_layers=2,
                                                  encoder_attention_heads=4, decoder_attention_heads=4,
                                                  encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
                                                  max_source_positions=32, max_target_positions=64, pad_token_id=0,
                                                  bos_token_id=0, eos_token_id=0, decoder_start_token_id=0, **TINY,
                                                  architectures=["WhisperForConditionalGeneration"]),
    "convnext": lambda: transformers.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], image_size=64,
                                                    architectures=["ConvNextModel"]),
    "vit": lambda: transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=128, image_size=32, patch_size=8,
                                          architectures=["ViTModel"]),
}


def saved(tmp_path, name, config):
    folder = tmp_path / name
    config.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", list(CONFIGS))
def test_tiny_transformers_models_trace_with_no_unknown_op(tmp_path, name):
    analysis = check_model(str(saved(tmp_path, name, CONFIGS[name]())), Settings(device="meta")).analysis
    assert analysis.model.tracer == "fx_values", analysis.model.tracer_attempts
    assert analysis.network.unknown_ops == ()
    assert analysis.network.certified  # every op has a first-order bound
    linears = [l for l in analysis.layers if l.kind == "Linear"]
    assert linears and all(l.norm_source.startswith("predicted") for l in linears)


def test_gpt2_ties_its_head_and_reports_it(tmp_path):
    analysis = check_model(str(saved(tmp_path, "gpt2", CONFIGS["gpt2"]())), Settings(device="meta")).analysis
    assert ("lm_head.weight", "transformer.wte.weight") in {tuple(sorted(g)) for g in analysis.network.tied_weights}


def test_a_config_json_file_is_a_target_and_kwargs_override_it(tmp_path):
    folder = saved(tmp_path, "llama", CONFIGS["llama"]())
    result = CliRunner().invoke(app, ["check", str(folder / "config.json"), "-f", "json", "--exit-zero",
                                      "--kwargs", "num_hidden_layers=3"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {l["name"] for l in report["layers"]} >= {"model.layers.2.mlp.down_proj"}


def test_llama_7b_shape_on_meta_in_seconds(tmp_path):
    config = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                      max_position_embeddings=4096, architectures=["LlamaForCausalLM"])
    start = time.perf_counter()
    analysis = check_model(str(saved(tmp_path, "llama7b", config)), Settings()).analysis
    print(f"Llama 7B shape: {time.perf_counter() - start:.1f} s")
    assert analysis.model.device == "meta" and analysis.model.parameters > 6.5e9
    assert analysis.model.tracer == "fx_values" and analysis.network.unknown_ops == ()
    assert len([l for l in analysis.layers if l.kind == "Linear"]) == 32 * 7 + 1


def test_not_a_model_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 4}')
    result = CliRunner().invoke(app, ["check", str(bad)])
    assert result.exit_code == 2 and "model_type" in result.stderr and "Traceback" not in result.stderr


def test_kv_cache_on_by_default_stays_on_the_graph_route():
    """A model built with its config's defaults (use_cache=True) returns a DynamicCache; the fx route returns None
    in its place instead of failing over to the op log, which found no residual streams (issue 17). Expected: the
    fx route and Llama's 2 merges per layer (pre-norm `x + attn(n(x))`, `x + mlp(n(x))`)."""
    import modnorm
    import torch

    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                                      vocab_size=100)
    assert config.use_cache
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config).eval()
    analysis = modnorm.analyze(model, torch.zeros(1, 8, dtype=torch.long))
    assert analysis.model.tracer == "fx_values", analysis.model.tracer_attempts
    assert sum(len(s.merges) for s in analysis.streams) == 2 * 2


def test_whisper_mel_frames_are_measured_over_their_channels(tmp_path):
    """Whisper's (1, mel bins, frames) input goes straight into conv1: it is measured over the mel channels (the
    conv's own units), so the first conv costs its norm, not sqrt(frames) = 8 on top of it."""
    analysis = check_model(str(saved(tmp_path, "whisper", CONFIGS["whisper"]())), Settings(device="meta")).analysis
    assert analysis.input_axes[0] == 1
    conv1 = next(o for o in analysis.ops if o.module == "model.encoder.conv1")
    assert conv1.lipschitz[0] < 3, conv1.lipschitz  # predicted norm ~1.4 at init, no factor 8


def test_an_image_config_gets_an_image_whose_normalizer_floors_can_be_measured(tmp_path):
    """A ConvNeXt config gets pixel_values of image_size² (not token ids), drawn standard normal: on all-zero
    pixels every LayerNorm input is 0, no floor can be measured, and each LayerNorm costs 1/sqrt(eps) = 1000
    (the network figure was 3.8e17). With measured floors it is certified given them, a few orders lower."""
    analysis = check_model(str(saved(tmp_path, "convnext", CONFIGS["convnext"]())), Settings()).analysis
    assert analysis.network.certification == "given assumptions"
    assert all(o.assumption is not None and o.assumption.basis.startswith("measured") for o in analysis.ops
               if o.eps is not None), [(o.module, o.assumption) for o in analysis.ops if o.eps is not None]
    assert analysis.network.sensitivity < 1e8

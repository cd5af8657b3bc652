"""Targets that are a Hugging Face `config.json` (or a directory holding one): the model is built from the config
with transformers, on the meta device, with no network and no weights.

The class is the config's first `architectures` entry when transformers has it (GPT2LMHeadModel,
LlamaForCausalLM, ...), else AutoModel. Example inputs are token ids of length min(64, the context length);
encoder-decoder models also get an attention mask and decoder ids, in their forward's positional order. The
KV cache is switched off: a static analysis has no past.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from .errors import ModnormError

__all__ = ["is_hf_target", "hf_module"]


def is_hf_target(path: Path) -> bool:
    return (path.is_dir() and (path / "config.json").is_file()) or (path.suffix == ".json" and path.is_file())


def _config_file(path: Path) -> Path:
    return path / "config.json" if path.is_dir() else path


def hf_module(path: Path) -> Any:
    """A stand-in for an imported model file: `build_model(**kwargs)` and `example_inputs(model)`."""
    config_file = _config_file(path)
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModnormError(f"`{config_file}` is not valid JSON: {exc.msg}", "pass a Hugging Face config.json",
                           config_file, exc.lineno) from exc
    if "model_type" not in raw:
        raise ModnormError(f"`{config_file}` has no `model_type`: it is not a Hugging Face model config",
                           "pass the config.json saved with the model (config.save_pretrained)", config_file)
    try:
        import transformers
    except ImportError as exc:
        raise ModnormError(f"`{config_file}` is a Hugging Face config, and building it needs transformers, which "
                           "is not installed", 'install it with `pip install "modnorm[hf]"`', config_file) from exc

    def build_model(**overrides: Any) -> torch.nn.Module:
        config = transformers.AutoConfig.from_pretrained(str(config_file.parent), local_files_only=True,
                                                         **overrides)
        config.use_cache = False
        architecture = next((getattr(transformers, a, None) for a in (config.architectures or [])
                             if getattr(transformers, a, None) is not None), None)
        if architecture is None:
            return transformers.AutoModel.from_config(config)
        return architecture._from_config(config)

    def example_inputs(model: torch.nn.Module) -> tuple[Any, ...]:
        config = model.config
        data = _main_input(model, config)
        if getattr(config, "is_encoder_decoder", False):
            decoder_ids = torch.zeros(1, 16, dtype=torch.long)
            positions = data.shape[-1] if data.is_floating_point() else data.shape[1]  # mel frames or tokens
            return data, torch.ones(1, positions, dtype=torch.long), decoder_ids
        return (data,)

    return SimpleNamespace(build_model=build_model, example_inputs=example_inputs, __name__=str(config_file))


def _main_input(model: torch.nn.Module, config: Any) -> torch.Tensor:
    """An example of the model's main input, shaped as its processor makes it: token ids, an image
    (pixel_values: channels x image_size²) or log-mel frames (input_features: Whisper pads every clip to
    2 x max_source_positions frames and checks it). Continuous inputs are standard normal (seeded), not zeros: the
    floors of the `assumed` profile are measured on them, and zeros would leave every normalizer's input at 0."""
    main = getattr(model, "main_input_name", "input_ids")
    noise = torch.Generator().manual_seed(0)
    if main == "pixel_values":
        size = getattr(config, "image_size", 224)
        height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
        return torch.randn(1, getattr(config, "num_channels", 3), height, width, generator=noise)
    if main == "input_features" and isinstance(getattr(config, "max_source_positions", None), int):
        return torch.randn(1, getattr(config, "num_mel_bins", 80), 2 * config.max_source_positions, generator=noise)
    context = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions", "n_ctx")
                    if isinstance(getattr(config, k, None), int)), 64)
    return torch.zeros(1, min(64, context), dtype=torch.long)

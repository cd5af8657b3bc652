"""Real torchvision and timm models, when those libraries are importable (optional: they need a torch build other
than the one this project's CI installs, so this module is skipped there; fixtures/convnext_block.py,
efficientnet_block.py and swin_block.py mirror their constructs in plain torch and always run).

Each model is built on the meta device with its library's defaults and read through `modnorm.analyze`, as a user
would: the graph route, no unknown op, and every figure finite. The models are the ones whose constructs stopped
modnorm before (issue 17): functional batch norm (timm BatchNormAct2d), stochastic depth (ConvNeXt, Swin,
EfficientNet), pad and roll (Swin), layer scale (ConvNeXt), squeeze-excitation (EfficientNet), a constructor that
needs real values (RegNet: built on the CPU instead)."""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch

import modnorm
import modnorm.initlaw

IMAGE = (1, 3, 64, 64)


def _torchvision(name: str, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        models = pytest.importorskip("torchvision.models")
        return getattr(models, name)(weights=None, **kwargs)
    return build


def _timm(name: str, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        timm = pytest.importorskip("timm")
        return timm.create_model(name, pretrained=False, **kwargs)
    return build


MODELS = {
    "torchvision convnext_tiny": _torchvision("convnext_tiny"),
    "torchvision efficientnet_b0": _torchvision("efficientnet_b0"),
    "torchvision swin_t": _torchvision("swin_t"),
    "torchvision resnet18": _torchvision("resnet18"),
    "torchvision regnet_y_400mf": _torchvision("regnet_y_400mf"),
    "timm convnext_nano": _timm("convnext_nano"),
    "timm efficientnet_b0": _timm("efficientnet_b0"),
    "timm regnetx_002": _timm("regnetx_002"),
}


def _build(make: Callable[[], Any]) -> tuple[Any, dict[str, Any] | None]:
    """On meta with the init laws recorded; a constructor that needs real values is built on the CPU."""
    try:
        with torch.device("meta"), modnorm.initlaw.record_init() as recorder:
            model = make()
        return model.eval(), modnorm.initlaw.laws_of(model, recorder)
    except (NotImplementedError, RuntimeError):
        return make().eval(), None


@pytest.mark.parametrize("name", sorted(MODELS))
def test_vision_library_model_is_read_in_full(name):
    model, laws = _build(MODELS[name])
    analysis = modnorm.analyze(model, (torch.zeros(IMAGE),), init_laws=laws)
    assert analysis.model.tracer in ("fx_values", "export"), analysis.model.tracer_attempts
    assert not analysis.network.unknown_ops, analysis.network.unknown_ops
    figures = {"network sensitivity": analysis.network.sensitivity}
    figures.update({f"{layer.name} target": layer.target_norm for layer in analysis.layers})
    assert all(math.isfinite(v) for v in figures.values()), [k for k, v in figures.items() if not math.isfinite(v)]

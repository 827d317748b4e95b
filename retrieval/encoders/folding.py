"""Batch norms folded into the convolutions they follow, for inference.

In eval mode a BatchNorm2d is a fixed per-channel scale and shift, so a convolution followed by one
equals a single convolution with scaled weights and a bias (`torch.nn.utils.fusion.fuse_conv_bn_eval`).
Eager PyTorch runs each batch norm as its own pass over the activations: 24 % of EfficientNet-Lite2's
forward time and 8 % of DeepLabV3-ResNet101's on this machine's CPU (profiled; `python -m bench.layouts`
measures the speed-ups), and a GPU pays the same extra memory pass.

Which convolution feeds which batch norm is read from one forward pass over an example, not from
the order the modules were registered in: a pair is folded only when the batch norm received the very
tensor the convolution returned, unmodified since (no in-place operation between them), and each was
called once. The result is then checked against the model's output before folding on the same
example, and put back as it was if it differs (a convolution whose output was also read elsewhere).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4  # the largest difference allowed, relative to each output's largest magnitude
EXAMPLE_SIDE = 64  # the default example: one picture this size shows the graph of an image network cheaply


@dataclass
class _Fold:
    parent_of_conv: nn.Module
    conv_name: str
    conv: nn.Conv2d
    parent_of_norm: nn.Module
    norm_name: str
    norm: nn.BatchNorm2d


def fold_batch_norms(model: nn.Module, example: torch.Tensor | None = None) -> int:
    """Folds, in place, each batch norm that directly follows a convolution in `model` (eval mode) as
    seen on `example`, a batch the model accepts (a small one will do: only the graph matters; by
    default one black RGB picture of EXAMPLE_SIDE² on the model's device). Returns how many were
    folded; 0 (and the model unchanged) when folding would change the output."""
    if model.training:
        raise ValueError("batch norms are folded for inference only: call model.eval() first")
    if example is None:
        example = torch.zeros(1, 3, EXAMPLE_SIDE, EXAMPLE_SIDE, device=next(model.parameters()).device)
    # no_grad, not inference_mode: tensor versions are read, and the new weights must be ordinary tensors.
    with torch.no_grad():
        pairs, output = _pairs(model, example)
        if not pairs:
            return 0
        before = list(_tensors(output))
        places = {child: (parent, name) for parent in model.modules() for name, child in parent.named_children()}
        folds = [fold for conv, norm in pairs if (fold := _fold(places, conv, norm)) is not None]
        after = list(_tensors(model(example)))
    difference = max((_relative_difference(a, b) for a, b in zip(before, after, strict=True)), default=0.0)
    if difference > TOLERANCE:
        for fold in folds:  # put every pair back: the model is exactly what it was
            setattr(fold.parent_of_conv, fold.conv_name, fold.conv)
            setattr(fold.parent_of_norm, fold.norm_name, fold.norm)
        logger.warning("%s: batch norms left unfolded: folding changed the output by %.2g (relative)",
                       type(model).__name__, difference)
        return 0
    return len(folds)


def _pairs(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple[nn.Conv2d, nn.BatchNorm2d]], object]:
    """((convolution, batch norm) pairs where the norm read the convolution's output as it was returned,
    the model's output on the example)."""
    produced: dict[int, tuple[nn.Conv2d, torch.Tensor, int]] = {}  # id(output) → (conv, output, its version)
    calls: dict[nn.Module, int] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def after_conv(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        calls[module] = calls.get(module, 0) + 1
        if isinstance(output, torch.Tensor):  # the tensor is kept so that its id is not reused
            produced[id(output)] = (module, output, output._version)  # type: ignore[assignment]

    def before_norm(module: nn.Module, args: tuple) -> None:
        calls[module] = calls.get(module, 0) + 1
        source = produced.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
        if source is not None and source[1] is args[0] and source[2] == args[0]._version:
            pairs.append((source[0], module))  # type: ignore[arg-type]

    handles = [module.register_forward_hook(after_conv) for module in model.modules()
               if type(module) is nn.Conv2d]
    handles += [module.register_forward_pre_hook(before_norm) for module in model.modules()
                if isinstance(module, nn.BatchNorm2d) and _without_norm(module) is not None]
    try:
        output = model(example)
    finally:
        for handle in handles:
            handle.remove()
    return [(conv, norm) for conv, norm in pairs if calls[conv] == 1 and calls[norm] == 1], output


def _without_norm(norm: nn.BatchNorm2d) -> nn.Module | None:
    """What remains of the module once its normalization is in the convolution: nothing for a plain
    BatchNorm2d; timm's BatchNormAct2d keeps its dropout and activation; None for other subclasses."""
    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    drop, act = getattr(norm, "drop", None), getattr(norm, "act", None)
    if type(norm).__name__ == "BatchNormAct2d" and isinstance(drop, nn.Module) and isinstance(act, nn.Module):
        return nn.Sequential(drop, act)
    return None


def _fold(places: dict[nn.Module, tuple[nn.Module, str]], conv: nn.Conv2d, norm: nn.BatchNorm2d) -> _Fold | None:
    """Replaces the pair in their parents (`places`: each submodule's parent and attribute name)."""
    conv_place, norm_place = places.get(conv), places.get(norm)
    remains = _without_norm(norm)
    if conv_place is None or norm_place is None or remains is None:
        return None
    setattr(conv_place[0], conv_place[1], fuse_conv_bn_eval(conv, norm))
    setattr(norm_place[0], norm_place[1], remains)
    return _Fold(conv_place[0], conv_place[1], conv, norm_place[0], norm_place[1], norm)


def _tensors(output: object) -> Iterator[torch.Tensor]:
    """The tensors of a model's output (a tensor, or a tuple, list or dict of them)."""
    if isinstance(output, torch.Tensor):
        yield output.detach().clone()
    elif isinstance(output, dict):
        for value in output.values():
            yield from _tensors(value)
    elif isinstance(output, list | tuple):
        for value in output:
            yield from _tensors(value)


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    scale = a.float().abs().max().clamp_min(1e-12)
    return float((a.float() - b.float()).abs().max() / scale)

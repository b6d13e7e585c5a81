"""The network a config names, whole-image inference, batch-norm freezing and weights from an engine.

Shared by the loop (``loop``), the export (``export``) and the GPU recipe's plan, none of which needs the
others for this.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sbd_stream.compute.model import Architecture, DnCNN, SmallUNet, UNet
from training.train.config import TrainConfig


def build_network(cfg: TrainConfig) -> nn.Module:
    if cfg.architecture is Architecture.unet:
        return UNet(scales=cfg.scales, channels=cfg.channels, space_to_depth=cfg.space_to_depth)
    if cfg.architecture is Architecture.dncnn:
        return DnCNN(depth=cfg.depth, channels=cfg.channels)
    return SmallUNet()


def set_train_mode(model: nn.Module, freeze_norm: bool) -> None:
    """Training mode, with batch-norm layers in eval mode (frozen running statistics) if ``freeze_norm``."""
    model.train()
    if freeze_norm:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def model_multiple(model: nn.Module) -> int:
    return int(getattr(model, "multiple", 1))


def predict_full(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Whole-image inference on (B, 1, H, W), mirrored up to the model's size multiple and cropped back."""
    m = model_multiple(model)
    h, w = x.shape[-2:]
    ph, pw = -h % m, -w % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
    return model(x)[..., :h, :w]


def _describe(net: list[Any]) -> str:
    """``unet, 3 scales, 16 channels, space_to_depth 2``: the message showed the list's repr, enum and all
    (``[<Architecture.unet: 'unet'>, 3, 16, 2]``)."""
    arch, *rest = net
    words = [str(getattr(arch, "value", arch))]
    labels = ("scales", "channels", "space_to_depth") if len(rest) == 3 else ("channels",)
    for label, v in zip(labels, rest, strict=False):
        words.append(f"space_to_depth {v}" if label == "space_to_depth" else f"{v} {label}")
    return ", ".join(words)


def init_weights(cfg: TrainConfig) -> dict[str, Any]:
    """Verified weights of the engine ``cfg.init_from`` (checksums checked), if its network is cfg's."""
    from sbd_stream.engines.card import WEIGHTS_FILE, load_card, load_torch_model, resolve_engine_dir

    engine_dir = resolve_engine_dir(cfg.init_from)
    card = load_card(engine_dir)
    mine: list[Any] = [cfg.architecture]
    theirs: list[Any] = [card.architecture]
    if cfg.architecture is Architecture.unet:
        mine = [*mine, cfg.scales, cfg.channels, cfg.space_to_depth]
        theirs = [*theirs, card.scales, card.channels, card.space_to_depth]
    elif cfg.architecture is Architecture.dncnn:
        mine, theirs = [*mine, cfg.channels], [*theirs, card.channels]
    blocks = _is_block_version(mine, theirs)
    if mine != theirs and not blocks:
        raise ValueError(
            f"--init-from {engine_dir}: its network ({_describe(theirs)}) differs from this run's "
            f"({_describe(mine)})"
        )
    model = load_torch_model(engine_dir, card)
    info = {
        "engine": card.name,
        "path": str(engine_dir),
        "weights_sha256": card.checksums.get(WEIGHTS_FILE, ""),
        "steps_before": int(card.training.get("steps_total", card.training.get("steps", 0)) or 0),
    }
    if blocks:
        fresh = build_network(cfg).state_dict()
        info["transplanted"] = "inner levels of a full-resolution UNet (see transplant_to_blocks)"
        return {"state_dict": transplant_to_blocks(model.state_dict(), fresh), "info": info, "card": card}
    return {"state_dict": model.state_dict(), "info": info, "card": card}


def warn_sampling(card: Any, pixel_size_A: float, dose_e_per_A2: float, data: Any) -> None:
    """Warn (on stderr, once per run) when the engine a run starts from was trained at another working
    pixel or dose than the run's data: allowed (a fine-tune may move an engine on), but more often a
    wrong --init-from or --data, whose first validations then look like a broken network."""
    import sys

    diffs = []
    if card.pixel_size_A and abs(card.pixel_size_A / pixel_size_A - 1) > 0.01:
        diffs.append(f"pixel {card.pixel_size_A:.4g} A vs the data's {pixel_size_A:.4g} A")
    if card.dose_e_per_A2 and abs(card.dose_e_per_A2 / dose_e_per_A2 - 1) > 0.01:
        diffs.append(f"dose {card.dose_e_per_A2:.4g} e/A^2 vs the data's {dose_e_per_A2:.4g} e/A^2")
    if diffs:
        note = f"warning: --init-from {card.name} was trained at {'; '.join(diffs)} ({data})"
        with contextlib.suppress(OSError, ValueError, AttributeError):  # a full log disk: the run goes on
            print(note, file=sys.stderr)


def _is_block_version(mine: list[Any], theirs: list[Any]) -> bool:
    """``mine`` is a UNet on 2 x 2 blocks with one scale fewer than the full-resolution ``theirs``."""
    if len(mine) != 4 or len(theirs) != 4:
        return False
    arch, scales, channels, s = mine
    return s == 2 and theirs == [arch, scales + 1, channels, 1]


def transplant_to_blocks(full: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Start a 2 x 2 block UNet (scales S) from a trained full-resolution one (scales S + 1).

    Why: the block network's levels are the full one's levels 1..S+1 (the same resolutions and channel
    counts), so its inner blocks can start as trained ones: ``down.i`` <- ``down.(i+1)``, ``up.i`` <-
    ``up.i``, and the second conv of its input block <- that of ``down.0`` (the block that produced those
    features). What has no counterpart stays fresh (``fresh``): the first conv, which now reads 4 pixels
    as channels, its batch norm, and the output conv, which now writes 4. Their batch-norm statistics
    must still be learned, so such a run does not freeze batch norm from step 0.
    """
    out = dict(fresh)
    for key, value in full.items():
        head, _, rest = key.partition(".")
        if head == "down":
            i, _, tail = rest.partition(".")
            if int(i) >= 1:
                out[f"down.{int(i) - 1}.{tail}"] = value
            elif tail.startswith(("3.", "4.")):
                out[f"inc.{tail}"] = value
        elif head == "up" and key in fresh and fresh[key].shape == value.shape:
            out[key] = value
    return out

"""Reading checkpoints safely (safetensors, or ``torch.load(weights_only=True)``), their JSON sidecars, and the
error every loader raises for a feature HookedViT does not implement."""
from __future__ import annotations

import json
import logging
import pickle
from os import PathLike
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)


class UnsupportedModelError(ValueError):
    """The timm model uses a feature HookedViT does not implement (so the port would differ)."""


# ---------------------------------------------------------------------------------------- checkpoints
def read_state_dict(path: str | PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely: safetensors, or ``torch.load(weights_only=True)`` for ``.pth``/``.bin``.

    Unwraps the usual ``{"state_dict": ...}`` / ``{"model": ...}`` containers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint_path {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError (truncated/corrupt header) names no file
            raise ValueError(f"cannot read checkpoint {str(path)!r} (truncated or not a safetensors file?): "
                             f"{err}") from err
    if path.suffix not in (".pth", ".pt", ".bin", ".ckpt"):
        raise ValueError(f"checkpoint_path must end in .safetensors, .pth, .pt, .bin or .ckpt; got {path.name!r}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused an object that is not a tensor container
        found = [line.strip() for line in str(err).splitlines() if "unsupported global" in line.lower()]
        raise ValueError(f"refused checkpoint {str(path)!r}: it holds Python objects other than tensors, which "
                         f"torch.load(weights_only=True) does not execute ({(found or ['not a plain state dict'])[0]}"
                         f"); save a state dict (safetensors preferred)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot read checkpoint {str(path)!r} with torch.load(weights_only=True) (truncated "
                         f"or corrupt?): {reason}") from err
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path.name!r} does not hold a state dict (got {type(state).__name__})")
    return state


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load into a timm model, trying timm's own key filter (e.g. original DINOv2/CLIP layouts) before
    failing with the missing and unexpected keys listed."""
    own = model.state_dict()
    if set(state) != set(own):
        try:
            from timm.models.vision_transformer import checkpoint_filter_fn

            filtered = checkpoint_filter_fn(state, model)
            if set(filtered) == set(own):
                state = filtered
        except Exception as err:  # the filter is best effort; the key report below is the real error
            logger.debug("timm checkpoint_filter_fn failed: %s", err)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {source} does not match the model: {len(missing)} missing keys "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}. Check the model name and its "
            f"create_model kwargs (img_size, num_classes, global_pool, reg_tokens)."
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(f"checkpoint {source}: {key!r} has shape {tuple(value.shape)}, the model "
                             f"expects {tuple(own[key].shape)}")
    model.load_state_dict(state, strict=True)


def read_sidecar(path: str | PathLike) -> dict:
    """The JSON sidecar beside a checkpoint (``foo.safetensors`` -> ``foo.json``), or ``{}``. Errors name the file."""
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        return {}
    try:
        side = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"invalid JSON sidecar {str(sidecar)!r}: {err}") from err
    kinds = {"timm_model_name": str, "create_model_kwargs": dict, "class_names": list, "data_config": dict}
    if not isinstance(side, dict):
        raise ValueError(f"JSON sidecar {str(sidecar)!r} must hold an object with keys {sorted(kinds)}; got "
                         f"{type(side).__name__}")
    for key, kind in kinds.items():
        if key in side and side[key] is not None and not isinstance(side[key], kind):
            raise ValueError(f"JSON sidecar {str(sidecar)!r}: {key!r} must be a {kind.__name__}; got "
                             f"{side[key]!r}")
    return side

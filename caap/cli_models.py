"""Which model a ``caap`` command explains: ``--model`` (timm name or ``paper:<key>``), ``--weights`` (a local timm
checkpoint with its JSON sidecar, or an open_clip checkpoint), ``--hf`` (a transformers hub name or save_pretrained
directory) or ``--open-clip``; ``--device``. Everything checkable without the model (device, files, names, an
unreachable hub with nothing cached) is checked first and reported as one :class:`UsageError` line. Used by
``caap explain`` (:mod:`caap.cli`), ``caap bench`` and ``caap figure``."""
from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_MODEL = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
HUB_PROBE_TIMEOUT_S = 3.0  # a reachable hub answers a TCP connect well within this

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """A user error: reported in one line, exit status 2 (a ValueError, so callers catching ValueError see it)."""


def check_device(spec: str) -> str:
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {spec!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are available")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {spec}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise UsageError(f"--device {spec!r}: supported devices are cpu, cuda, cuda:N and mps")
    return spec


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """A TCP connect to the Hugging Face endpoint (``HF_ENDPOINT``), or to the HTTPS proxy when one is set,
    within ``timeout`` seconds (DNS included: the probe runs in a daemon thread)."""
    from urllib.request import getproxies

    url = urlparse(getproxies().get("https") or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return True  # nothing to probe: let the download report its own error
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def fail_fast_offline() -> bool:
    """huggingface_hub retries an unreachable hub for ~50 s before giving up. Unless the user set
    ``HF_HUB_OFFLINE`` themselves, probe the hub once and, if it cannot be reached, switch huggingface_hub
    to offline mode: cached weights still load, missing ones fail at once. Returns True when switched."""
    if os.environ.get("HF_HUB_OFFLINE") is not None or hub_reachable():
        return False
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True  # read at import time; is_offline_mode() reads this attribute
    except ImportError:
        pass
    logger.info("Hugging Face Hub unreachable: using the local cache only (HF_HUB_OFFLINE=1)")
    return True


def weights_in_cache(name: str) -> bool | None:
    """Whether the Hugging Face cache holds ``name``'s pretrained weights (any file timm would load); None
    when it cannot tell (weights from a URL or a file, unknown tag): then timm itself decides."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        if cfg is None or not cfg.hf_hub_id:
            return None
        repo, _, revision = cfg.hf_hub_id.partition("@")
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else [
            "model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(repo, f, revision=revision or None), str) for f in files)
    except Exception as err:  # best effort: never block a load on this check
        logger.debug("weights_in_cache(%r) failed: %s", name, err)
        return None


def load_model(args):
    """``--model paper:<key>`` builds a backbone of the paper with its ImageNet head (:mod:`vit_lens.zoo`;
    ``--weights`` then replaces the downloaded weights); CNNs come wrapped in :class:`caap.cnn_model.CNNClassifier`
    (explain them with the ``caap-cnn`` method). Otherwise a timm name or a local checkpoint."""
    from vit_lens import HookedViT

    if getattr(args, "hf", None):
        return HookedViT.from_hf(args.hf, device=args.device)
    if getattr(args, "open_clip", None):
        return HookedViT.from_open_clip(load_open_clip(args), device=args.device)
    if args.model is not None and args.model.startswith("paper:"):
        from vit_lens.zoo import get_paper_model, load_paper_model

        model = load_paper_model(args.model, pretrained=args.weights is None, checkpoint_path=args.weights,
                                 device=args.device)
        if get_paper_model(args.model).kind == "cnn":
            from caap.cnn_model import CNNClassifier

            model = CNNClassifier(model)
        return model
    if args.weights is not None:
        return HookedViT.from_checkpoint(args.weights, model_name=args.model, device=args.device)
    return HookedViT.from_timm(args.model or DEFAULT_MODEL, pretrained=True, device=args.device)


def load_open_clip(args):
    """The whole open_clip model (the text tower embeds ``--text``); cached on ``args`` so it is built once."""
    if getattr(args, "_open_clip_model", None) is None:
        from vit_lens.loading.open_clip import create_open_clip_model

        pretrained = None if args.open_clip.startswith(("local-dir:", "hf-hub:")) else (args.weights or args.pretrained)
        args._open_clip_model = create_open_clip_model(args.open_clip, pretrained=pretrained)
    return args._open_clip_model


def check_source(args) -> None:
    """One model source: ``--model`` (timm, or ``paper:``), ``--weights`` (a local timm checkpoint, or with
    ``--open-clip`` its weights), ``--hf`` or ``--open-clip``; refused combinations name both flags."""
    hf, oc = getattr(args, "hf", None), getattr(args, "open_clip", None)
    given = [f for f, v in (("--model", args.model), ("--hf", hf), ("--open-clip", oc)) if v]
    if len(given) > 1:
        raise UsageError(f"{given[0]} and {given[1]} both name a model; give one")
    if hf and args.weights is not None:
        raise UsageError("--hf takes the model directory itself (written by save_pretrained); drop --weights")
    if getattr(args, "text", None) is not None and not oc:
        raise UsageError("--text needs an --open-clip model (its text tower embeds the prompt); for other "
                         "embedding models use the Python API, CAAP(model, score=<callable on the embedding>)")
    if getattr(args, "text", None) is not None and args.target is not None:
        raise UsageError("--target names a class; with --text the prompt is what is explained: drop --target")
    if getattr(args, "pretrained", None) and not oc:
        raise UsageError("--pretrained is a tag of an --open-clip model; with other sources use --weights FILE")
    if oc:
        if args.weights is not None and getattr(args, "pretrained", None):
            raise UsageError("--open-clip takes its weights from --weights FILE or --pretrained TAG, not both")
        if getattr(args, "text", None) is None:
            raise UsageError(f"--open-clip {oc}: an open_clip model outputs an image embedding, not classes: "
                             f"pass --text PROMPT (the map explains the cosine similarity to it)")
        schema = oc.startswith(("local-dir:", "hf-hub:"))
        if not schema and args.weights is None and not getattr(args, "pretrained", None):
            raise UsageError(f"--open-clip {oc}: give its weights with --weights FILE (a local checkpoint) or "
                             f"--pretrained TAG (downloaded by open_clip)")
        from vit_lens.loading.open_clip import check_open_clip_name

        check_open_clip_name(oc, args.weights or getattr(args, "pretrained", None))
    if hf:
        local = Path(hf)
        if local.exists():
            if not (local / "config.json").is_file():
                raise UsageError(f"--hf {hf}: a directory written by save_pretrained must hold config.json")
        elif (fail_fast_offline() or _offline_set()) and not _hf_cached(hf):
            raise UsageError(f"--hf {hf}: no such directory, and the Hugging Face Hub is unreachable with no cached "
                             f"copy; pass a directory written by save_pretrained")


def _offline_set() -> bool:
    """The user asked huggingface_hub for offline mode (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hf_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an invalid repo id: transformers reports it when loading
        return False


def load_checked_model(args):
    """:func:`load_model` behind the CLI's checks (``--device``, ``--weights`` exists, ``--model`` known to timm,
    fast failure offline); every user error raises :class:`UsageError`/``ValueError`` with one line. For other
    subcommands (``caap bench``) too: ``args`` needs ``model``, ``weights`` and ``device``."""
    check_device(args.device)
    if args.weights is not None and not Path(args.weights).is_file():
        raise UsageError(f"--weights: file not found: {str(args.weights)!r}")
    check_source(args)
    if getattr(args, "hf", None) or getattr(args, "open_clip", None):
        return load_model(args)
    from vit_lens.loading import check_timm_name

    name = args.model or DEFAULT_MODEL
    if name.startswith("paper:"):
        from vit_lens.zoo import get_paper_model

        try:
            name = get_paper_model(name).timm_name
        except ValueError as err:
            raise UsageError(f"--model: {err}") from None
    elif args.model is not None:
        check_timm_name(args.model, "--model")
    offline = args.weights is None and fail_fast_offline()
    if offline and weights_in_cache(name) is False:  # fail before building the model (seconds for ViT-B)
        raise UsageError(f"cannot download weights for {name!r} (the Hugging Face Hub is unreachable and they "
                         f"are not in the local cache); pass --weights FILE with a local timm checkpoint")
    try:
        return load_model(args)
    except RuntimeError as err:
        if "could not download" in str(err):
            raise UsageError(f"cannot download weights for {name!r}"
                             f"{' (the Hugging Face Hub is unreachable)' if offline else ' (offline?)'}; "
                             f"pass --weights FILE with a local timm checkpoint") from None
        raise

"""What the viewer page shows for one image, computed once in Python (the page only looks things up).

For an image ``x`` (``[1, chan, H, W]``, the model's input) and the top-K predicted classes:

* ``maps[method]``: ``[K, grid_h, grid_w]``, ``get_method(method, model).attribute`` for each class (the
  image repeated K times, one class per copy: one batched call).
* ``sweeps[method]`` for the CAAP family (``caap``, ``e-caap``, ``e-caap-eq9``): ``[blank, l_e, K, grid_h,
  grid_w]``, the method with ``layers=(0, l_e)`` and ``blank=b`` for every last patched block ``l_e`` and blank
  type. One patching run per (blank, l_e) serves all K classes (the score callable records every class's
  logit; checked against the returned map, else one run per class). Cost: blanks × blocks CAAP runs.
* ``attention``: ``[block, head, query, key]`` patterns (every token, CLS and registers included).
* ``lens``: the patch-level logit lens: each token's residual stream after block ``l`` through the final norm
  (and ``fc_norm``) and the head, as the model reads its pooled vector: ``top [block, token]`` class,
  its probability, and the probability of each of the K classes ``[block, K, token]``. At the last block the
  CLS token's lens equals the model's output (CLS pooling). Refused (``None``) for ``cls_mean`` heads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

BLANKS = ("white", "black", "mean", "noisy", "blur_noisy")
SWEEP_METHODS = ("caap", "e-caap", "e-caap-eq9")  # registry names built on caap.CAAP (layers= and blank=)


@dataclass
class ImageData:
    """Everything about one image; tensors on the CPU, float32. ``display``: ``[H, W, 3]`` floats in [0, 1]."""
    name: str
    display: np.ndarray
    classes: list[int]
    probs: list[float]
    maps: dict[str, Float[Tensor, "K grid_h grid_w"]] = field(default_factory=dict)
    sweeps: dict[str, dict] = field(default_factory=dict)  # method -> {"ends", "blanks", "default", "maps"}
    attention: Float[Tensor, "block head query key"] | None = None
    lens: dict | None = None  # {"top", "top_prob", "class_prob"} or None
    lens_note: str | None = None
    results: dict | None = None  # method -> bench row (analysis.viewer.results)
    error: str | None = None


def check_classifier(model) -> None:
    """The viewer explains a ViT's classes: other models and headless/embedding ViTs are refused in one line."""
    from vit_lens import HookedViT

    if not isinstance(model, HookedViT):
        raise ValueError(f"model must be a vit_lens.HookedViT (the viewer shows attention per head and a logit lens); "
                         f"got {type(model).__name__}. Port a timm ViT with HookedViT.from_timm(model)")
    if model.cfg.num_classes == 0 or getattr(model.cfg, "head_output", "logits") == "embedding":
        raise ValueError(f"model {model.cfg.model_name or ''!r} outputs an embedding, not class logits: the viewer "
                         f"shows maps per predicted class and needs a classifier head")


def top_classes(model, x: Float[Tensor, "1 chan H W"], k: int) -> tuple[list[int], list[float]]:
    """The ``k`` most probable classes (softmax) and their probabilities, best first."""
    with torch.no_grad():
        probs = model(x).float().softmax(-1)[0]
    p, i = probs.topk(min(k, probs.shape[0]))
    return [int(c) for c in i], [float(v) for v in p]


def method_maps(model, x: Float[Tensor, "1 chan H W"], methods, classes: list[int],
                options: dict | None = None) -> dict[str, Float[Tensor, "K grid_h grid_w"]]:
    """``get_method(name, model, **options.get(name, {})).attribute`` of ``x`` for every class."""
    from caap import get_method

    batch = x.expand(len(classes), *x.shape[1:])
    target = torch.tensor(classes)
    out = {}
    for name in methods:
        method = get_method(name, model, **(options or {}).get(name, {}))
        out[name] = method.attribute(batch, target=target).detach().float().cpu()
    return out


def _caap_all_classes(model, x, name: str, classes: list[int], **options) -> Float[Tensor, "K grid_h grid_w"]:
    """One CAAP run reading every class's logit: the score callable returns class ``classes[0]``'s logit (the map
    CAAP returns) and records all K; the record is used only when its first class equals the returned map
    exactly (else one run per class)."""
    from caap import get_method

    recorded: list[Tensor] = []

    def score(output: Float[Tensor, "batch n_iv n_out"]) -> Float[Tensor, "batch n_iv"]:
        recorded.append(output[..., classes].detach().float().cpu())
        return output[..., classes[0]]

    if options.get("score", "logit") == "logit":
        first = get_method(name, model, score=score, **options).attribute(x)[0].float().cpu()
        if recorded:
            allk = torch.cat(recorded, dim=1)[0]  # [n_patches, K]
            if allk.shape[0] == first.numel() and torch.equal(allk[:, 0], first.flatten()):
                return model.layout.to_grid(allk.T.contiguous())
    method = get_method(name, model, **options)
    return method.attribute(x.expand(len(classes), *x.shape[1:]), target=torch.tensor(classes)).float().cpu()


def caap_sweep(model, x: Float[Tensor, "1 chan H W"], name: str, classes: list[int], ends=None,
               blanks=BLANKS) -> dict:
    """CAAP-family method ``name`` for every last patched block ``l_e`` (blocks ``0..l_e``) and blank:
    ``maps [blank, l_e, K, grid_h, grid_w]``; ``default`` is the registered (l_e, blank)."""
    from caap import get_method

    n_layers = model.cfg.n_layers
    ends = list(range(n_layers)) if ends is None else [int(e) for e in ends]
    bad = [e for e in ends if not 0 <= e < n_layers]
    if not ends or bad:
        raise ValueError(f"sweep_ends must be block indices in [0, {n_layers - 1}]; got {ends}")
    unknown = [b for b in blanks if b not in BLANKS]
    if not blanks or unknown:
        raise ValueError(f"sweep_blanks must be among {', '.join(BLANKS)}; got {list(blanks)}")
    reference = get_method(name, model)
    if reference.layers[0] != 0 or not isinstance(reference.blank, str):
        raise ValueError(f"{name}: the sweep patches blocks 0..l_e with a named blank; the method is registered "
                         f"with layers={reference.layers}, blank={reference.blank!r}")
    default = {"end": int(reference.layers[1]), "blank": reference.blank}
    ends = sorted(set(ends) | {default["end"]})  # the method's own setting is always in the sweep
    blanks = list(blanks) + ([default["blank"]] if default["blank"] not in blanks else [])
    maps = torch.stack([torch.stack([_caap_all_classes(model, x, name, classes, layers=(0, e), blank=b)
                                     for e in ends]) for b in blanks])
    return {"ends": ends, "blanks": list(blanks), "default": default, "maps": maps}


def attention_patterns(model, x: Float[Tensor, "1 chan H W"]) -> Float[Tensor, "block head query key"]:
    """Every block's ``attn.hook_pattern`` for ``x``."""
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    return torch.stack([cache[f"blocks.{b}.attn.hook_pattern"][0] for b in range(model.cfg.n_layers)]).float().cpu()


def lens_refusal(model) -> str | None:
    """Why the per-token logit lens is not defined for ``model`` (None when it is)."""
    if model.cfg.pooling == "cls_mean":
        return ("the DINOv2 linear head reads CLS of several blocks and the patch mean (pooling='cls_mean'): no "
                "per-token logit lens")
    return None


def logit_lens(model, x: Float[Tensor, "1 chan H W"], classes: list[int]) -> dict:
    """Each token's residual stream after every block through the final norm, ``fc_norm`` and the head:
    ``top [block, token]`` (argmax class), ``top_prob [block, token]`` and ``class_prob [block, K, token]``
    (softmax over all classes)."""
    reason = lens_refusal(model)
    if reason:
        raise ValueError(reason)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_post"))
        resid = torch.stack([cache[f"blocks.{b}.hook_resid_post"][0] for b in range(model.cfg.n_layers)])
        tokens = model.final_norm(resid)  # [block, token, d_model]; each token normed on its own
        if model.fc_norm is not None:
            tokens = model.fc_norm(tokens)
        probs = model.head(tokens).float().softmax(-1)  # [block, token, n_classes]
    top_prob, top = probs.max(-1)
    class_prob = probs[..., classes].permute(0, 2, 1)  # [block, K, token]
    return {"top": top.cpu(), "top_prob": top_prob.cpu(), "class_prob": class_prob.contiguous().cpu()}


def image_data(model, x: Float[Tensor, "1 chan H W"], name: str, methods, classes: int = 5, *,
               sweep: bool = True, sweep_ends=None, sweep_blanks=BLANKS, attention: bool = True,
               lens: bool = True, method_options: dict | None = None) -> ImageData:
    """All of the above for one image. Cost: K maps per method, blanks × blocks CAAP runs per swept method,
    two cached forwards."""
    from caap.plot import to_display

    cls, probs = top_classes(model, x, classes)
    data = ImageData(name=name, display=to_display(model, x)[0], classes=cls, probs=probs)
    if sweep:
        for m in methods:
            if m in SWEEP_METHODS and not (method_options or {}).get(m):
                s = caap_sweep(model, x, m, cls, sweep_ends, sweep_blanks)
                end, blank = s["default"]["end"], s["default"]["blank"]
                data.sweeps[m] = s  # holds the method's own (l_e, blank): the panel's default map is a slice
                data.maps[m] = s["maps"][s["blanks"].index(blank), s["ends"].index(end)]
    rest = [m for m in methods if m not in data.maps]
    data.maps.update(method_maps(model, x, rest, cls, method_options))
    if attention:
        data.attention = attention_patterns(model, x)
    if lens:
        data.lens_note = lens_refusal(model)
        if data.lens_note is None:
            data.lens = logit_lens(model, x, cls)
    return data


def payload(data: ImageData) -> dict:
    """The JSON-ready form of one image for the page (``viewer.js`` documents each field)."""
    from analysis.viewer.encode import deflate_u8, f32, png_data_uri, quantize_rows, u16

    out = {"name": data.name, "src": png_data_uri(data.display) if data.display is not None else None,
           "classes": data.classes, "probs": data.probs, "error": data.error,
           "maps": {m: f32(v) for m, v in data.maps.items() if m not in data.sweeps},  # swept: in the sweep
           "sweeps": {m: {"ends": s["ends"], "blanks": s["blanks"], "default": s["default"], "data": f32(s["maps"])}
                      for m, s in data.sweeps.items()},
           "attention": None, "lens": None, "lens_note": data.lens_note, "results": data.results}
    if data.attention is not None:
        codes, scale = quantize_rows(data.attention)
        out["attention"] = {"shape": list(codes.shape), "codes": deflate_u8(codes), "scale": f32(scale)}
    if data.lens is not None:
        out["lens"] = {"top": u16(data.lens["top"]), "top_prob": f32(data.lens["top_prob"]),
                       "class_prob": f32(data.lens["class_prob"])}
    return out


def model_info(model) -> dict:
    """The geometry and names the page needs."""
    cfg = model.cfg
    from caap.caap import default_layers

    return {"name": cfg.model_name or "model", "grid": list(cfg.grid_size), "image_size": list(cfg.image_size),
            "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_prefix": cfg.n_prefix_tokens,
            "n_registers": cfg.n_register_tokens, "default_end": default_layers(cfg.n_layers)[1],
            "num_classes": cfg.num_classes}


def class_names(model) -> list[str]:
    """The model's class names (ImageNet's for 1000 classes, else indices)."""
    from caap.cli import class_names as names

    return names(model)


def used_names(names: list[str], images: list[ImageData]) -> dict[str, str]:
    """The names of the classes the page shows (top-K and logit-lens tops), keyed by index as text."""
    used = set()
    for d in images:
        used.update(d.classes)
        if d.lens is not None:
            used.update(int(c) for c in torch.unique(d.lens["top"]))
        for row in (d.results or {}).values():
            used.update(int(row[k]) for k in ("target", "predicted", "label") if isinstance(row.get(k), int))
    return {str(c): names[c] if c < len(names) else str(c) for c in sorted(used)}


def finite_or_none(value):
    """JSON has no NaN/inf: such values become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


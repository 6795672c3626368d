"""An interactive viewer as ONE offline HTML file: several attribution methods side by side on an image, each
patch's score and rank under the mouse, the top-K classes, CAAP's last patched block and blank, attention per
block and head, a patch-level logit lens, and the Deletion/Insertion curves of a ``caap bench`` folder.

``View(model, images, methods=..., classes=5)`` computes everything in Python (:mod:`analysis.viewer.data`),
``.html`` is the page (``viewer.js`` + ``viewer.css`` inlined, no request), ``.save(path)`` writes it and
``_repr_html_`` shows it inline in Jupyter. ``View(results=DIR)`` reads a ``caap bench --out`` folder.
Size: about 4·K·gh·gw·(methods + blanks·blocks per swept method) + L·H·T² (attention, uint8 before deflate)
bytes per image, times 4/3 for base64 (README, "Viewer").
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from analysis.viewer.data import BLANKS, ImageData, SWEEP_METHODS, check_classifier, image_data, model_info, \
    payload, used_names
from analysis.viewer.html import iframe, render

DEFAULT_METHODS = ("caap", "gae", "grad-cam", "rollout", "ixg+", "t-attr")
__all__ = ["View", "view", "DEFAULT_METHODS", "BLANKS", "SWEEP_METHODS"]


def _methods(methods) -> list[str]:
    """Canonical method specs (``NAME[:KEY=VALUE...]``, :func:`caap.registry.check_method_specs`)."""
    from caap.registry import check_method_specs, list_methods

    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    names = list(methods or [])
    unknown = [m for m in names if not isinstance(m, str) or m.split(":")[0].strip() not in list_methods()]
    if not names or unknown:
        raise ValueError(f"methods: unknown method(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"registered: {', '.join(list_methods())}")
    return check_method_specs(names, "methods")


def _inputs(model, images, names) -> list[tuple[str, torch.Tensor]]:
    """``[(name, x [1, chan, H, W])]`` from a tensor batch (the model's input) or files / PIL images."""
    from caap.cli import blank_colour, flatten_alpha, read_image

    if isinstance(images, torch.Tensor):
        model.check_images(images)
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty [batch, chan, H, W] tensor; got shape {tuple(images.shape)}")
        xs = [images[i:i + 1] for i in range(images.shape[0])]
        default = [f"image {i}" for i in range(len(xs))]
    else:
        if isinstance(images, (str, Path)) or hasattr(images, "convert"):  # one file or one PIL image
            images = [images]
        if not isinstance(images, Sequence) or not images:
            raise ValueError(f"images must be a tensor, or a non-empty list of files or PIL images; got {images!r}")
        xs, default = [], []
        for i, item in enumerate(images):
            if isinstance(item, (str, Path)):
                pil, label = read_image(Path(item)), Path(item).name
            elif hasattr(item, "convert"):
                pil, label = item, f"image {i}"
            else:
                raise ValueError(f"images[{i}] must be a file path or a PIL image; got {type(item).__name__}")
            pil = pil if pil.mode in ("RGB", "RGBA") else pil.convert("RGB")
            pil = flatten_alpha(pil, blank_colour("white", model.cfg.mean))  # transparent pixels: white
            xs.append(model.transform(pil)[None])
            default.append(label)
    if names is not None and len(names) != len(xs):
        raise ValueError(f"names must give one name per image ({len(xs)}); got {len(names)}")
    param = next(model.parameters())
    return [(str(n), x.to(param.device, param.dtype)) for n, x in zip(names or default, xs)]


class View:
    """The viewer page for ``images`` under ``model`` (and/or the ``caap bench`` folder ``results``).

    ``methods``: registry names (a list or "caap,gae"); ``classes``: top-K predicted classes with maps;
    ``sweep``: CAAP-family methods get a map per last patched block (``sweep_ends``, default every block) and
    blank (``sweep_blanks``); ``attention`` / ``lens``: store the patterns / the logit lens (the patterns are
    most of the file: L·H·T² bytes before compression). ``limit``: first N images of ``results``.
    Cost per image: K maps per method + blanks × blocks CAAP runs per swept method + 2 forwards.
    """

    def __init__(self, model=None, images=None, *, methods: Sequence[str] | str = DEFAULT_METHODS, classes: int = 5,
                 names: Sequence[str] | None = None, results: str | Path | None = None, sweep: bool = True,
                 sweep_ends: Sequence[int] | None = None, sweep_blanks: Sequence[str] = BLANKS,
                 attention: bool = True, lens: bool = True, limit: int | None = None, title: str | None = None):
        from caap.validation import check_int

        classes = check_int(classes, "classes", low=1)
        if limit is not None:
            limit = check_int(limit, "limit", low=1)
        if images is None and results is None:
            raise ValueError("give images (with a model) or results (a `caap bench --out` folder), or both")
        if images is not None and model is None:
            raise ValueError("images need a model to explain them (model=HookedViT...)")
        self.images: list[ImageData] = []
        doc = {"version": 1, "title": title, "model": None, "methods": [], "class_names": {}, "metrics": None,
               "subtitle": None}
        if images is not None:
            check_classifier(model)
            self.methods = _methods(methods)
            with torch.inference_mode(False):
                for name, x in _inputs(model, images, names):
                    self.images.append(image_data(model, x, name, self.methods, classes, sweep=sweep,
                                                  sweep_ends=sweep_ends, sweep_blanks=tuple(sweep_blanks),
                                                  attention=attention, lens=lens))
            doc["model"] = model_info(model)
            doc["methods"] = self.methods
        else:
            self.methods = []
        self.run = None
        if results is not None:
            from analysis.viewer.results import METRIC_KEYS, results_images

            self.run, extra = results_images(Path(results), limit)
            self.images += extra
            doc["metrics"] = list(METRIC_KEYS)
            doc["subtitle"] = (f"caap bench: {self.run.get('model')} on {self.run.get('dataset')} "
                               f"({len(extra)} images, methods {', '.join(self.run.get('methods') or [])})")
        from analysis.viewer.data import class_names

        names_all = class_names(model) if model is not None else []
        doc["class_names"] = used_names(names_all, self.images)
        doc["title"] = title or ("caap viewer: " + (doc["model"]["name"] if doc["model"] else "caap bench results"))
        doc["images"] = [payload(d) for d in self.images]
        self.doc = doc
        self.html = render(doc)

    def _repr_html_(self) -> str:
        return iframe(self.html)

    def save(self, path: str | Path) -> Path:
        """Write the page (UTF-8); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html, encoding="utf-8")
        return path

    def __len__(self) -> int:
        return len(self.html.encode("utf-8"))


def view(model, images, methods: Sequence[str] | str = DEFAULT_METHODS, classes: int = 5, **options) -> View:
    """``View(model, images, methods=methods, classes=classes, **options)``."""
    return View(model, images, methods=methods, classes=classes, **options)

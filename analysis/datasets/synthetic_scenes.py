"""Procedural scenes whose class is caused by one known object (issue 22): the ground-truth benchmark's generator.

Every object is a combination of a shape, a texture and a colour. Eight combinations are the classes'
**causal objects** (:data:`CLASSES`); every other combination drawn is a **distractor** chosen among the
**look-alikes**: combinations that share two of their three features with some class's causal object (so no
single feature decides the class; the model must bind all three). A ``single`` scene holds one causal object
and 1..cells-1 distractors; a ``pair`` scene holds two causal objects of different classes (``label`` names the
first, ``label2`` the second) and 0..cells-2 distractors. Objects sit in distinct cells of a grid of 32-px
cells (random cell, position inside it and scale), so instance masks are disjoint by construction and never
clipped; no anti-aliasing, so a mask is exactly the set of pixels its object painted. Backgrounds are
desaturated and textured (smooth noise, a soft wave grating, grain).

Cost: sampling + rendering is vectorized over images (numpy, loop over the <= cells object slots only);
1000 images at 64 px take well under a second (measured in the README).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields

import numpy as np
from jaxtyping import Float, Int, UInt8

SHAPES = ("circle", "square", "triangle", "cross")
TEXTURES = ("solid", "stripes", "checker")
COLOURS = {"red": (0.92, 0.14, 0.10), "green": (0.10, 0.78, 0.22), "blue": (0.16, 0.32, 0.96),
           "yellow": (0.96, 0.86, 0.10)}
COLOUR_NAMES = tuple(COLOURS)
# the causal object of each class: (shape, texture, colour); every feature value is used by two classes
CLASSES = (("circle", "solid", "red"), ("circle", "stripes", "blue"), ("square", "checker", "red"),
           ("square", "solid", "green"), ("triangle", "stripes", "green"), ("triangle", "checker", "yellow"),
           ("cross", "solid", "blue"), ("cross", "stripes", "yellow"))
# the classifier's outputs: one per causal object, then NONE = "no causal object in the scene" (training shows
# scenes whose causal object was painted over, so removing it has somewhere to go: the intervention check)
NONE = len(CLASSES)
CLASS_NAMES = tuple("-".join(c) for c in CLASSES) + ("none",)
CELL = 32          # pixels per layout cell
PERIOD = 3         # texture half-period in pixels
OFF = 0.35         # brightness of a texture's dark phase
RADIUS = (0.28, 0.42)  # object radius as a fraction of the cell


def combo_id(shape: int, texture: int, colour: int) -> int:
    return (shape * len(TEXTURES) + texture) * len(COLOURS) + colour


def _ids(combo: tuple[str, str, str]) -> tuple[int, int, int]:
    return SHAPES.index(combo[0]), TEXTURES.index(combo[1]), COLOUR_NAMES.index(combo[2])


CLASS_IDS = np.array([_ids(c) for c in CLASSES])                       # [class, 3] feature indices
_ALL = np.array(list(itertools.product(range(len(SHAPES)), range(len(TEXTURES)), range(len(COLOURS)))))
_SHARED = (_ALL[:, None, :] == CLASS_IDS[None]).sum(-1)               # [combo, class] features in common
LOOKALIKE = _SHARED == 2                                              # combo resembles class (2 of 3 features)
DISTRACTORS = _ALL[LOOKALIKE.any(1) & ~(_SHARED == 3).any(1)]          # [n, 3]: look-alikes, never a class


def lookalike_classes(shape: int, texture: int, colour: int) -> tuple[int, ...]:
    """The classes whose causal object shares exactly two features with this combination."""
    return tuple(np.flatnonzero(LOOKALIKE[combo_id(shape, texture, colour)]).tolist())


def class_of(shape: int, texture: int, colour: int) -> int | None:
    """The class whose causal object this combination is, or None (the rule: the label is this of the one
    causal object; distractors have none)."""
    hit = np.flatnonzero((CLASS_IDS == (shape, texture, colour)).all(1))
    return int(hit[0]) if hit.size else None


@dataclass
class Scenes:
    """N scenes with K object slots each. Slots ``[0, n_causal)`` hold the causal objects (slot 0 the
    labelled one), later slots distractors; ``present`` False marks an empty slot. ``bg`` is the background
    layer every object is painted over (so replacing an object by background is exact)."""
    shape: Int[np.ndarray, "N K"]
    texture: Int[np.ndarray, "N K"]
    colour: Int[np.ndarray, "N K"]
    tint: Float[np.ndarray, "N K 3"]
    cx: Float[np.ndarray, "N K"]
    cy: Float[np.ndarray, "N K"]
    radius: Float[np.ndarray, "N K"]
    present: np.ndarray  # bool [N, K]
    label: Int[np.ndarray, " N"]
    label2: Int[np.ndarray, " N"]  # -1 for single scenes
    n_causal: int
    bg: Float[np.ndarray, "N H W 3"]

    def __len__(self) -> int:
        return len(self.label)

    def take(self, index) -> "Scenes":
        """A subset of the scenes (numpy index)."""
        return Scenes(**{f.name: (getattr(self, f.name) if f.name == "n_causal" else getattr(self, f.name)[index])
                         for f in fields(self)})


def _check(size: int, n: int, kind: str) -> int:
    if kind not in ("single", "pair"):
        raise ValueError(f"kind must be 'single' or 'pair'; got {kind!r}")
    if not isinstance(size, (int, np.integer)) or size < 2 * CELL or size % CELL:
        raise ValueError(f"size must be a multiple of {CELL} and >= {2 * CELL} pixels; got {size!r}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    return size // CELL


def _background(rng: np.random.Generator, n: int, size: int) -> Float[np.ndarray, "N H W 3"]:
    """Desaturated textured backgrounds: grey level + small tint, bilinear 4x4 noise, a soft wave grating,
    grain. Values stay in [0.1, 0.8], away from the objects' saturated colours."""
    base = rng.uniform(0.3, 0.6, (n, 1, 1, 1)) + rng.uniform(-0.05, 0.05, (n, 1, 1, 3))
    knots = rng.uniform(-0.12, 0.12, (n, 4, 4, 3)).astype(np.float32)
    t = np.linspace(0, 3, size, dtype=np.float32)
    interp = np.clip(1 - np.abs(t[:, None] - np.arange(4, dtype=np.float32)[None]), 0, None)  # [H, 4] weights
    smooth = interp @ (interp @ knots.transpose(0, 3, 2, 1)).transpose(0, 1, 3, 2)          # [N, 3, H, W]
    theta = rng.uniform(0, np.pi, (n, 1, 1)).astype(np.float32)
    wavelength = rng.uniform(8, 20, (n, 1, 1)).astype(np.float32)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    wave = 0.05 * np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / wavelength)
    grain = rng.uniform(-0.03, 0.03, (n, size, size, 1)).astype(np.float32)
    out = base.astype(np.float32) + smooth.transpose(0, 2, 3, 1) + wave[..., None] + grain
    return np.clip(out, 0.1, 0.8)


def sample_scenes(n: int, seed, size: int = 64, kind: str = "single") -> Scenes:
    """``n`` random scenes from ``np.random.default_rng(seed)`` (any seed numpy accepts, e.g. ``[seed, 1]``)."""
    grid = _check(size, n, kind)
    cells = grid * grid
    rng = np.random.default_rng(seed)
    n_causal = 1 if kind == "single" else 2
    k = cells
    label = rng.integers(0, len(CLASSES), n)
    label2 = np.full(n, -1)
    if kind == "pair":
        label2 = (label + rng.integers(1, len(CLASSES), n)) % len(CLASSES)  # a different class
    n_dis = rng.integers(1 if kind == "single" else 0, cells - n_causal + 1, n)
    present = np.arange(k)[None] < (n_causal + n_dis)[:, None]
    feats = DISTRACTORS[rng.integers(0, len(DISTRACTORS), (n, k))]       # [N, K, 3]
    feats[:, 0] = CLASS_IDS[label]
    if kind == "pair":
        feats[:, 1] = CLASS_IDS[label2]
    cell = np.argsort(rng.random((n, cells)), axis=1)[:, :k]              # distinct cells
    radius = rng.uniform(*RADIUS, (n, k)) * CELL
    cx = (cell % grid) * CELL + radius + rng.random((n, k)) * (CELL - 2 * radius)
    cy = (cell // grid) * CELL + radius + rng.random((n, k)) * (CELL - 2 * radius)
    tint = rng.uniform(0.85, 1.08, (n, k, 3))
    return Scenes(feats[..., 0], feats[..., 1], feats[..., 2], tint, cx, cy, radius, present, label, label2,
                  n_causal, _background(rng, n, size))


def _shape_masks(u, v, shape):
    circle = u * u + v * v <= 1.0
    square = np.maximum(np.abs(u), np.abs(v)) <= 0.82
    triangle = (v >= -0.95) & (v <= 0.85) & (np.abs(u) <= (v + 0.95) * 0.95 / 1.8)
    cross = ((np.abs(u) <= 0.32) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.32) & (np.abs(u) <= 0.95))
    s = shape[:, None, None]
    return np.where(s == 0, circle, np.where(s == 1, square, np.where(s == 2, triangle, cross)))


def _texture_on(dx, dy, texture):
    stripes = ((dx + dy) // PERIOD) % 2 == 0
    checker = ((dx // PERIOD) + (dy // PERIOD)) % 2 == 0
    t = texture[:, None, None]
    return np.where(t == 0, True, np.where(t == 1, stripes, checker))


def render(scenes: Scenes, drop: np.ndarray | None = None
           ) -> tuple[UInt8[np.ndarray, "N H W 3"], UInt8[np.ndarray, "N H W"]]:
    """The images and their instance maps (0 background, k + 1 the object in slot k). ``drop`` (bool
    ``[N, K]``): slots painted as background (the intervention "replace this object's pixels with
    background"; the instance map still shows where they were). Each object is drawn inside its own cell
    only (it never leaves it), so the cost is one image area per scene."""
    n, size = len(scenes), scenes.bg.shape[1]
    grid = size // CELL
    # [N, cell, CELL, CELL, ...] views of the image and instance map, one block per layout cell
    img = scenes.bg.reshape(n, grid, CELL, grid, CELL, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, -1, CELL, CELL, 3)
    img = img.copy()
    inst = np.zeros((n, grid * grid, CELL, CELL), np.uint8)
    y, x = np.mgrid[0:CELL, 0:CELL].astype(np.float32)
    palette = np.array([COLOURS[c] for c in COLOUR_NAMES], np.float32)
    rows = np.arange(n)
    for k in range(scenes.shape.shape[1]):
        col, row = scenes.cx[:, k] // CELL, scenes.cy[:, k] // CELL
        cell = (row * grid + col).astype(int)
        cx = (scenes.cx[:, k] - col * CELL).astype(np.float32)[:, None, None]   # centre inside the cell
        cy = (scenes.cy[:, k] - row * CELL).astype(np.float32)[:, None, None]
        r = scenes.radius[:, k].astype(np.float32)[:, None, None]
        u, v = (x + 0.5 - cx) / r, (y + 0.5 - cy) / r
        mask = _shape_masks(u, v, scenes.shape[:, k]) & scenes.present[:, k, None, None]
        # texture phase from the absolute centre pixel, so it is the same wherever the cell is
        on = _texture_on(x.astype(int) - np.floor(cx).astype(int), y.astype(int) - np.floor(cy).astype(int),
                         scenes.texture[:, k])
        colour = np.clip(palette[scenes.colour[:, k]] * scenes.tint[:, k], 0, 1).astype(np.float32)
        pixels = colour[:, None, None, :] * np.where(on, np.float32(1), np.float32(OFF))[..., None]
        block = inst[rows, cell]
        inst[rows, cell] = np.where(mask, k + 1, block)
        if drop is not None:
            mask = mask & ~drop[:, k, None, None]
        img[rows, cell] = np.where(mask[..., None], pixels, img[rows, cell])
    img = img.reshape(n, grid, grid, CELL, CELL, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, size, size, 3)
    inst = inst.reshape(n, grid, grid, CELL, CELL).transpose(0, 1, 3, 2, 4).reshape(n, size, size)
    return np.round(img * 255).astype(np.uint8), inst


def generate(n: int, seed, size: int = 64, kind: str = "single"):
    """``(scenes, images, instances)`` of :func:`sample_scenes` + :func:`render`."""
    scenes = sample_scenes(n, seed, size, kind)
    return (scenes, *render(scenes))

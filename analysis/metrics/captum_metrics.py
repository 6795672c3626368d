"""Infidelity and Max-Sensitivity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations"),
computed by Captum's ``captum.metrics.infidelity`` / ``sensitivity_max`` themselves (the library is called
directly; nothing is reimplemented here).

Settings (recorded in ``run.json``): the forward is the softmax probability of the explained class; the
map is bilinearly upsampled to the image and repeated over the colour channels (one value per pixel, as
the patch map gives). ``infidelity``: Gaussian noise I ~ N(0, σ² = 0.1²) in the model's normalized input
space, perturbed input x − I (Captum's documented noise perturbation), 16 samples, ``normalize=True``
(Captum's optimal rescaling of the map, so the map's units do not matter); lower is better; cost 16
forwards per map + 1. ``max-sensitivity``: Captum's default perturbation (uniform in the L∞ ball of
radius 0.02, normalized input space), 10 samples, Frobenius norm of the map difference relative to the
map (Captum's ``sensitivity_max``); lower is better; cost 10 explanations per map (the method's own
cost each). Noise is seeded per image (bench ``--seed`` and the image name) without touching the global
RNG. Batches of ``caap.masking.batch_size_for`` the memory budget (Captum's ``max_examples_per_batch``).
"""
from __future__ import annotations

import torch

from analysis.metrics.curves import to_pixels
from analysis.metrics.random_logit import image_seed
from analysis.metrics.registry import Context, Metric
from caap.masking import batch_size_for

INFIDELITY_SIGMA = 0.1
INFIDELITY_SAMPLES = 16
SENSITIVITY_RADIUS = 0.02
SENSITIVITY_SAMPLES = 10


def _batch(ctx: Context, samples: int) -> int:
    """Captum's ``max_examples_per_batch``: the engine's batch, at most the perturbed copies of one image."""
    return min(ctx.batch_size or batch_size_for(ctx.model, ctx.memory_budget_gb), samples)


def infidelity_score(ctx: Context, names, maps) -> list[dict]:
    from captum.metrics import infidelity

    target = torch.tensor([ctx.target], device=ctx.image.device)
    size, chans = tuple(ctx.image.shape[-2:]), ctx.image.shape[1]

    def forward(x):
        return ctx.model(x).float().softmax(-1)

    rows = []
    for k, m in enumerate(maps):
        gen = torch.Generator(device=ctx.image.device).manual_seed(image_seed(ctx.seed, ctx.sample) + k)

        def perturb(x):
            noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * INFIDELITY_SIGMA
            return noise, x - noise

        attribution = to_pixels(m.float(), size)[:, None].expand(-1, chans, -1, -1).to(ctx.image.device)
        with torch.no_grad():
            value = infidelity(forward, perturb, ctx.image, attribution, target=target,
                               n_perturb_samples=INFIDELITY_SAMPLES,
                               max_examples_per_batch=_batch(ctx, INFIDELITY_SAMPLES),
                               normalize=True)
        rows.append({"infidelity": float(value[0])})
    return rows


def sensitivity_score(ctx: Context, names, maps) -> list[dict]:
    from captum.metrics import sensitivity_max

    target = torch.tensor([ctx.target], device=ctx.image.device)
    rows = []
    for k, name in enumerate(names):
        def explain(x, target):  # Captum may pass (and then expects) a 1-tuple of inputs
            single = x[0] if isinstance(x, tuple) else x
            out = ctx.explain[name](single, target).float().detach()
            return (out,) if isinstance(x, tuple) else out

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(image_seed(ctx.seed, ctx.sample) + k)
            value = sensitivity_max(explain, ctx.image, perturb_radius=SENSITIVITY_RADIUS,
                                    n_perturb_samples=SENSITIVITY_SAMPLES,
                                    max_examples_per_batch=_batch(ctx, SENSITIVITY_SAMPLES),
                                    target=target)
        rows.append({"max_sens": float(value[0])})
    return rows


def infidelity_metric() -> Metric:
    return Metric("infidelity", {"infidelity": "Infidelity ↓"}, frozenset({"infidelity"}), score=infidelity_score,
                  settings={"library": "captum.metrics.infidelity", "noise": f"gaussian sigma {INFIDELITY_SIGMA}",
                            "n_perturb_samples": INFIDELITY_SAMPLES, "normalize": True, "score": "softmax probability",
                            "map": "bilinear, repeated over channels"})


def sensitivity_metric() -> Metric:
    return Metric("max-sensitivity", {"max_sens": "MaxSens ↓"}, frozenset({"max_sens"}), score=sensitivity_score,
                  settings={"library": "captum.metrics.sensitivity_max", "perturb_radius": SENSITIVITY_RADIUS,
                            "n_perturb_samples": SENSITIVITY_SAMPLES, "norm_ord": "fro"})

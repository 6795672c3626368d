import numpy as np
import torch
from scipy.optimize import LinearConstraint, minimize

from caap.baselines.mda import MDA, convex_projection, reference_blur, reference_kernel_1d
from tests.caap.baselines.toy import one_patch_setup
from tests.conftest import make_hooked, random_images


def slow_projection(r):
    n = len(r)
    second = np.array([[1.0 if j == i else -2.0 if j == i + 1 else 1.0 if j == i + 2 else 0.0 for j in range(n)]
                       for i in range(n - 2)])
    ends = np.zeros((2, n))
    ends[0, 0] = ends[1, -1] = 1
    cons = [LinearConstraint(second, 0, np.inf), LinearConstraint(ends, r[[0, -1]], r[[0, -1]]),
            LinearConstraint(np.eye(n), 0, 1)]
    return minimize(lambda y: ((y - r) ** 2).sum(), np.linspace(r[0], r[-1], n), method="trust-constr",
                    constraints=cons, options={"gtol": 1e-12, "xtol": 1e-12, "maxiter": 5000}).x


def test_convex_projection_matches_another_solver():
    rng = np.random.default_rng(0)
    for _ in range(3):
        r = np.minimum.accumulate(np.clip(np.r_[1.0, 1 - np.cumsum(rng.uniform(0, 0.3, 8))], 0, 1))
        y = convex_projection(r)
        slow = slow_projection(r)
        assert np.allclose(y, slow, atol=1e-3)  # trust-constr stops early; SLSQP must be at least as good
        assert ((y - r) ** 2).sum() <= ((slow - r) ** 2).sum() + 1e-9
        assert np.all(np.diff(y, 2) >= -1e-9) and y[0] == r[0] and abs(y[-1] - r[-1]) < 1e-9
        assert ((y - r) ** 2).sum() <= ((np.linspace(r[0], r[-1], len(r)) - r) ** 2).sum() + 1e-12


def gkern(size, sigma):
    """The reference's kernel as its MASTestFunctions.gkern defines it: scipy's Gaussian filter of a
    centred unit impulse."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros((size, size))
    impulse[size // 2, size // 2] = 1.0
    return gaussian_filter(impulse, sigma)


def test_blur_kernel_is_the_references_gkern():
    for size, sigma in [(31, 31.0), (5, 2.0), (7, 0.8), (33, 33.0), (101, 101.0), (9, 40.0)]:
        k1 = reference_kernel_1d(size, sigma).numpy()
        assert np.abs(np.outer(k1, k1) - gkern(size, sigma)).max() <= 1e-15, (size, sigma)
    k = gkern(31, 31.0)
    assert k.max() / k.min() < 1.001 and abs(k.sum() - 1) < 1e-12  # nearly a flat box, not a Gaussian
    x = np.arange(31) - 15.0
    plain = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 31.0 ** 2))  # what the blur used to be
    assert np.abs(plain / plain.sum() - k).max() > 1e-4


def test_blur_is_a_zero_padded_per_channel_correlation_with_gkern():
    from scipy.ndimage import correlate

    images = torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for size, sigma in [(31, 31.0), (7, 1.5)]:
        got = reference_blur(images, size, sigma)
        expected = np.stack([np.stack([correlate(images[b, c].numpy(), gkern(size, sigma), mode="constant", cval=0.0)
                                       for c in range(3)]) for b in range(2)])
        assert got.shape == images.shape
        assert np.abs(got.numpy() - expected).max() <= 1e-12
    assert reference_blur(images.float(), 31, 31.0).dtype == torch.float32


def probability(model, x, t):
    with torch.no_grad():
        return float(model(x[None]).softmax(-1)[0, t])


def patch_mask(model, patches):
    m = torch.zeros(4, 4)
    for p in patches:
        m.view(-1)[p] = 1
    return m.repeat_interleave(16, 0).repeat_interleave(16, 1)


def deletion_auc(model, image, t, scores):
    order = torch.argsort(scores.flatten(), descending=True, stable=True).tolist()
    curve = [probability(model, image * (1 - patch_mask(model, order[:k])), t) for k in range(len(order) + 1)]
    return np.trapezoid(curve, dx=1 / (len(curve) - 1))


def test_greedy_steps_match_a_loop_and_the_objective_improves_on_the_prior():
    model = make_hooked("vit")
    image = random_images(model, 1, seed=6)
    t = 4
    prior = torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(0))
    mda = MDA(model, prior=lambda x, target: prior, batch_size=5)
    result = mda.attribute(image, t)
    hist = mda.last_history[0]
    # phase 1a by hand: best of the first 8 unrevealed prior-ranked patches, on the blurred image
    blurred = reference_blur(image)[0]  # the default blur_size=31, blur_sigma=31
    ranking = torch.argsort(prior.flatten(), descending=True, stable=True).tolist()
    chosen = []
    for step, patch in enumerate(hist["inserted"]):
        candidates = [p for p in ranking if p not in chosen][:8]
        probs = [probability(model, blurred + patch_mask(model, chosen + [p]) * (image[0] - blurred), t)
                 for p in candidates]
        assert candidates[int(np.argmax(probs))] == patch
        assert np.isclose(max(probs), hist["insertion_responses"][step], atol=1e-5)
        chosen.append(patch)
    # the objective: the deletion curve of the optimized order is below the prior order's
    optimized = -torch.tensor(hist["order"]).argsort().float()  # highest = deleted first
    assert deletion_auc(model, image[0], t, optimized) <= deletion_auc(model, image[0], t, prior) + 1e-6
    assert result.shape == (1, 4, 4) and torch.isfinite(result).all()
    assert np.all(np.diff(hist["convex_curve"], 2) >= -1e-9)


def test_mda_ranks_the_informative_patch_first_and_is_deterministic():
    model, patch, image, target = one_patch_setup()
    flat = torch.zeros(1, 4, 4)
    a = MDA(model, prior=lambda x, t: flat).attribute(image, target)
    assert int(a.flatten().argmax()) == patch
    assert torch.equal(a, MDA(model, prior=lambda x, t: flat).attribute(image, target))


def test_default_prior_under_an_inference_mode_caller():
    model = make_hooked("vit")
    images = random_images(model, 1, seed=2)
    mda = MDA(model, max_candidates=3)  # prior "tam" needs gradients
    with torch.inference_mode():
        inside = mda.attribute(images, 1)
    assert torch.allclose(inside, mda.attribute(images, 1), atol=1e-6)

import pytest
import torch

from caap import masking
from caap.masking import batch_size_for, iter_masked_scores, masked_scores, per_sample_bytes
from tests.conftest import make_hooked, random_images


def loop_scores(model, image, masks, reference, target, kind):
    out = []
    for i in range(masks.shape[0]):
        ref = reference[i] if reference.ndim == 4 else reference
        x = image * masks[i] + ref * (1 - masks[i])  # written the other way round than the engine
        logits = model(x[None])[0]
        out.append((torch.exp(logits[target]) / torch.exp(logits).sum()) if kind == "prob" else logits[target])
    return torch.stack(out)


def test_masked_scores_match_a_loop_for_tensor_and_lazy_masks():
    model = make_hooked("dinov2")
    image, reference = random_images(model, 2, seed=3)
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(11, *model.cfg.image_size, generator=g)
    with torch.no_grad():
        expected = loop_scores(model, image, masks, reference, 3, "prob")
        expected_logit = loop_scores(model, image, masks, reference, 3, "logit")
    got = masked_scores(model, image, masks, reference, 3, batch_size=4)
    lazy = masked_scores(model, image, lambda lo, hi: masks[lo:hi, None], reference, torch.tensor(3), n_masks=11,
                         batch_size=3)
    assert torch.allclose(got, expected, atol=1e-6) and torch.allclose(lazy, expected, atol=1e-6)
    assert torch.allclose(masked_scores(model, image, masks, reference, 3, kind="logit"), expected_logit, atol=1e-5)
    assert not got.is_inference()  # usable by autograd code afterwards
    refs = random_images(model, 11, seed=5)
    with torch.no_grad():
        per_ref = loop_scores(model, image, masks, refs, 2, "logit")
    with torch.inference_mode():  # works under an inference-mode caller
        got = masked_scores(model, image, masks[:, None], refs, 2, kind="logit", batch_size=5)
    assert torch.allclose(got, per_ref, atol=1e-5)
    chunks = [(lo, hi, m.shape) for lo, hi, m, _ in iter_masked_scores(model, image, masks, reference, 0, batch_size=5)]
    assert chunks == [(0, 5, (5, 1, 56, 56)), (5, 10, (5, 1, 56, 56)), (10, 11, (1, 1, 56, 56))]


def test_batch_size_is_not_capped_off_cpu(monkeypatch):
    model = make_hooked("vit")
    gb = per_sample_bytes(model) / 2**30
    monkeypatch.setattr(masking, "_param", lambda m: torch.zeros((), device="meta"))
    assert batch_size_for(model, 1000 * gb) == 1000


def test_batch_size_from_the_memory_budget_and_generic_modules():
    model = make_hooked("vit")
    cfg = model.cfg
    assert per_sample_bytes(model) > 4 * cfg.n_tokens * (2 * cfg.d_mlp + cfg.n_heads * cfg.n_tokens)
    gb = per_sample_bytes(model) / 2**30
    assert [batch_size_for(model, k * gb) for k in (1, 5, 10.5)] == [1, 5, 10]  # what fits the budget ...
    assert batch_size_for(model, 1000 * gb) == masking.CPU_MAX_BATCH  # ... at most CPU_MAX_BATCH on CPU
    assert batch_size_for(model, 1e-9) == 1
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 5))
    image = torch.randn(3, 16, 16)
    masks = (torch.rand(7, 16, 16) > 0.5).float()
    with torch.no_grad():
        expected = loop_scores(cnn, image, masks, torch.zeros(3, 16, 16), 1, "prob")
    assert torch.allclose(masked_scores(cnn, image, masks, torch.zeros(3, 16, 16), 1), expected, atol=1e-6)
    custom = masked_scores(cnn, image, masks, torch.zeros(3, 16, 16), None, kind=lambda out: out.sum(-1))
    assert custom.shape == (7,)


def test_bad_inputs_raise_one_clear_error():
    model = make_hooked("vit")
    image = random_images(model, 1)[0]
    with pytest.raises(ValueError, match="masks must have shape"):
        masked_scores(model, image, torch.ones(3, 8, 8), image, 0)
    with pytest.raises(ValueError, match="n_masks"):
        masked_scores(model, image, lambda lo, hi: torch.ones(hi - lo, 64, 64), image, 0)
    with pytest.raises(ValueError, match="reference"):
        masked_scores(model, image, torch.ones(3, 64, 64), image[:1], 0)
    with pytest.raises(ValueError, match="kind"):
        masked_scores(model, image, torch.ones(3, 64, 64), image, 0, kind="softmax")
    with pytest.raises(ValueError, match="target"):
        masked_scores(model, image, torch.ones(3, 64, 64), image, 99)

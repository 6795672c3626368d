"""HookedViT.forward_from_resid names a residual stream of the wrong width or rank (issue 18; it failed deep
inside the first block's LayerNorm), and still takes any number of positions (token dropping)."""
import pytest
import torch

from tests.conftest import make_hooked, random_images

MODEL = make_hooked("vit")  # d_model 48, 17 tokens


@pytest.mark.parametrize("resid,error,regex", [
    (torch.zeros(2, 17, 47), ValueError, r"resid must be a \[batch, pos, d_model=48\] tensor .*got shape \(2, 17, 47\)"),
    (torch.zeros(17, 48), ValueError, r"resid must be a \[batch, pos, d_model=48\] tensor .*got shape \(17, 48\)"),
    (torch.zeros(1, 2, 17, 48), ValueError, r"got shape \(1, 2, 17, 48\)"),
    ([[0.0] * 48], TypeError, r"resid must be a \[batch, pos, d_model=48\] tensor .*got list"),
])
def test_wrong_residual_stream_is_refused(resid, error, regex):
    with pytest.raises(error, match=regex):
        MODEL.forward_from_resid(resid, 1)


def test_start_layer_must_be_an_int_in_range():
    resid = MODEL.embed(random_images(MODEL, 1))
    with pytest.raises(TypeError, match=r"start_layer must be an int >= 0; got True \(bool\)"):
        MODEL.forward_from_resid(resid, True)
    with pytest.raises(ValueError, match=r"start_layer must be in \[0, 3\]; got 4"):
        MODEL.forward_from_resid(resid, 4)


def test_fewer_positions_still_run():
    """Token dropping (MUTEX) resumes with CLS plus a subset of patches."""
    resid = MODEL.embed(random_images(MODEL, 2))
    kept = resid[:, [0, 1, 5, 9]]
    assert MODEL.forward_from_resid(kept, 0).shape == (2, 7)
    assert torch.allclose(MODEL.forward_from_resid(resid, 0), MODEL(random_images(MODEL, 2)), atol=1e-5)

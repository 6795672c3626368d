import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion

from caap.baselines.occlusion import Occlusion
from tests.caap.baselines.toy import one_patch_setup
from tests.conftest import make_hooked, random_images


@pytest.mark.parametrize("window, stride, baseline", [(None, None, 0.0), (16, 8, 0.5), ((12, 20), (9, 7), -1.0)])
def test_occlusion_equals_captum(window, stride, baseline):
    model = make_hooked("vit")  # 64 px, 16 px patches
    images = random_images(model, 2, seed=7)
    target = torch.tensor([3, 5])
    ours = Occlusion(model, window=window, stride=stride, baseline=baseline, batch_size=9)
    got = ours.attribute_pixels(images, target)
    win = (16, 16) if window is None else ((window, window) if isinstance(window, int) else window)
    st = win if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    with torch.no_grad():
        expected = CaptumOcclusion(model).attribute(images, sliding_window_shapes=(3, *win), strides=(3, *st),
                                                    baselines=baseline, target=target,
                                                    perturbations_per_eval=32)
    assert torch.allclose(got, expected[:, 0], atol=1e-5)
    assert torch.allclose(expected[:, 0], expected[:, 2])
    assert torch.allclose(ours.attribute(images, target), torch.nn.functional.avg_pool2d(got[:, None], 16)[:, 0],
                          atol=1e-6)


def test_occlusion_ranks_the_informative_patch_first_and_rejects_gaps():
    model, patch, image, target = one_patch_setup()
    assert int(Occlusion(model, score="prob").attribute(image, target).flatten().argmax()) == patch
    with pytest.raises(ValueError, match="stride"):
        Occlusion(model, window=8, stride=12)

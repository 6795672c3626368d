import torch

from caap import GradCAM, SimpleDeletion, SimpleInsertion, blank_image
from tests.conftest import make_hooked, random_images


def region_mask(model, patches):
    ph, pw = model.cfg.patch_size
    mask = torch.zeros(1, 1, *model.cfg.image_size)
    for p in patches:
        r, c = model.layout.row_col(p)
        mask[..., r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = 1
    return mask


def test_simple_insertion_and_deletion_match_manual_images():
    model = make_hooked("dinov2")  # 4x4 grid of 14 px patches
    images = random_images(model, 2, seed=4)
    target = torch.tensor([1, 6])
    ins = SimpleInsertion(model, blank="black").attribute(images, target)
    dele = SimpleDeletion(model, blank="black").attribute(images, target)
    blank = blank_image(model, "black")
    patch = model.layout.patch_index(1, 2)
    mask = region_mask(model, [1, 2, 3, 5, 6, 7, 9, 10, 11])  # the 3x3 box around (1, 2)
    with torch.no_grad():
        inserted = model(blank + mask * (images - blank)).gather(1, target[:, None])[:, 0]
        deleted = model(images + mask * (blank - images)).gather(1, target[:, None])[:, 0]
        clean = model(images).gather(1, target[:, None])[:, 0]
    assert torch.allclose(ins[:, 1, 2], inserted, atol=1e-5)
    assert torch.allclose(dele[:, 1, 2], clean - deleted, atol=1e-5)
    assert ins.shape == dele.shape == (2, 4, 4) and patch == 6
    assert SimpleInsertion(model, chunk_size=5).attribute(images, target).allclose(
        SimpleInsertion(model).attribute(images, target), atol=1e-5)


def test_gradcam_matches_manual_autograd():
    model = make_hooked("vit")
    images = random_images(model, 2, seed=4)
    cam = GradCAM(model).attribute(images, target=2)
    acts = {}
    name = "blocks.2.ln1.hook_normalized"
    model.add_hook(name, lambda a, hook: acts.setdefault("a", a))
    logits = model(images)
    grads = torch.autograd.grad(logits[:, 2].sum(), acts["a"])[0][:, 1:]
    model.reset_hooks()
    expected = torch.relu((acts["a"][:, 1:] * grads.mean(1, keepdim=True)).sum(-1)).view(2, 4, 4)
    assert torch.allclose(cam, expected.detach(), atol=1e-6)
    assert cam.max() > 0
    model.requires_grad_(False)  # works with frozen weights too
    assert torch.allclose(GradCAM(model).attribute(images, target=2), cam, atol=1e-6)

"""CAAP for CNNs vs a hand-written forward-hook loop (one full forward per patch, every block input in the
range overwritten by hooks), on random ResNet-18 (torchvision and timm) and the other paper CNNs."""
from functools import lru_cache

import pytest
import timm
import torch
import torchvision
from torch import nn

from caap import get_method
from caap.blanks import blank_image
from caap.cnn import CNNCAAP
from caap.cnn_model import CNNClassifier
from vit_lens.loading import UnsupportedModelError


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights, every parameter and BatchNorm statistic perturbed (timm zero-inits the last BN of each
    residual block, which would switch the branches off)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.8, 1.2)
    return model.eval()


def box(row, col, grid, radius):
    return [(r, c) for r in range(row - radius, row + radius + 1) for c in range(col - radius, col + radius + 1)
            if 0 <= r < grid[0] and 0 <= c < grid[1]]


@lru_cache(maxsize=None)
def cells_of(patches, patch, image, stage):
    """Reference M_b(S) written with explicit loops over cells and patch boxes (patches: a tuple of (r, c))."""
    (H, W), (h, w) = image, stage
    mask = torch.zeros(h, w, dtype=torch.bool)
    for i in range(h):
        for j in range(w):
            y, x = (i + 0.5) * H / h, (j + 0.5) * W / w
            mask[i, j] = any(r * patch <= y < (r + 1) * patch and c * patch <= x < (c + 1) * patch for r, c in patches)
    for r, c in patches:  # the cell holding each patch centre
        cy, cx = (r + 0.5) * patch, (c + 0.5) * patch
        i = next(i for i in range(h) if i * H / h <= cy < (i + 1) * H / h)
        j = next(j for j in range(w) if j * W / w <= cx < (j + 1) * W / w)
        mask[i, j] = True
    return mask


def cache_outputs(model, modules, image):
    store = {}
    handles = [m.register_forward_hook(lambda mod, i, o, k=k: store.__setitem__(k, o.detach().clone()))
               for k, m in enumerate(modules)]
    with torch.no_grad():
        model(image)
    for h in handles:
        h.remove()
    return store


def reference_loop(model, modules, images, blank, target, patch, layers, radius=1, freeze=False):
    """One forward per (image, patch); hooks overwrite the outputs of ``modules[b]`` (= block input h^b)."""
    H, W = images.shape[2:]
    grid = (H // patch, W // patch)
    start, end = layers
    bl = cache_outputs(model, modules, blank)
    out = torch.zeros(images.shape[0], *grid)
    for n in range(images.shape[0]):
        src = cache_outputs(model, modules, images[n:n + 1])
        for row in range(grid[0]):
            for col in range(grid[1]):
                sel = tuple(box(row, col, grid, radius))

                def hook(mod, inp, o, b):
                    m = cells_of(sel, patch, (H, W), tuple(o.shape[2:]))
                    if b <= end:
                        return torch.where(m, src[b], bl[b])
                    return torch.where(m, o, bl[b])  # frozen context after l_e

                bs = list(range(start, end + 1)) + (list(range(end + 1, len(modules))) if freeze else [])
                handles = [modules[b].register_forward_hook(lambda mod, i, o, b=b: hook(mod, i, o, b)) for b in bs]
                with torch.no_grad():
                    out[n, row, col] = model(images[n:n + 1])[0, target[n]]
                for h in handles:
                    h.remove()
    return out


@pytest.fixture(scope="module")
def resnets():
    torch.manual_seed(0)
    return {"torchvision": perturbed(torchvision.models.resnet18(num_classes=6)),
            "timm": perturbed(timm.create_model("resnet18", pretrained=False, num_classes=6))}


def resnet_block_inputs(model):
    return [model.maxpool, model.layer1, model.layer2, model.layer3]


@pytest.mark.parametrize("source,px,n,patch,layers,radius,freeze", [
    ("torchvision", 64, 1, 16, None, 1, False), ("timm", 64, 1, 16, None, 1, False),
    ("timm", 32, 1, 8, (1, 2), 0, True), ("torchvision", 64, 1, 32, (0, 1), 0, False)])
def test_resnet18_matches_hook_loop(resnets, source, px, n, patch, layers, radius, freeze):
    """16 px patches on a stride-16 h^3 (one cell each), 8 px patches coarser than h^3 (centre cells) with
    the frozen context, 32 px patches owning several cells of h^1."""
    model = resnets[source]
    images = torch.randn(n, 3, px, px, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([1, 4])[:n]
    caap = CNNCAAP(model, image_size=px, patch_size=patch, layers=layers, radius=radius, blank="black",
                   freeze_context=freeze)
    got = caap.attribute(images, target)
    blank = blank_image(caap.model, "black")
    expected = reference_loop(model, resnet_block_inputs(model), images, blank, target, patch,
                              caap.layers, radius, freeze)
    assert caap.layers == (layers or (0, 3))
    assert got.shape == expected.shape == (n, px // patch, px // patch)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    assert got.std() > 1e-3  # the map is not constant: patches matter


def test_chunks_memory_budget_and_prob(resnets):
    model = resnets["timm"]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    opts = dict(image_size=32, patch_size=8, radius=0)  # K = 16 single-patch interventions
    full = CNNCAAP(model, **opts)
    assert full.chunk_size >= 16
    tiny = CNNCAAP(model, memory_budget_gb=1e-5, **opts)
    assert tiny.chunk_size < 16
    expected = full.attribute(images, 2)
    assert torch.allclose(tiny.attribute(images, 2), expected, atol=1e-5)
    assert torch.allclose(CNNCAAP(model, chunk_size=5, **opts).attribute(images, 2), expected, atol=1e-5)
    prob = CNNCAAP(model, score="prob", **opts).attribute(images, 2)
    assert (prob >= 0).all() and (prob <= 1).all()
    with torch.no_grad():
        pred = model(images).argmax(-1)
    assert torch.equal(full.attribute(images), full.attribute(images, pred))
    assert full.attribute_pixels(images, 2).shape == (2, 32, 32)
    with pytest.raises(ValueError, match=r"target must be None when score is a callable .*; got target=2"):
        CNNCAAP(model, score=lambda out: out[..., 0], **opts).attribute(images, 2)
    # each image is explained on its own: the batch result equals one image at a time
    assert torch.allclose(full.attribute(images[1:], 2)[0], expected[1], atol=1e-5)


def paper_cnns():
    """(name, builder, image px, module producing h^{l_e}=h^3) for the four paper CNN architectures."""
    return [
        ("resnet50", lambda: timm.create_model("resnet50", pretrained=False, num_classes=5), 64,
         lambda m: m.layer3),
        ("densenet161", lambda: timm.create_model("densenet161", pretrained=False, num_classes=5), 32,
         lambda m: m.features.denseblock3),
        ("vgg16", lambda: timm.create_model("vgg16", pretrained=False, num_classes=5), 32,
         lambda m: m.features[23]),
    ]


@pytest.mark.parametrize("name,build,px,site", paper_cnns(), ids=[c[0] for c in paper_cnns()])
def test_paper_cnn_architectures(name, build, px, site):
    model = perturbed(build())
    caap = CNNCAAP(model, image_size=px, selection="none")
    assert caap.layers == (0, 3) and caap.model.cfg.n_layers == 4
    assert tuple(caap.blank_maps[3].shape[2:]) == (px // 16, px // 16)  # h^3 at stride 16
    images = torch.randn(1, 3, px, px, generator=torch.Generator().manual_seed(7))
    got = caap.attribute(images, 3)
    assert got.shape == (1, px // 16, px // 16) and torch.isfinite(got).all()
    # patch (0, 1) by one hooked full forward: h^3 = source at that cell, blank elsewhere
    blank = blank_image(caap.model, "white")
    module = site(model)
    bl = cache_outputs(model, [module], blank)[0]
    src = cache_outputs(model, [module], images)[0]
    mask = torch.zeros_like(src[:, :1], dtype=torch.bool)
    mask[..., 0, 1] = True
    handle = module.register_forward_hook(lambda m, i, o: torch.where(mask, src, bl))
    with torch.no_grad():
        expected = model(images)[0, 3]
    handle.remove()
    assert torch.allclose(got[0, 0, 1], expected, atol=1e-4, rtol=1e-4)


def test_refusals_and_registry(resnets):
    with pytest.raises(UnsupportedModelError, match="unsupported CNN"):
        CNNClassifier(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        CNNCAAP(resnets["timm"], image_size=60)
    caap = CNNCAAP(resnets["timm"], image_size=64)
    with pytest.raises(ValueError, match="shape"):
        caap.attribute(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="layers"):
        CNNCAAP(resnets["timm"], image_size=64, layers=(0, 4))
    method = get_method("caap-cnn", resnets["timm"], image_size=64)
    assert isinstance(method, CNNCAAP)
    # a custom split that does not reproduce the forward is refused
    m = resnets["timm"]
    with pytest.raises(UnsupportedModelError, match="does not reproduce"):
        CNNClassifier(m, image_size=64, stem=nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool),
                      blocks=[m.layer1, m.layer2, m.layer3, m.layer4], head=lambda x: m.forward_head(x) + 1)


def test_simple_insertion_and_deletion_accept_a_cnn(resnets):
    """Both baselines on a wrapped CNN (any size) and on a raw CNN (wrapped at 224 px, 16-px patches)."""
    from caap import SimpleDeletion, SimpleInsertion

    model = resnets["torchvision"]
    wrapped = CNNClassifier(model, image_size=32, patch_size=8)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    target = torch.tensor([0, 5])
    ins = SimpleInsertion(wrapped, blank="black", radius=0).attribute(images, target)
    dele = SimpleDeletion(wrapped, blank="black", radius=0).attribute(images, target)
    blank = blank_image(wrapped, "black")
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:16, 16:24] = 1  # patch (1, 2) of the 4x4 grid
    with torch.no_grad():
        score = lambda x: model(x).gather(1, target[:, None])[:, 0]  # noqa: E731
        inserted, deleted, clean = score(blank + mask * (images - blank)), score(images + mask * (blank - images)), score(images)
    assert torch.allclose(ins[:, 1, 2], inserted, atol=1e-4)
    assert torch.allclose(dele[:, 1, 2], clean - deleted, atol=1e-4)
    raw = SimpleInsertion(model)
    assert raw.model.cfg.grid_size == (14, 14) and isinstance(raw.model, CNNClassifier)

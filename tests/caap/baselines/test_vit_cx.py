import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from caap.baselines.vit_cx import ViTCX, cluster_masks
from tests.caap.baselines.toy import one_patch_setup
from tests.conftest import make_hooked, random_images


def slow_masks(features, size, threshold):
    """Full-resolution masks, explicit cosine similarities, scipy's complete linkage."""
    d = features.shape[0]
    up = [F.interpolate(features[i][None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
          for i in range(d)]
    masks = torch.stack([(u - u.min()) / (u.max() - u.min()) for u in up]).double()
    dist = np.zeros((d, d))
    for i in range(d):
        for j in range(d):
            dist[i, j] = 0.0 if i == j else 1 - float(F.cosine_similarity(masks[i].flatten(), masks[j].flatten(), 0))
    labels = fcluster(linkage(squareform(dist, checks=False), "complete"), t=threshold, criterion="distance")
    groups = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    out = []
    for members in groups.values():
        total = sum(masks[i] for i in members)
        out.append((total - total.min()) / (total.max() - total.min()))
    return out, [frozenset(m) for m in groups.values()]


def partition(labels):
    groups = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), set()).add(i)
    return {frozenset(g) for g in groups.values()}


def test_clustering_matches_a_full_resolution_definition():
    model = make_hooked("vit")
    images = random_images(model, 1, seed=3)
    vitcx = ViTCX(model)
    _, feats = vitcx.features(images)
    for threshold in (0.1, 0.3):
        masks, labels = cluster_masks(feats[0].detach(), (64, 64), threshold)
        expected, groups = slow_masks(feats[0].detach(), (64, 64), threshold)
        assert partition(labels) == set(groups)
        assert 1 < len(groups) < 48
        got = {frozenset(np.flatnonzero(labels == lab)): m for lab, m in zip(np.unique(labels), masks)}
        for group, mask in zip(groups, expected):
            assert torch.allclose(got[group].double(), mask, atol=1e-5)


def test_scores_match_an_explicit_loop_and_are_seeded():
    model = make_hooked("dinov2")
    images = random_images(model, 2, seed=1)
    vitcx = ViTCX(model, distance_threshold=0.3, seed=4, batch_size=5)
    got = vitcx.attribute_pixels(images, target=torch.tensor([2, 5]))
    with torch.inference_mode():
        again = ViTCX(model, distance_threshold=0.3, seed=4, batch_size=5).attribute_pixels(images, torch.tensor([2, 5]))
    assert torch.equal(got, again)
    g = torch.Generator().manual_seed(4)
    _, feats = vitcx.features(images)
    for b, t in enumerate([2, 5]):
        masks, groups = slow_masks(feats[b].detach(), (56, 56), 0.3)
        order = [frozenset(np.flatnonzero(cluster_masks(feats[b].detach(), (56, 56), 0.3)[1] == lab))
                 for lab in range(len(masks))]
        masks = [masks[groups.index(o)].float() for o in order]  # the engine's cluster order
        noise = torch.randn(len(masks), 3, 56, 56, generator=g) * 0.1
        with torch.no_grad():
            p = lambda x: model(x[None]).softmax(-1)[0, t]  # noqa: E731
            clean = p(images[b])
            num, den = torch.zeros(56, 56), torch.zeros(56, 56)
            for i, m in enumerate(masks):
                weight = p(images[b] * m + noise[i] * (1 - m)) - p(images[b] + noise[i] * (1 - m)) + clean
                num += weight * m
                den += m
        assert torch.allclose(got[b], num / den / len(masks), atol=1e-5)


def test_vit_cx_ranks_the_informative_patch_first():
    model, patch, image, target = one_patch_setup(row=3, col=4, img_size=128)  # 8x8 grid, 2 blocks
    sal = ViTCX(model).attribute(image, target)
    assert int(sal.flatten().argmax()) == patch

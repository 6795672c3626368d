"""The ground-truth benchmark (issue 22): the generator's causal rule, masks and seeding, the folder written for
``caap bench``, the training script, and the committed checkpoint's recorded accuracy and causal check."""
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.datasets import get_dataset
from analysis.datasets import synthetic, synthetic_scenes as ss
from analysis.datasets.synthetic_check import causal_check
from analysis.train_synthetic import to_input, train
from vit_lens import HookedViT

CHECKPOINT = Path(__file__).resolve().parents[2] / "assets" / "synthetic_vit" / "model.safetensors"


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the checkpoint's recorded numbers were computed with; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def features(scenes, i, k):
    return int(scenes.shape[i, k]), int(scenes.texture[i, k]), int(scenes.colour[i, k])


@pytest.mark.parametrize("kind", ["single", "pair"])
def test_label_is_the_class_of_the_one_causal_object(kind):
    scenes = ss.sample_scenes(300, 1, 64, kind)
    for i in range(len(scenes)):
        classes = [ss.class_of(*features(scenes, i, k)) for k in np.flatnonzero(scenes.present[i])]
        causal = [c for c in classes if c is not None]
        assert causal[0] == scenes.label[i]                       # slot 0: the labelled causal object
        assert len(causal) == (1 if kind == "single" else 2)      # no distractor is any class's causal object
        if kind == "pair":
            assert causal[1] == scenes.label2[i] != scenes.label[i]
        for k in range(scenes.n_causal, scenes.present.shape[1]):
            f = features(scenes, i, k)
            shared = (ss.CLASS_IDS == f).sum(1)
            assert shared.max() == 2 and ss.lookalike_classes(*f)  # a look-alike: 2 of 3 features, never all 3
    assert (np.bincount(scenes.label, minlength=8) > 0).all()


def test_causal_object_renders_the_same_whatever_the_distractors_and_background():
    a, b = ss.sample_scenes(64, 2), ss.sample_scenes(64, 3)
    mixed = replace(a, bg=b.bg, **{name: getattr(a, name).copy() for name in ("shape", "texture", "colour",
                                                                             "tint", "present")})
    for name in ("shape", "texture", "colour", "tint", "present"):
        getattr(mixed, name)[:, 1:] = getattr(b, name)[:, 1:]      # b's distractors in a's other cells
    img_a, inst_a = ss.render(a)
    img_m, inst_m = ss.render(mixed)
    causal = inst_a == 1
    assert (inst_m == 1).tolist() == causal.tolist()
    assert np.array_equal(img_m[causal], img_a[causal])
    assert not np.array_equal(img_m[~causal], img_a[~causal])     # the rest did change
    assert np.array_equal(mixed.label, a.label)


def test_masks_are_disjoint_and_cover_exactly_the_painted_pixels():
    scenes = ss.sample_scenes(40, 4, 96)
    img, inst = ss.render(scenes)
    bg = np.round(scenes.bg * 255).astype(np.uint8)
    assert np.array_equal(img[inst == 0], bg[inst == 0])          # outside every mask: the background
    everything = np.ones_like(scenes.present)
    assert np.array_equal(ss.render(scenes, everything)[0], bg)
    for k in range(scenes.present.shape[1]):
        alone = replace(scenes, present=scenes.present & (np.arange(scenes.present.shape[1]) == k))
        _, inst_k = ss.render(alone)
        assert np.array_equal(inst_k == k + 1, inst == k + 1)     # nothing painted over object k
        assert ((inst == k + 1).any((1, 2)) == scenes.present[:, k]).all()
        drop = np.zeros_like(scenes.present)
        drop[:, k] = True
        removed, inst_d = ss.render(scenes, drop)
        assert np.array_equal(inst_d, inst)
        mask = inst == k + 1
        assert np.array_equal(removed[mask], bg[mask]) and np.array_equal(removed[~mask], img[~mask])


def test_seeded_and_reproducible():
    a, b = ss.generate(20, [7, 1]), ss.generate(20, [7, 1])
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2]) and np.array_equal(a[0].label, b[0].label)
    assert not np.array_equal(a[1], ss.generate(20, [7, 2])[1])


def test_bad_size_and_kind_are_refused():
    with pytest.raises(ValueError, match="size must be a multiple of 32"):
        ss.sample_scenes(4, 0, 80)
    with pytest.raises(ValueError, match="kind must be 'single' or 'pair'; got 'pairs'"):
        ss.sample_scenes(4, 0, 64, "pairs")


def test_written_folder_is_the_dataset_with_its_masks(tmp_path):
    info = synthetic.write(tmp_path / "d", n=12, n_pairs=6, seed=3)
    assert info["class_names"] == list(ss.CLASS_NAMES)
    data = get_dataset("synthetic", tmp_path / "d")
    assert (len(data.samples), data.num_classes, data.has_masks, data.split) == (12, 9, True, "single")  # + none
    scenes, images, inst = ss.generate(12, [3, 4])
    rows = list(csv.DictReader(open(tmp_path / "d" / "manifest.csv")))
    for i, s in enumerate(data.samples):
        assert s.label == scenes.label[i]
        assert np.array_equal(np.asarray(Image.open(s.image)), images[i])
        assert np.array_equal(np.asarray(Image.open(s.mask)) > 127, inst[i] == 1)
        assert np.array_equal(np.asarray(Image.open(tmp_path / "d" / rows[i]["instances"])), inst[i])
        assert rows[i]["objects"].startswith("causal:" + ss.CLASS_NAMES[s.label] + ";distractor:")
    pairs = get_dataset("synthetic", tmp_path / "d", "pairs")
    scenes, _, inst = ss.generate(6, [3, 5], kind="pair")
    for i, s in enumerate(pairs.samples):
        assert s.objects == (scenes.label[i], scenes.label2[i])
        (la, ma), (lb, mb) = s.masks_by_label
        assert np.array_equal(np.asarray(Image.open(ma)) > 127, inst[i] == 1)
        assert np.array_equal(np.asarray(Image.open(mb)) > 127, inst[i] == 2)
        assert np.array_equal(np.asarray(Image.open(s.mask)) > 127, (inst[i] == 1) | (inst[i] == 2))
    with pytest.raises(ValueError, match="split must be one of single, pairs; got 'train'"):
        get_dataset("synthetic", tmp_path / "d", "train")
    with pytest.raises(FileNotFoundError, match="python -m analysis.datasets.synthetic --out DIR"):
        get_dataset("synthetic", tmp_path / "missing")
    (tmp_path / "d" / "info.json").write_text("{}")
    with pytest.raises(ValueError, match="info.json' is not the info.json of the generator"):
        get_dataset("synthetic", tmp_path / "d")


def test_training_writes_a_reproducible_checkpoint_that_loads_with_its_recorded_accuracy(tmp_path):
    kw = dict(seed=5, steps=3, batch=8, width=32, heads=2, n_heldout=16, n_check=24, eval_every=1000, progress=False)
    summary = train(tmp_path / "a", **kw)
    train(tmp_path / "b", **kw)
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "model.safetensors").read_bytes()
    model = HookedViT.from_checkpoint(tmp_path / "a" / "model.safetensors")
    assert (model.cfg.n_layers, model.cfg.grid_size, model.cfg.pooling) == (6, (8, 8), "token")
    scenes, images, _ = ss.generate(24, [5, 2])
    via_png = torch.stack([model.transform(Image.fromarray(im)) for im in images])
    assert torch.allclose(via_png, to_input(images), atol=1e-6)   # training saw what model.transform gives
    with torch.no_grad():
        correct = int((model(via_png).argmax(-1).numpy() == scenes.label).sum())
    assert correct == summary["check"]["correct"]


@pytest.mark.skipif(not CHECKPOINT.is_file(), reason="the committed checkpoint is absent")
def test_committed_checkpoint_reproduces_its_recorded_accuracy_and_passes_the_causal_check():
    side = json.loads(CHECKPOINT.with_suffix(".json").read_text())
    check = side["training"]["check"]
    model = HookedViT.from_checkpoint(CHECKPOINT)
    scenes, images, _ = ss.generate(check["n"], check["seed"], side["image_size"])
    x = torch.stack([model.transform(Image.fromarray(im)) for im in images])
    with torch.no_grad():
        correct = int((model(x).argmax(-1).numpy() == scenes.label).sum())
    assert correct == check["correct"] and correct / check["n"] >= 0.9
    result = causal_check(model, n=200, seed=(0, 6))
    assert result.causal_flip_rate >= 0.9 and result.distractor_flip_rate <= 0.1


def test_relevance_mass_and_rank_accuracy_against_hand_computed_values():
    from analysis.datasets.synthetic_metrics import rank_accuracy, relevance_mass

    region = torch.zeros(4, 4, dtype=torch.bool)
    region[:2, :2] = True                                           # 4 of 16 pixels
    amap = torch.zeros(4, 4)
    amap[0, 0], amap[0, 1], amap[3, 3], amap[2, 2] = 3.0, 1.0, 4.0, -5.0
    assert relevance_mass(amap, region) == pytest.approx(4 / 8)    # negative relevance left out
    # top 4: 4 (out), 3 (in), 1 (in), then 12 pixels tied at 0 for one slot, 2 of them inside
    assert rank_accuracy(amap, region) == pytest.approx((2 + 2 / 12) / 4)
    assert rank_accuracy(torch.ones(4, 4), region) == pytest.approx(4 / 16)   # constant map: the area fraction
    assert relevance_mass(-torch.ones(4, 4), region) is None
    assert relevance_mass(torch.ones(2, 2), region) == pytest.approx(4 / 16)  # patch map upsampled bilinearly
    with pytest.raises(ValueError, match="region must hold some but not all pixels"):
        rank_accuracy(amap, torch.zeros(4, 4, dtype=torch.bool))


def test_lookalike_region_marks_the_distractors_resembling_the_explained_class():
    from analysis.datasets.synthetic_metrics import lookalike_region

    scenes, _, inst = ss.generate(30, 9)
    for i in range(30):
        objects = synthetic.describe(scenes, i)
        for target in (int(scenes.label[i]), (int(scenes.label[i]) + 1) % 8):
            look, dis = lookalike_region(inst[i], objects, target)
            expected = np.zeros_like(look)
            for k in range(1, scenes.present.shape[1]):
                if scenes.present[i, k]:
                    assert (dis[inst[i] == k + 1]).all()
                    if (ss.CLASS_IDS[target] == features(scenes, i, k)).sum() == 2:
                        expected |= inst[i] == k + 1
            assert np.array_equal(look, expected) and not (dis & (inst[i] <= 1)).any()


@pytest.mark.skipif(not CHECKPOINT.is_file(), reason="the committed checkpoint is absent")
def test_score_folder_scores_each_explained_object_against_its_own_mask(tmp_path):
    from analysis.data import load_sample
    from analysis.datasets.synthetic_metrics import relevance_mass, score_folder
    from caap import get_method

    synthetic.write(tmp_path / "d", n=6, n_pairs=4, seed=1)
    model = HookedViT.from_checkpoint(CHECKPOINT)
    result, counts = score_folder(model, tmp_path / "d", ["oracle-patch", "ixg+"], progress=False)
    expected = []
    for s in get_dataset("synthetic", tmp_path / "d").samples:
        loaded = load_sample(model, s)
        pred = int(model(loaded.image).argmax(-1))
        if pred == s.label:
            amap = get_method("ixg+", model).attribute(loaded.image, torch.tensor([pred]))[0]
            expected.append(relevance_mass(amap, loaded.mask))
    assert counts["correct"] == len(expected) > 0
    assert result["ixg+"]["mass"][0] == pytest.approx(np.mean(expected), rel=1e-6)
    assert result["oracle-patch"]["mass"][0] > 0.6 and result["oracle-patch"]["distractor"][0] < 0.05
    pairs, _ = score_folder(model, tmp_path / "d", ["oracle-patch"], split="pairs", progress=False)
    assert pairs["oracle-patch"]["mass"][0] > 0.6 and pairs["oracle-patch"]["other"][0] < 0.05


def test_ground_truth_metrics_run_in_caap_bench(tmp_path):
    """`caap bench --dataset synthetic --metrics gt-mass,gt-rank`: the registered metrics score each map against the
    causal object's mask, the same value as relevance_mass on the method's own map."""
    import caap
    from analysis.cli import main
    from analysis.data import load_sample
    from analysis.datasets import get_dataset
    from analysis.datasets.synthetic_metrics import lookalike_region, relevance_mass
    from vit_lens import HookedViT

    from analysis.datasets.synthetic import write

    weights = Path(__file__).resolve().parents[2] / "assets" / "synthetic_vit" / "model.safetensors"
    write(tmp_path / "data", n=3, n_pairs=0, seed=5)
    out = tmp_path / "run"
    assert main(["bench", "--weights", str(weights), "--dataset", "synthetic", "--root", str(tmp_path / "data"),
                 "--methods", "gae", "--metrics", "deletion,insertion,aupr,pointing-game,gt-mass,gt-rank",
                 "--n-steps", "2", "--no-progress", "--out", str(out)]) == 0
    rows = [json.loads(r) for r in (out / "metrics-gt-mass.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and "Mass ↑" in (out / "table.md").read_text()
    model = HookedViT.from_checkpoint(weights)
    sample = get_dataset("synthetic", tmp_path / "data").samples[0]
    loaded = load_sample(model, sample)
    gae = caap.get_method("gae", model).attribute(loaded.image, rows[0]["target"])
    assert abs(rows[0]["gt_mass"] - relevance_mass(gae[0], loaded.mask, loaded.ignore)) < 1e-6
    # look-alike mass through the registry equals lookalike_region + relevance_mass on the instance map
    assert main(["bench", "--weights", str(weights), "--dataset", "synthetic", "--root", str(tmp_path / "data"),
                 "--methods", "gae", "--metrics", "deletion,insertion,aupr,pointing-game,gt-mass,gt-rank,gt-lookalike",
                 "--n-steps", "2", "--no-progress", "--out", str(out)]) == 0
    look_rows = {r["sample"]: r for r in map(json.loads, (out / "metrics-gt-lookalike.jsonl").read_text().splitlines())}
    extra = dict(sample.extra)
    look, dis = lookalike_region(np.asarray(Image.open(extra["instances"])), extra["objects"], rows[0]["target"])
    expected = relevance_mass(gae[0], torch.from_numpy(dis))
    assert abs(look_rows[sample.name]["gt_distractor"] - expected) < 1e-6
    assert (look_rows[sample.name]["gt_lookalike"] is None) == (not look.any())


def test_lookalike_region_of_the_none_class_is_empty():
    """Explaining the `none` output (an image the model thinks has no causal object) has no look-alikes; the
    distractor region is unchanged (it crashed caap bench with an IndexError before)."""
    from analysis.datasets.synthetic_metrics import lookalike_region
    from analysis.datasets.synthetic_scenes import LOOKALIKE

    instances = np.array([[1, 2], [0, 2]])
    objects = "causal:circle-solid-red;distractor:circle-solid-green"
    n_classes = LOOKALIKE.shape[1]
    look, dis = lookalike_region(instances, objects, n_classes)  # the `none` output's index
    assert not look.any() and dis.tolist() == [[False, True], [False, True]]

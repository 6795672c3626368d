"""Patching engines vs one timm forward (ViT-B/16, 224 px, random weights), measured in one run.

One source image, K = 196 interventions (3x3 neighbourhoods), layers 0..8.
Prints parallel / timm forward (target <= 6) and loop / parallel (target >= 30).
``--dinov2-518`` also runs DINOv2-S/14 at 518 px (1369 patches, K = 1369, |S| = 9) in parallel and
reports its time and peak memory.
"""
import argparse
import resource
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds  # noqa: E402

from caap.selection import all_neighbourhoods  # noqa: E402
from vit_lens import HookedViT  # noqa: E402
from vit_lens.patching import Intervention, cache_context, run_patching  # noqa: E402


def interventions_for(model, layer_end):
    sets = all_neighbourhoods(model.cfg.grid_size, "box", 1)
    return [Intervention.from_patches(model.layout, s, 0, layer_end) for s in sets]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dinov2-518", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    timm_model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    model = HookedViT.from_timm(timm_model)
    source, blank = torch.randn(1, 3, 224, 224), torch.ones(1, 3, 224, 224)
    target = cache_context(model, blank)
    ivs = interventions_for(model, 8)
    t_fwd = median_seconds(lambda: timm_model(source))
    run = lambda engine: run_patching(model, source, None, ivs, engine=engine, target_cache=target,  # noqa: E731
                                      target_classes=torch.tensor([0]))
    t_par = median_seconds(lambda: run("parallel"), repeats=3)
    t_loop = median_seconds(lambda: run("loop"), repeats=1, warmup=0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, K={len(ivs)}, layers 0..8")
    print(f"timm forward (batch 1)  {t_fwd * 1e3:8.1f} ms")
    print(f"parallel engine         {t_par * 1e3:8.1f} ms   parallel / forward = {t_par / t_fwd:5.2f} (target <= 6)")
    print(f"loop engine             {t_loop * 1e3:8.1f} ms   loop / parallel   = {t_loop / t_par:5.1f} (target >= 30)")
    if args.dinov2_518:
        dino_timm = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518).eval()
        dino = HookedViT.from_timm(dino_timm)
        x = torch.randn(1, 3, 518, 518)
        tgt = cache_context(dino, torch.ones(1, 3, 518, 518), with_queries=True)
        ivs = interventions_for(dino, 8)
        t_fwd = median_seconds(lambda: dino_timm(x), repeats=3)
        for engine in ("parallel", "efficient", "parallel", "efficient"):  # the first efficient run fills the stats
            start = time.perf_counter()
            scores = run_patching(dino, x, None, ivs, engine=engine, target_cache=tgt,
                                  target_classes=torch.tensor([0]), readout=lambda out: out[..., 0])
            elapsed = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            print(f"DINOv2-S/14 518px, K={len(ivs)}, |S|<=9, {engine:9s}: {elapsed:5.2f} s = "
                  f"{elapsed / t_fwd:4.1f} forwards, scores {tuple(scores.shape)}, peak RSS so far {peak:.2f} GB")


if __name__ == "__main__":
    main()

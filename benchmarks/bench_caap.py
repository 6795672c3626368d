"""Per-image cost of each CAAP engine and of Grad-CAM, as multiples of one timm forward.

ViT-B/16 at 224 px, random weights, one image, default CAAP (3x3 box, blocks 0..8, white blank),
all measured in one run. Targets: parallel <= 6, efficient <= parallel, loop / parallel >= 30.
"""
import statistics
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds  # noqa: E402

from caap import CAAP, GradCAM, blank_context  # noqa: E402
from vit_lens import HookedViT  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    timm_model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    model = HookedViT.from_timm(timm_model)
    image = torch.randn(1, 3, 224, 224)
    blank_context(model, "white")  # computed once per model and reused by every image: not timed
    t_fwd = median_seconds(lambda: timm_model(image))
    caaps = {engine: CAAP(model, engine=engine, progress=False) for engine in ("parallel", "efficient", "loop")}
    times = {"parallel": [], "efficient": []}
    for engine in times:  # warm-up: E-CAAP's blank statistics are computed once per blank, like the blank cache
        caaps[engine].attribute(image, target=0)
    for _ in range(5):  # interleaved, so drift of the machine hits both engines alike
        for engine in times:
            times[engine].append(median_seconds(lambda: caaps[engine].attribute(image, target=0), repeats=1, warmup=0))
    rows = [(f"CAAP {engine}", statistics.median(t)) for engine, t in times.items()]
    rows.append(("CAAP loop", median_seconds(lambda: caaps["loop"].attribute(image, target=0), repeats=1, warmup=0)))
    gradcam = GradCAM(model)
    t_gc = median_seconds(lambda: gradcam.attribute(image, target=0))
    rows.append(("Grad-CAM (fwd + bwd)", t_gc))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; ViT-B/16 224 px, 196 patches, blocks 0..8")
    print(f"{'timm forward (batch 1)':<24s} {t_fwd * 1e3:9.1f} ms   1.00x")
    for name, t in rows:
        print(f"{name:<24s} {t * 1e3:9.1f} ms  {t / t_fwd:6.2f}x forward")
    t = dict(rows)
    print(f"loop / parallel = {t['CAAP loop'] / t['CAAP parallel']:.1f} (target >= 30); "
          f"efficient / parallel = {t['CAAP efficient'] / t['CAAP parallel']:.2f} (target <= 1)")


if __name__ == "__main__":
    main()

"""Per-image cost of each CAAP engine and of Grad-CAM, as multiples of one timm forward.

ViT-B/16 at 224 px, random weights, one image, default CAAP (3x3 box, blocks 0..8, white blank),
all measured in one run. Targets: parallel <= 4 (the source is read only up to block 8 and its q/k/v there
are reused, issue 23), efficient <= parallel, loop / parallel >= 30.
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
    caaps = {engine: CAAP(model, engine=engine, progress=False) for engine in ("parallel", "efficient", "loop")}
    gradcam = GradCAM(model)
    runs = {"forward": lambda: timm_model(image), "parallel": lambda: caaps["parallel"].attribute(image, target=0),
            "efficient": lambda: caaps["efficient"].attribute(image, target=0),
            "gradcam": lambda: gradcam.attribute(image, target=0)}
    for fn in runs.values():  # warm-up; E-CAAP's blank statistics are computed once per blank, like the blank cache
        fn()
    times = {name: [] for name in runs}
    for _ in range(7):  # interleaved rounds: drift of a shared machine hits every method alike
        for name, fn in runs.items():
            times[name].append(median_seconds(fn, repeats=1, warmup=0))
    per_round = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
    t_fwd = statistics.median(times["forward"])
    t_loop = median_seconds(lambda: caaps["loop"].attribute(image, target=0), repeats=1, warmup=0)
    t_par = statistics.median(times["parallel"])
    rows = [("CAAP parallel", t_par, per_round("parallel", "forward")),
            ("CAAP efficient", statistics.median(times["efficient"]), per_round("efficient", "forward")),
            ("CAAP loop", t_loop, t_loop / t_fwd),
            ("Grad-CAM (fwd + bwd)", statistics.median(times["gradcam"]), per_round("gradcam", "forward"))]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; ViT-B/16 224 px, 196 patches, blocks 0..8")
    print(f"{'timm forward (batch 1)':<24s} {t_fwd * 1e3:9.1f} ms   1.00x")
    for name, t, ratio in rows:
        print(f"{name:<24s} {t * 1e3:9.1f} ms  {ratio:6.2f}x forward")
    print(f"loop / parallel = {t_loop / t_par:.1f} (target >= 30); "
          f"efficient / parallel = {per_round('efficient', 'parallel'):.2f} (target <= 1; median of 7 rounds)")


if __name__ == "__main__":
    main()

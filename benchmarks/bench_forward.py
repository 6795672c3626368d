"""HookedViT forward vs timm forward (ViT-B/16, 224 px, batch 8, random weights), measured in one run.

Prints two ratios: HookedViT (no hooks) / timm, and run_with_cache (every hook) / timm.
Targets: <= 1.10 and <= 1.5. The three are timed in interleaved rounds and each ratio is the median
of its per-round ratios, so slow drift of a shared machine cancels out.
"""
import statistics
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds  # noqa: E402

from vit_lens import HookedViT  # noqa: E402


def main(rounds: int = 9) -> None:
    torch.manual_seed(0)
    timm_model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    model = HookedViT.from_timm(timm_model)
    x = torch.randn(8, 3, 224, 224)
    runs = {"timm": lambda: timm_model(x), "hooked": lambda: model(x), "cache": lambda: model.run_with_cache(x)}
    for fn in runs.values():  # warm-up
        median_seconds(fn, repeats=1)
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(median_seconds(fn, repeats=1, warmup=0))
    ratio = {name: statistics.median(t / b for t, b in zip(times[name], times["timm"])) for name in runs}
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {rounds} interleaved rounds")
    print(f"timm forward              {ms['timm']:8.1f} ms")
    print(f"HookedViT forward         {ms['hooked']:8.1f} ms   ratio {ratio['hooked']:5.2f} (target <= 1.10)")
    print(f"run_with_cache(all hooks) {ms['cache']:8.1f} ms   ratio {ratio['cache']:5.2f} (target <= 1.5)")


if __name__ == "__main__":
    main()

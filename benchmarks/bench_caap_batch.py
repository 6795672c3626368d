"""Throughput across images: CAAP on a batch of 8 images vs eight single-image calls (issue 23).

ViT-B/16 at 224 px, random weights, default CAAP (3x3 box, blocks 0..8, white blank, ``batch_size=4``), one
class per image. Both sides share the cached blank context (computed once per model, not timed), so the
difference is what batching the sources buys: the source forwards and the prefix-only blocks run as larger
matrix products. Rounds are interleaved (batch, singles, batch, ...) and the ratio is the median of the
per-round ratios (the machine is shared). Target: batch / singles <= 0.9. The maps are checked equal.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from caap import CAAP, blank_context  # noqa: E402
from vit_lens import HookedViT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4, help="CAAP(batch_size=...): images per engine call")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = HookedViT.from_timm(timm.create_model("vit_base_patch16_224", pretrained=False).eval())
    images, targets = torch.randn(8, 3, 224, 224), torch.arange(8)
    blank_context(model, "white")
    caap = CAAP(model, progress=False, batch_size=args.batch_size)
    caap.attribute(images[:1], target=0)  # warm-up

    def batch():
        return caap.attribute(images, target=targets)

    def singles():
        return torch.cat([caap.attribute(images[i:i + 1], target=int(targets[i])) for i in range(len(images))])

    ratios, tb, ts = [], [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        together = batch()
        tb.append(time.perf_counter() - start)
        start = time.perf_counter()
        one_by_one = singles()
        ts.append(time.perf_counter() - start)
        ratios.append(tb[-1] / ts[-1])
        torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-4)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; ViT-B/16 224 px, 8 images, "
          f"CAAP(batch_size={args.batch_size})")
    print(f"batch of 8: {statistics.median(tb):.2f} s; eight single calls: {statistics.median(ts):.2f} s; ratio per "
          f"round {', '.join(f'{r:.3f}' for r in ratios)}; median {statistics.median(ratios):.3f} (target <= 0.9); "
          f"maps equal")


if __name__ == "__main__":
    main()

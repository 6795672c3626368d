"""Per-image forward time by batch size on this machine, for ``caap.masking.CPU_MAX_BATCH``.

Plain timm forwards under inference_mode over the same N images, batch sizes interleaved per round; prints
ms/image and the ratio to the smallest batch's time, median over rounds.

    python benchmarks/bench_cpu_batch.py --model vit_small_patch14_dinov2 --img-size 224 --rounds 3
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_small_patch14_dinov2")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--n", type=int, default=96, help="images per measurement")
    ap.add_argument("--batch-sizes", default="8,16,32,96")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, img_size=args.img_size).eval()
    x = torch.randn(args.n, 3, args.img_size, args.img_size)
    per_image = {b: [] for b in sizes}
    with torch.inference_mode():
        model(x[:2])  # warm-up
        for _ in range(args.rounds):
            for b in sizes:
                start = time.perf_counter()
                for i in range(0, args.n, b):
                    model(x[i:i + b])
                per_image[b].append((time.perf_counter() - start) / args.n * 1e3)
    base = statistics.median(per_image[sizes[0]])
    print(f"{args.model} @ {args.img_size}px, {torch.get_num_threads()} threads, {args.n} images, {args.rounds} rounds")
    for b in sizes:
        ms = statistics.median(per_image[b])
        print(f"batch {b:4d}: {ms:7.1f} ms/img  ({ms / base:.2f} x batch {sizes[0]})")


if __name__ == "__main__":
    main()

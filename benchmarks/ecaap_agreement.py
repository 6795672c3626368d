"""Agreement of E-CAAP (engine="efficient") with exact CAAP on real DINOv2 weights (../shared/eval).

For every DAVIS frame of the manifest: both maps for the same class, then the per-image Spearman rank
correlation of the two 16x16 maps, the max |difference| relative to the map's range, and the top-1
patch agreement. Needs ../shared/eval (not shipped with the library).
"""
import argparse
import csv
import statistics
from pathlib import Path

import torch
from PIL import Image
from scipy.stats import spearmanr
from tqdm import tqdm

from caap import CAAP
from vit_lens import HookedViT
from vit_lens.patching import PrecomputedFrozenAttention

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-dir", type=Path, default=EVAL)
    parser.add_argument("--model", default="dinov2_vits14_probe_in1k")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--approximate-patch-queries", action="store_true",
                        help="also approximate the live patch queries (not only CLS/registers)")
    args = parser.parse_args()
    model = HookedViT.from_checkpoint(args.eval_dir / "models" / f"{args.model}.safetensors")
    rows = list(csv.DictReader(open(args.eval_dir / "davis" / "manifest.csv")))[: args.limit]
    frozen = PrecomputedFrozenAttention(exact_patch_queries=not args.approximate_patch_queries)
    exact, efficient = CAAP(model, engine="parallel"), CAAP(model, engine="efficient", frozen_attention=frozen)
    rhos, rel, top1 = [], [], []
    for row in tqdm(rows, desc="DAVIS frames"):
        x = model.transform(Image.open(args.eval_dir / "davis" / row["image"]).convert("RGB"))[None]
        # probe_in1k: explain the annotated ImageNet class; other heads: the predicted class
        target = int(row["label"]) if model.cfg.num_classes == 1000 else None
        a, b = exact.attribute(x, target)[0].flatten(), efficient.attribute(x, target)[0].flatten()
        rhos.append(spearmanr(a.numpy(), b.numpy()).statistic)
        rel.append(((a - b).abs().max() / (a.max() - a.min())).item())
        top1.append(int(a.argmax() == b.argmax()))
    q = statistics.quantiles(rhos, n=10)
    print(f"model {args.model}, {len(rows)} DAVIS frames, default CAAP (3x3 box, blocks 0..8, white blank), "
          f"E-CAAP approximating {'CLS/register and patch' if args.approximate_patch_queries else 'CLS/register'} queries")
    print(f"Spearman(exact, efficient) per image: mean {statistics.mean(rhos):.4f}, median "
          f"{statistics.median(rhos):.4f}, min {min(rhos):.4f}, 10th percentile {q[0]:.4f}")
    print(f"max |diff| / range of exact map: mean {statistics.mean(rel):.4f}, max {max(rel):.4f}")
    print(f"same top-1 patch: {sum(top1)}/{len(top1)}")


if __name__ == "__main__":
    main()

"""Agreement of the E-CAAP variants with exact CAAP on real DINOv2 weights (../shared/eval).

For every DAVIS frame of the manifest, each variant's map and the exact one for the same class: per-image
Spearman rank correlation of the 16x16 maps, max |difference| relative to the exact map's range, top-1 patch
agreement, and the time per image (interleaved, so machine load hits every variant alike). Variants:

* ``e-caap``      the library default: prefix (CLS/register) queries approximated, live patch queries exact;
* ``e-caap-eq9``  the paper's App. B.1 Eqs. 8-9: blank queries score the blank keys for CLS AND patch
                  queries, blank values replaced by their uniform mean;
* ``e-caap-all``  the default statistics for CLS and patch queries (softmax-weighted values, no uniform mean).

Needs ../shared/eval (not shipped with the library).
"""
import argparse
import csv
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from scipy.stats import spearmanr
from tqdm import tqdm

from caap import CAAP, get_method
from vit_lens import HookedViT
from vit_lens.patching import PrecomputedFrozenAttention

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-dir", type=Path, default=EVAL)
    parser.add_argument("--model", default="dinov2_vits14_probe_in1k")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = HookedViT.from_checkpoint(args.eval_dir / "models" / f"{args.model}.safetensors")
    rows = list(csv.DictReader(open(args.eval_dir / "davis" / "manifest.csv")))[: args.limit]
    methods = {"caap": CAAP(model, engine="parallel", progress=False),
               "e-caap": get_method("e-caap", model, progress=False),
               "e-caap-eq9": get_method("e-caap-eq9", model, progress=False),
               "e-caap-all": CAAP(model, engine="efficient", progress=False,
                                  frozen_attention=PrecomputedFrozenAttention(exact_patch_queries=False))}
    stats = {name: {"rho": [], "rel": [], "top1": [], "sec": []} for name in methods}
    for row in tqdm(rows, desc="DAVIS frames"):
        x = model.transform(Image.open(args.eval_dir / "davis" / row["image"]).convert("RGB"))[None]
        # probe_in1k: explain the annotated ImageNet class; other heads: the predicted class
        target = int(row["label"]) if model.cfg.num_classes == 1000 else int(model(x).argmax())
        maps = {}
        for name, method in methods.items():
            start = time.perf_counter()
            maps[name] = method.attribute(x, target)[0].flatten()
            stats[name]["sec"].append(time.perf_counter() - start)
        a = maps["caap"]
        for name in list(methods)[1:]:
            b = maps[name]
            stats[name]["rho"].append(spearmanr(a.numpy(), b.numpy()).statistic)
            stats[name]["rel"].append(((a - b).abs().max() / (a.max() - a.min())).item())
            stats[name]["top1"].append(int(a.argmax() == b.argmax()))
    print(f"model {args.model}, {len(rows)} DAVIS frames, default CAAP (3x3 box, blocks 0..ceil(2L/3), white blank)")
    exact_sec = statistics.median(stats["caap"]["sec"])
    print(f"caap (exact parallel): median {exact_sec:.3f} s/image")
    for name in list(methods)[1:]:
        s = stats[name]
        q = statistics.quantiles(s["rho"], n=10)
        print(f"{name}: Spearman mean {statistics.mean(s['rho']):.4f}, median {statistics.median(s['rho']):.4f}, "
              f"min {min(s['rho']):.4f}, 10th pct {q[0]:.4f}; max|diff|/range mean {statistics.mean(s['rel']):.4f}; "
              f"same top-1 patch {sum(s['top1'])}/{len(s['top1'])}; median {statistics.median(s['sec']):.3f} s/image "
              f"({statistics.median(s['sec']) / exact_sec:.2f} x exact)")


if __name__ == "__main__":
    main()

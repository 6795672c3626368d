"""Agreement of attribution patching (AtP, AtP*) with exact CAAP on real DINOv2 weights (../shared/eval).

For every DAVIS frame of the manifest, each estimate's map and the exact one for the same class: per-image
Spearman rank correlation of the patch maps, top-1 patch agreement, the recall of exact CAAP's top-10 patches
among the estimate's top-20, and the time per image ÷ one forward of the same image (batch 1, interleaved, so
machine load hits every method alike). AtP's gradients depend only on the blank and the class, and are cached
per class on the blank context: "cold" times (the first ``--cold-frames`` frames) clear that cache before the
call (one backward included); "as run" times keep it, as ``caap bench`` would (the first frame of each class
pays its backward, the others a source forward + O(K |S| d)). Variants:

* ``caap-atp``       first-order estimate around the blank context (vit_lens.patching.atp);
* ``caap-atp-star``  AtP*: the prefix queries' attention to the patched keys recomputed exactly.

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
from caap.blanks import blank_context
from vit_lens import HookedViT

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-dir", type=Path, default=EVAL)
    parser.add_argument("--model", default="dinov2_vits14_davis20")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--cold-frames", type=int, default=5)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = HookedViT.from_checkpoint(args.eval_dir / "models" / f"{args.model}.safetensors")
    rows = list(csv.DictReader(open(args.eval_dir / "davis" / "manifest.csv")))[: args.limit]
    exact = CAAP(model, engine="parallel", progress=False)
    methods = {"caap-atp": get_method("caap-atp", model, progress=False),
               "caap-atp-star": get_method("caap-atp-star", model, progress=False)}
    blank = blank_context(model)
    stats = {name: {"rho": [], "top1": [], "recall": [], "cold": [], "warm": []} for name in methods}
    forward_sec, exact_sec = [], []
    for i, row in enumerate(tqdm(rows, desc="DAVIS frames")):
        x = model.transform(Image.open(args.eval_dir / "davis" / row["image"]).convert("RGB"))[None]
        target = int(row["label"]) if model.cfg.num_classes == 1000 else int(model(x).argmax())
        forward_sec.append(timed(lambda: model(x))[1])
        a, sec = timed(lambda: exact.attribute(x, target)[0].flatten())
        exact_sec.append(sec)
        top10 = set(a.topk(10).indices.tolist())
        for name, method in methods.items():
            if i < args.cold_frames:
                blank.derived.pop("atp", None)  # cold: the class's backward is part of the call
            b, sec = timed(lambda: method.attribute(x, target)[0].flatten())
            s = stats[name]
            s["cold" if i < args.cold_frames else "warm"].append(sec)
            s["rho"].append(spearmanr(a.numpy(), b.numpy()).statistic)
            s["top1"].append(int(a.argmax() == b.argmax()))
            s["recall"].append(len(top10 & set(b.topk(20).indices.tolist())) / 10)
    fwd = statistics.median(forward_sec)
    print(f"model {args.model}, {len(rows)} DAVIS frames, default CAAP (3x3 box, blocks 0..ceil(2L/3), white blank)")
    print(f"one forward (batch 1): median {fwd * 1e3:.1f} ms; exact parallel CAAP: median "
          f"{statistics.median(exact_sec):.3f} s/image ({statistics.median(exact_sec) / fwd:.2f} forwards)")
    for name, s in stats.items():
        q = statistics.quantiles(s["rho"], n=10)
        cold, warm = statistics.median(s["cold"]), statistics.median(s["warm"])
        print(f"{name}: Spearman mean {statistics.mean(s['rho']):.4f}, median {statistics.median(s['rho']):.4f}, "
              f"min {min(s['rho']):.4f}, 10th pct {q[0]:.4f}; same top-1 patch {sum(s['top1'])}/{len(s['top1'])}; "
              f"recall of exact top-10 in top-20 mean {statistics.mean(s['recall']):.3f}; "
              f"cold {cold:.3f} s ({cold / fwd:.2f} forwards, {len(s['cold'])} frames), as run {warm:.3f} s "
              f"({warm / fwd:.2f} forwards, {len(s['warm'])} frames)")


if __name__ == "__main__":
    main()

"""Train the ground-truth benchmark's supervised ViT from scratch (issue 22).

``python -m analysis.train_synthetic --out DIR [--device cuda] [--steps N] [--minutes M]`` trains a timm ViT
(CLS pooling, patch 8 at 64 px: an 8x8 grid, 6 blocks) on fresh scenes of
:mod:`analysis.datasets.synthetic_scenes` every step (seeded: step ``s`` draws from ``[seed, 0, s]``, so the
stream never repeats and the run is reproducible on the same hardware and thread count), and writes
``DIR/model.safetensors`` with its JSON sidecar (``HookedViT.from_checkpoint``), whose ``heldout`` entry records
the accuracy on the held-out scenes ``[seed, 1]`` and the number correct on the check set ``[seed, 2]`` that
the tests reproduce. The model sees exactly what ``model.transform`` gives on a saved PNG: pixels / 255,
normalized with mean = std = 0.5 (crop_pct 1, no resize at the native size).

Cost: ~0.15 GFLOP per training image (0.47 M parameters, 65 tokens); the README records the wall time on this
machine. ``--minutes`` caps the wall time (the schedule is by steps, so a capped run ends before its cosine
tail: the summary says so).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from analysis.datasets.synthetic_scenes import CLASS_NAMES, NONE, generate, render, sample_scenes

log = logging.getLogger(__name__)

TIMM_NAME = "vit_tiny_patch16_224"
MEAN = STD = (0.5, 0.5, 0.5)


def model_kwargs(size: int = 64, width: int = 96, depth: int = 6, heads: int = 3, mlp_ratio: float = 2.0,
                 num_classes: int = len(CLASS_NAMES)) -> dict:
    return dict(img_size=size, patch_size=8, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
                num_classes=num_classes, global_pool="token")


def data_config(size: int) -> dict:
    return {"input_size": [3, size, size], "mean": list(MEAN), "std": list(STD), "crop_pct": 1.0,
            "interpolation": "bilinear", "crop_mode": "center"}


def to_input(images: np.ndarray, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> the normalized ``[N, 3, H, W]`` batch (what ``model.transform`` gives)."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).to(dtype) / 255.0
    mean = torch.tensor(MEAN, device=device, dtype=dtype)[:, None, None]
    std = torch.tensor(STD, device=device, dtype=dtype)[:, None, None]
    return (x - mean) / std


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, device="cpu", batch: int = 256) -> np.ndarray:
    model.eval()
    out = [model(to_input(images[i:i + batch], device)).argmax(-1).cpu() for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


def accuracy(model: nn.Module, n: int, seed, size: int, device="cpu") -> tuple[float, int]:
    """(accuracy, number correct) on ``n`` single scenes drawn from ``seed``."""
    scenes, images, _ = generate(n, seed, size)
    correct = int((predict(model, images, device) == scenes.label).sum())
    return correct / n, correct


def train(out: Path, *, seed: int = 0, steps: int = 2000, batch: int = 64, lr: float = 1e-3,
          size: int = 64, width: int = 96, depth: int = 6, heads: int = 3, mlp_ratio: float = 2.0,
          device: str = "cpu", minutes: float | None = None, n_heldout: int = 2000, n_check: int = 200,
          eval_every: int = 250, none_fraction: float = 0.125, progress: bool = True) -> dict:
    """Train, save ``out/model.safetensors`` + ``out/model.json``, return the summary written to the sidecar."""
    import timm
    from safetensors.torch import save_file
    from tqdm import tqdm

    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1; got steps={steps}, batch={batch}")
    if not 0 <= none_fraction < 1:
        raise ValueError(f"none_fraction must be in [0, 1); got {none_fraction}")
    n_none = round(batch * none_fraction)
    torch.manual_seed(seed)
    kwargs = model_kwargs(size, width, depth, heads, mlp_ratio, len(CLASS_NAMES) - (none_fraction == 0))
    model = timm.create_model(TIMM_NAME, pretrained=False, **kwargs).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n and "token" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n and "token" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))
    warmup = min(250, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    start, done, history = time.monotonic(), 0, []
    bar = tqdm(range(steps), disable=not progress, desc="train", mininterval=10)
    running = None
    for step in bar:
        if minutes is not None and time.monotonic() - start > 60 * minutes:
            log.warning("stopped at step %d of %d: --minutes %.1f reached", step, steps, minutes)
            break
        model.train()
        scenes = sample_scenes(batch, [seed, 0, step], size)
        drop = np.zeros_like(scenes.present)
        drop[:n_none, 0] = True                       # the first rows lose their causal object: class NONE
        images, _ = render(scenes, drop)
        labels = np.where(drop[:, 0], NONE, scenes.label)
        x, y = to_input(images, device), torch.from_numpy(labels).to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done = step + 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}", refresh=False)
        if done % eval_every == 0 or done == steps:
            acc, _ = accuracy(model, 500, [seed, 3], size, device)
            history.append({"step": done, "minutes": round((time.monotonic() - start) / 60, 2),
                            "loss": round(running, 4), "val500_accuracy": acc})
            log.info("step %d: loss %.3f, accuracy on 500 validation scenes %.3f", done, running, acc)
    minutes_used = (time.monotonic() - start) / 60
    model = model.cpu().eval()
    acc, correct = accuracy(model, n_heldout, [seed, 1], size)
    check_acc, check_correct = accuracy(model, n_check, [seed, 2], size)
    none_scenes = sample_scenes(500, [seed, 1, 1], size)
    drop = np.zeros_like(none_scenes.present)
    drop[:, 0] = True
    none_acc = float((predict(model, render(none_scenes, drop)[0]) == NONE).mean())
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    summary = {"steps": done, "steps_planned": steps, "batch": batch, "lr": lr, "seed": seed, "device": device,
               "train_minutes": round(minutes_used, 2), "threads": torch.get_num_threads(),
               "heldout": {"seed": [seed, 1], "n": n_heldout, "accuracy": acc, "correct": correct},
               "check": {"seed": [seed, 2], "n": n_check, "accuracy": check_acc, "correct": check_correct},
               "none_fraction": none_fraction,
               "none_heldout": {"seed": [seed, 1, 1], "n": 500, "accuracy_none": none_acc},
               "history": history}
    sidecar = {"timm_model_name": TIMM_NAME, "create_model_kwargs": kwargs, "data_config": data_config(size),
               "class_names": list(CLASS_NAMES[:kwargs["num_classes"]]),
               "generator": "analysis.datasets.synthetic_scenes",
               "image_size": size, "training": summary}
    (out / "model.json").write_text(json.dumps(sidecar, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.train_synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for model.safetensors + model.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (the cosine schedule's length)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=96, help="embedding width (larger variants: e.g. 192 on cuda)")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--mlp-ratio", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a CPU shared with other jobs, 2 threads ran 5x slower)")
    p.add_argument("--minutes", type=float, help="wall-time cap")
    p.add_argument("--none-fraction", type=float, default=0.125,
                   help="share of each batch whose causal object is painted over, labelled 'none' (0: 8 classes)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.depth < 6:
        p.error(f"--depth must be >= 6 (the benchmark's model has at least 6 blocks); got {args.depth}")
    torch.set_num_threads(args.threads)
    summary = train(args.out, seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr, width=args.width,
                    depth=args.depth, heads=args.heads, mlp_ratio=args.mlp_ratio, device=args.device,
                    minutes=args.minutes, none_fraction=args.none_fraction,
                    progress=not args.no_progress)
    capped = (" (stopped by --minutes before the planned steps)"
              if summary["steps"] < summary["steps_planned"] else "")
    print(f"{summary['steps']} steps in {summary['train_minutes']:.1f} min{capped}; held-out accuracy "
          f"{summary['heldout']['accuracy']:.4f} on {summary['heldout']['n']} scenes; "
          f"wrote {args.out}/model.safetensors")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

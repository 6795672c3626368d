"""GPU throughput of CAAP (parallel, E-CAAP, AtP) and of one timm forward, peak memory, bf16 vs fp32 agreement.

Random-weight ViT-B/16, ViT-L/16 and DINOv2-G/14-sized models (timm, ``pretrained=False``, a 1000-class head;
DINOv2-G with layer-scale 1.0 instead of its 1e-5 init, which would leave a random model's logits almost
independent of the image) at 224 and 518 px, one random batch on the chosen device, default CAAP (3x3 box,
blocks 0..ceil(2L/3), white blank), one target class per image (0, 1, 2, ...). For each model x size:

* images/s of one batched timm forward and of CAAP per engine (images explained per second); the blank
  context is computed once per model and reused, as ``caap bench`` does, so it is left out of the timing
  (one untimed warm-up call). AtP is timed twice: "cold" drops the class gradients cached on the blank
  context before every call (one blank backward per class of the batch included), "cached" keeps them, as a
  run over a dataset would once every class has been seen;
* peak memory (``torch.cuda.max_memory_allocated``, weights included, reset before each measurement); the
  exact engines run with ``memory_budget_gb=4`` (library default 1; ``--memory-budget-gb``);
* bf16 vs fp32 agreement, bf16 being ``torch.autocast(dtype=torch.bfloat16)`` (what ``caap bench --amp bf16``
  runs; the weights stay fp32, the blank context is recomputed under autocast): the max relative error of the
  timm logits (max |bf16 - fp32| / max |fp32| over each image's logits, worst image) and, per engine, the
  Spearman correlation of the CAAP maps (per image; mean and minimum over the batch).

Without a CUDA device the script prints one line and exits 0; ``--device cpu`` runs it anyway (smoke run:
``--models vit-b16 --sizes 224 --rounds 1 --batch 1``). A configuration that runs out of GPU memory is
skipped with one line. Run: ``python benchmarks/bench_gpu.py [--models vit-b16,vit-l16] [--dtype bf16]``.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass

import torch

# timm, scipy and the library are imported where used: the one-line exit without a GPU stays quick (timm's import
# alone takes ~10 s on a loaded CPU)

# --models choice -> (label, timm name, extra create_model kwargs); vit-tiny is for the test's smoke run only
MODELS = {
    "vit-b16": ("ViT-B/16", "vit_base_patch16_224", {}),
    "vit-l16": ("ViT-L/16", "vit_large_patch16_224", {}),
    "dinov2-g14": ("DINOv2-G/14", "vit_giant_patch14_dinov2", {"init_values": 1.0}),
    "vit-tiny": ("ViT-Ti/16", "vit_tiny_patch16_224", {}),
}
DEFAULT_MODELS = ("vit-b16", "vit-l16", "dinov2-g14")
ENGINES = ("parallel", "efficient", "atp", "atp-star")
DTYPES = ("fp32", "bf16")
WHAT = ("images/s of CAAP (parallel, efficient, atp) and of one timm forward for random ViT-B/16, ViT-L/16 and "
        "DINOv2-G/14 at 224 and 518 px, peak memory, and bf16 vs fp32 agreement")


@dataclass
class Row:
    model: str
    size: int
    patches: int
    method: str
    seconds: float | None = None  # median per batch
    peak: int | None = None  # bytes
    agreement: str = ""
    note: str = ""


def parse_list(text: str, allowed, name: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items or any(t not in allowed for t in items):
        raise argparse.ArgumentTypeError(f"{name} must be a comma-separated subset of {', '.join(allowed)}; "
                                         f"got {text!r}")
    return items


def sizes_arg(text: str) -> list[int]:
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(s < 16 for s in sizes):
        raise argparse.ArgumentTypeError(f"--sizes must be comma-separated image sizes in pixels (>= 16), e.g. "
                                         f"224,518; got {text!r}")
    return sizes


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return int(text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of GiB; got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=lambda t: parse_list(t, MODELS, "--models"), default=list(DEFAULT_MODELS),
                   help=f"comma-separated subset of {', '.join(DEFAULT_MODELS)} (default: all; vit-tiny: test only)")
    p.add_argument("--sizes", type=sizes_arg, default=[224, 518], help="image sizes in pixels (default 224,518)")
    p.add_argument("--engines", type=lambda t: parse_list(t, ENGINES, "--engines"),
                   default=["parallel", "efficient", "atp"], help=f"CAAP engines, subset of {', '.join(ENGINES)}")
    p.add_argument("--batch", type=positive, default=8, help="images per call (default 8)")
    p.add_argument("--rounds", type=positive, default=5, help="timed calls per measurement, median (default 5)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke run (default cuda)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32",
                   help="precision of the timed runs: fp32, or bf16 autocast (agreement: bf16 vs fp32 always)")
    p.add_argument("--memory-budget-gb", type=positive_float, default=4.0,
                   help="CAAP's memory_budget_gb for the exact engines' chunks (default 4)")
    return p


def resolve_device(parser, text: str) -> torch.device | None:
    """The device to run on, or None when a CUDA device is asked for and none is present."""
    try:
        device = torch.device(text)
    except RuntimeError:
        parser.error(f"--device must be cuda, cuda:N or cpu; got {text!r}")
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device must be cuda, cuda:N or cpu; got {text!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return None
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            parser.error(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) (cuda:0..cuda:"
                         f"{torch.cuda.device_count() - 1})")
        device = torch.device("cuda", index)
    return device


class Bench:
    def __init__(self, args, device: torch.device):
        self.args, self.device = args, device
        self.cuda = device.type == "cuda"

    def amp(self, bf16: bool):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def measure(self, fn, bf16: bool):
        """(output of the warm-up call, median seconds of ``--rounds`` synchronized calls, peak bytes or None).
        ``no_grad``, not ``inference_mode``: AtP's backward cannot use the inference tensors the latter makes."""
        with torch.no_grad(), self.amp(bf16):
            out = fn()
            self.sync()
            if self.cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            times = []
            for _ in range(self.args.rounds):
                start = time.perf_counter()
                fn()
                self.sync()
                times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated(self.device) if self.cuda else None
        return out, statistics.median(times), peak

    def once(self, fn, bf16: bool):
        with torch.no_grad(), self.amp(bf16):
            out = fn()
        self.sync()
        return out

    def guarded(self, row: Row, fn) -> bool:
        """Run ``fn(row)``; on CUDA out-of-memory print one line, mark the row and free the cached memory."""
        try:
            fn(row)
            return True
        except torch.cuda.OutOfMemoryError:  # cleaned up below, once the traceback's frames are gone
            row.note = "out of memory"
        from caap import clear_cache

        print(f"skipped {row.model} {row.size} px {row.method}: CUDA out of memory (batch {self.args.batch}; "
              f"try a smaller --batch or --memory-budget-gb)", flush=True)
        clear_cache()
        torch.cuda.empty_cache()
        return False

    def run_config(self, key: str, size: int) -> list[Row]:
        """The rows of one model x size: the timm forward, then CAAP per engine on the HookedViT port."""
        import timm

        from caap import clear_cache
        from vit_lens import HookedViT

        args, device = self.args, self.device
        label, timm_name, extra = MODELS[key]
        state: dict = {}

        def build(row: Row) -> None:
            torch.manual_seed(0)
            with torch.device(device):  # weights created on the device, as is the port below
                state["timm"] = timm.create_model(timm_name, pretrained=False, img_size=size, num_classes=1000,
                                                  **extra).eval()
            g = torch.Generator(device=device).manual_seed(0)
            state["images"] = torch.randn(args.batch, 3, size, size, generator=g, device=device)
            state["targets"] = torch.arange(args.batch, device=device) % 1000

        row = Row(label, size, 0, "timm model")
        if not self.guarded(row, build):
            return [row]
        images, targets = state["images"], state["targets"]
        patches = state["timm"].patch_embed.num_patches
        forward = Row(label, size, patches, "timm forward")
        self.guarded(forward, lambda r: self.time_forward(r, state["timm"], images))
        rows = [forward]

        def port(row: Row) -> None:
            with torch.device(device):
                state["hooked"] = HookedViT.from_timm(state.pop("timm"))

        row = Row(label, size, patches, "HookedViT port")
        if not self.guarded(row, port):
            return rows + [row]
        self.free()
        model = state.pop("hooked")
        for engine in args.engines:
            for cached in (False, True) if engine.startswith("atp") else (False,):
                row = Row(label, size, patches, f"CAAP {engine}{' cached' if cached else ''}")
                self.guarded(row, lambda r: self.time_caap(r, model, engine, images, targets, cached))
                rows.append(row)
        clear_cache(model)
        del model
        self.free()
        return rows

    def free(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()

    def time_forward(self, row: Row, timm_model, images) -> None:
        bf16_timed = self.args.dtype == "bf16"
        logits, row.seconds, row.peak = self.measure(lambda: timm_model(images), bf16_timed)
        other = self.once(lambda: timm_model(images), not bf16_timed)
        fp32, bf16 = (other, logits) if bf16_timed else (logits, other)
        err = ((bf16.float() - fp32).abs().amax(-1) / fp32.abs().amax(-1)).max()
        row.agreement = f"logits max rel err {float(err):.2e}"

    def time_caap(self, row: Row, model, engine: str, images, targets, cached: bool) -> None:
        from scipy.stats import spearmanr

        from caap import CAAP, blank_context, clear_cache

        bf16_timed = self.args.dtype == "bf16"
        caap = CAAP(model, engine=engine, progress=False, batch_size=self.args.batch,
                    memory_budget_gb=self.args.memory_budget_gb)
        cold = engine.startswith("atp") and not cached

        def call():
            if cold:  # the class gradients AtP caches on the blank context: recomputed in this call
                blank_context(model).derived.pop("atp", None)
            return caap.attribute(images, targets)

        clear_cache(model)  # the blank context (and E-CAAP/AtP statistics) of the other precision must not leak
        other = self.once(call, not bf16_timed).float()
        clear_cache(model)
        maps, row.seconds, row.peak = self.measure(call, bf16_timed)
        fp32, bf16 = (other, maps.float()) if bf16_timed else (maps, other)
        rhos = [spearmanr(a.flatten().cpu().numpy(), b.flatten().cpu().numpy()).statistic for a, b in zip(fp32, bf16)]
        row.agreement = f"map Spearman mean {statistics.mean(rhos):.4f}, min {min(rhos):.4f}"


def table(rows: list[Row], batch: int) -> str:
    forward = {(r.model, r.size): r.seconds for r in rows if r.method == "timm forward" and r.seconds}
    lines = ["| model | px | patches | method | images/s | ms/image | x forward | peak MiB | bf16 vs fp32 |",
             "|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.seconds is None:
            lines.append(f"| {r.model} | {r.size} | {r.patches or ''} | {r.method} | {r.note} | | | | |")
            continue
        fwd = forward.get((r.model, r.size))
        ratio = f"{r.seconds / fwd:.2f}" if fwd else ""
        peak = "n/a" if r.peak is None else f"{r.peak / 2**20:.0f}"
        lines.append(f"| {r.model} | {r.size} | {r.patches} | {r.method} | {batch / r.seconds:.2f} | "
                     f"{r.seconds / batch * 1e3:.1f} | {ratio} | {peak} | {r.agreement} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = resolve_device(parser, args.device)
    if device is None:
        print(f"No CUDA device found (torch.cuda.is_available() is False): nothing measured. On a GPU this script "
              f"measures {WHAT}; --device cpu runs it here as a smoke test.")
        return 0
    import timm

    bench = Bench(args, device)
    name = torch.cuda.get_device_name(device) if bench.cuda else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, timm {timm.__version__}; timed in {args.dtype}"
          f"{' (autocast)' if args.dtype == 'bf16' else ''}, batch {args.batch}, median of {args.rounds} rounds; "
          f"default CAAP (3x3 box, blocks 0..ceil(2L/3), white blank), memory_budget_gb {args.memory_budget_gb}; "
          f"bf16 = torch.autocast(bfloat16), fp32 weights", flush=True)
    rows = []
    for key in args.models:
        for size in args.sizes:
            rows += bench.run_config(key, size)
    print(table(rows, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())

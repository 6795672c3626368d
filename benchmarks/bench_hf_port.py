"""Cost of porting a HuggingFace ViT-B/16 (random weights, 224 px) with ``HookedViT.from_hf``, measured in one run.

Prints two ratios (targets <= 2 and <= 1.10):

* port: ``HookedViT.from_hf(hf_model)`` / ``ViTForImageClassification(config)`` (HF's own construction, with
  its weight initialization) — what a user pays on top of loading the model;
* forward: HookedViT forward (no hooks) / transformers forward, batch 8.

Timings are interleaved rounds and each ratio is the median of its per-round ratios, so slow drift of a
shared machine cancels out. Heavy (about a minute on 2 CPU cores): run it by hand, not in the tests.
"""
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import ViTConfig, ViTForImageClassification

sys.path.insert(0, str(Path(__file__).parent))
from _timing import median_seconds  # noqa: E402

from vit_lens import HookedViT  # noqa: E402


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(port_rounds: int = 3, forward_rounds: int = 7) -> None:
    torch.manual_seed(0)
    config = ViTConfig(num_labels=1000)  # ViT-B/16, 224 px
    hf_model = ViTForImageClassification(config).eval()
    HookedViT.from_hf(hf_model)  # warm-up: lazy imports
    port = {"hf_init": [], "from_hf": []}
    for _ in range(port_rounds):
        port["hf_init"].append(seconds(lambda: ViTForImageClassification(config)))
        port["from_hf"].append(seconds(lambda: HookedViT.from_hf(hf_model)))
    port_ratio = statistics.median(p / h for p, h in zip(port["from_hf"], port["hf_init"]))

    model = HookedViT.from_hf(hf_model)
    x = torch.randn(8, 3, 224, 224)
    with torch.inference_mode():
        assert ((model(x) - hf_model(x).logits).abs().max() / hf_model(x).logits.abs().max()) <= 1e-5
    runs = {"hf": lambda: hf_model(x), "hooked": lambda: model(x)}
    for fn in runs.values():
        median_seconds(fn, repeats=1)
    times = {name: [] for name in runs}
    for _ in range(forward_rounds):
        for name, fn in runs.items():
            times[name].append(median_seconds(fn, repeats=1, warmup=0))
    fwd_ratio = statistics.median(h / b for h, b in zip(times["hooked"], times["hf"]))
    med = {name: statistics.median(t) for name, t in {**port, **times}.items()}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {port_rounds} port / {forward_rounds} "
          f"forward interleaved rounds")
    print(f"ViTForImageClassification(config) {med['hf_init']:8.3f} s")
    print(f"HookedViT.from_hf(model)          {med['from_hf']:8.3f} s   ratio {port_ratio:5.2f} (target <= 2)")
    print(f"transformers forward (batch 8)    {med['hf'] * 1e3:8.1f} ms")
    print(f"HookedViT forward                 {med['hooked'] * 1e3:8.1f} ms   ratio {fwd_ratio:5.2f} (target <= 1.10)")


if __name__ == "__main__":
    main()

"""The paper's layer analyses on real weights: attention grouping per layer (Fig. 6) and the cumulative
layer sweep of CAAP (Fig. 7), on the DAVIS-composites with ``dinov2_vits14_davis20`` (../shared/eval).

Writes figures to ``outputs/figures/`` and the sweep records to a resumable JSONL file.
"""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from analysis.data import load_manifest  # noqa: E402
from analysis.evaluate import evaluate, format_table, summarize  # noqa: E402
from analysis.figures import plot_grouping, plot_layer_sweep  # noqa: E402
from analysis.sweeps import grouping_over_samples, layer_sweep_methods  # noqa: E402
from vit_lens import HookedViT  # noqa: E402

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-dir", type=Path, default=EVAL)
    parser.add_argument("--out-dir", type=Path, default=Path("outputs"))
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--n-steps", type=int, default=16)
    args = parser.parse_args()
    model = HookedViT.from_checkpoint(args.eval_dir / "models" / "dinov2_vits14_davis20.safetensors")
    samples = load_manifest(args.eval_dir / "composites" / "manifest.csv", kind="single")[: args.limit]
    (args.out_dir / "figures").mkdir(parents=True, exist_ok=True)

    grouping = grouping_over_samples(model, samples)
    plot_grouping(grouping, "dinov2_vits14_davis20, single composites").savefig(args.out_dir / "figures/grouping.png")
    diff = grouping["diff"].mean(0)
    print(f"attention grouping over {grouping['diff'].shape[0]} composites: mean intra - extra per layer")
    print("  " + " ".join(f"{l}:{v:.4f}" for l, v in enumerate(diff.tolist())))
    print(f"  peak at layer {int(diff.argmax())}; default CAAP patches blocks 0..{-(-2 * model.cfg.n_layers // 3)}")
    if args.skip_sweep:
        return
    methods = layer_sweep_methods(model, range(model.cfg.n_layers))
    records = evaluate(model, methods, samples, args.out_dir / "quality/layer_sweep.jsonl", only_correct=True,
                       n_steps=args.n_steps)
    summary = summarize(records)
    plot_layer_sweep(summary, "CAAP, blocks 0..end").savefig(args.out_dir / "figures/layer_sweep.png")
    print("cumulative layer sweep (CAAP patching blocks 0..end), correctly classified single composites")
    print(format_table(summary))


if __name__ == "__main__":
    main()

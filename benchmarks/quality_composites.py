"""Faithfulness and localization of CAAP, E-CAAP and baselines on the DAVIS-composites (real weights).

Model ``dinov2_vits14_davis20`` (../shared/eval), the single-object composites, correctly classified
images only, explaining the true class. Results are appended to a JSONL file as they are computed
(rerun to resume) and summarized as a markdown table (metrics x 100, mean ± standard error).
"""
import argparse
from pathlib import Path

from analysis.data import load_manifest
from analysis.evaluate import default_methods, evaluate, format_table, summarize
from vit_lens import HookedViT

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-dir", type=Path, default=EVAL)
    parser.add_argument("--kind", default="single", choices=["single", "pair"])
    parser.add_argument("--out", type=Path, default=Path("outputs/quality/composites_single.jsonl"))
    parser.add_argument("--n-steps", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    model = HookedViT.from_checkpoint(args.eval_dir / "models" / "dinov2_vits14_davis20.safetensors")
    samples = load_manifest(args.eval_dir / "composites" / "manifest.csv", kind=args.kind)[: args.limit]
    records = evaluate(model, default_methods(model), samples, args.out, only_correct=True, n_steps=args.n_steps)
    print(f"dinov2_vits14_davis20, composites ({args.kind}), correctly classified images, true class, "
          f"{args.n_steps} perturbation steps")
    print(format_table(summarize(records)))


if __name__ == "__main__":
    main()

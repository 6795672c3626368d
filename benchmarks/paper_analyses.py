"""The paper's layer and ablation figures on real weights (../shared/eval): a thin wrapper running
``caap figure grouping|layers|blanks|selection`` with ``dinov2_vits14_davis20`` on the DAVIS-composites.

    python benchmarks/paper_analyses.py [--n 20] [--n-steps 16] [--only grouping layers] [--out-dir outputs/figures]

Grouping uses every composite (singles: intra vs background; pairs with masks_a/masks_b: inter-object); the metric
figures use a seeded subset of the single composites the model classifies correctly, explaining the label.
"""
import argparse
from pathlib import Path

from analysis.cli import main as caap

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-dir", type=Path, default=EVAL)
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/figures"))
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--n-steps", type=int, default=16)
    parser.add_argument("--only", nargs="+", default=["grouping", "layers", "blanks", "selection"])
    args = parser.parse_args()
    model = ["--weights", str(args.eval_dir / "models" / "dinov2_vits14_davis20.safetensors"),
             "--dataset", "manifest", "--root", str(args.eval_dir / "composites")]
    metric_opts = ["--split", "single", "--n", str(args.n), "--n-steps", str(args.n_steps), "--target", "label",
                   "--only-correct"]
    for figure in args.only:
        extra = [] if figure == "grouping" else metric_opts
        if figure == "layers":
            extra += ["--ends", "0", "2", "4", "6", "8", "10", "11"]
        status = caap(["figure", figure, *model, *extra, "--out", str(args.out_dir / figure)])
        if status:
            raise SystemExit(status)


if __name__ == "__main__":
    main()

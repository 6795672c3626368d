"""Thin wrapper: the README's quality table on the DAVIS-composites with ``caap bench``.

Equivalent to::

    caap bench --weights ../shared/eval/models/dinov2_vits14_davis20.safetensors --dataset manifest \
        --root ../shared/eval/composites/manifest.csv --split single \
        --methods caap,e-caap,e-caap-eq9,simple-insertion,simple-deletion,grad-cam --out outputs/quality/composites

Extra arguments are passed on (e.g. ``--n-steps 16``, ``--only-correct``, ``--n 50``). Needs ../shared/eval.
"""
import sys
from pathlib import Path

from analysis.cli import main

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"
METHODS = "caap,e-caap,e-caap-eq9,simple-insertion,simple-deletion,grad-cam"


def argv(extra: list[str]) -> list[str]:
    defaults = {"--weights": str(EVAL / "models" / "dinov2_vits14_davis20.safetensors"), "--dataset": "manifest",
                "--root": str(EVAL / "composites" / "manifest.csv"), "--split": "single", "--methods": METHODS,
                "--out": "outputs/quality/composites"}
    given = {a for a in extra if a.startswith("--")}
    out = ["bench"]
    for flag, value in defaults.items():
        if flag not in given and not (flag == "--weights" and "--model" in given):
            out += [flag, value]
    return out + extra


if __name__ == "__main__":
    sys.exit(main(argv(sys.argv[1:])))

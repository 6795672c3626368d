"""benchmarks/bench_gpu.py: the one-line exit without a GPU, and a CPU smoke run of every code path."""
import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/bench_gpu.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script would benchmark it")
def test_without_cuda_one_line_and_exit_0():
    result = run()  # python benchmarks/bench_gpu.py, as the README shows it
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert "No CUDA device" in lines[0] and "CAAP" in lines[0] and "bf16" in lines[0]


def test_cpu_smoke_run_measures_every_engine():
    result = run("--device", "cpu", "--models", "vit-tiny", "--sizes", "64", "--rounds", "1", "--batch", "2")
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] == "ViT-Ti/16":
            rows[cells[3]] = cells
    assert set(rows) == {"timm forward", "CAAP parallel", "CAAP efficient", "CAAP atp", "CAAP atp cached"}
    for model, px, patches, method, per_sec, ms, ratio, peak, agreement in rows.values():
        assert (px, patches, peak) == ("64", "16", "n/a")  # 64 px / 16 = 4x4 patches; no CUDA memory on CPU
        assert float(per_sec) > 0 and math.isclose(float(per_sec) * float(ms) / 1e3, 1, rel_tol=0.05)
    assert rows["timm forward"][6] == "1.00"
    assert all(float(rows[m][6]) > 0 for m in rows)
    # bf16 really ran: its logits differ from fp32, but only by bf16 rounding
    err = float(re.fullmatch(r"logits max rel err (\S+)", rows["timm forward"][8]).group(1))
    assert 1e-5 < err < 0.1
    for method in rows.keys() - {"timm forward"}:
        mean, low = map(float, re.fullmatch(r"map Spearman mean (\S+), min (\S+)", rows[method][8]).groups())
        assert 0.5 < low <= mean <= 1.0  # finite (non-constant maps) and close, not a mismatched pair of maps


def test_bad_arguments_name_the_option(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / SCRIPT)
    bench_gpu = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_gpu", bench_gpu)  # its dataclass resolves annotations there
    spec.loader.exec_module(bench_gpu)
    for args, option in ((("--models", "vit-x"), "--models"), (("--device", "tpu"), "--device"),
                         (("--sizes", "abc"), "--sizes"), (("--batch", "0"), "--batch"),
                         (("--engines", "loop"), "--engines"), (("--memory-budget-gb", "0"), "--memory-budget-gb")):
        with pytest.raises(SystemExit) as exit_info:
            bench_gpu.main(list(args))
        assert exit_info.value.code == 2 and option in capsys.readouterr().err, args

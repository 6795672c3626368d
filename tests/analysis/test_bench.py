"""``caap bench`` end to end on a tiny local checkpoint: files, resume, refusals, and torchrun (2 gloo ranks)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.cli import main
from tests.conftest import write_checkpoint, write_manifest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    write_checkpoint(tmp)
    write_manifest(tmp, 5)
    return tmp


def args(setup, out, *extra):
    return ["bench", "--weights", str(setup / "tiny.safetensors"), "--dataset", "manifest", "--root",
            str(setup / "manifest.csv"), "--methods", "grad-cam,caap", "--n-steps", "4", "--no-progress",
            "--out", str(out), *extra]


def test_bench_writes_resumes_and_refuses(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(args(setup, out, "--n", "4", "--seed", "1")) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["curves"]["deletion"]) == 5 for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert run["protocol"]["target"] == "predicted" and run["n"] == 4 and "torch" in run["versions"]
    table = (out / "table.md").read_text()
    assert "| grad-cam | 4 |" in table and "AUPR₁" in table and "**" in table
    assert (out / "table.csv").read_text().startswith("method,deletion_mean")
    # resume: a torn last line is dropped, nothing else recomputed
    with open(out / "results.jsonl", "a") as f:
        f.write('{"sample": "im')
    assert main(args(setup, out, "--n", "4", "--seed", "1")) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 8
    capsys.readouterr()
    # another run's settings into the same directory: refused, nothing lost
    assert main(args(setup, out, "--n", "4", "--seed", "1", "--target", "label")) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "protocol" in err and len(err.strip().splitlines()) == 1
    assert len((out / "results.jsonl").read_text().splitlines()) == 8


def test_table_only_and_common_images(setup, tmp_path, capsys):
    """An incomplete run (a long method stopped part-way) is tabulated without scoring or touching the rows
    (a running job may still be appending), with n per method, and like for like with --common-images."""
    out = tmp_path / "run"
    assert main(args(setup, out, "--n", "4", "--seed", "1")) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    caap_samples = [json.loads(x)["sample"] for x in lines if json.loads(x)["method"] == "caap"]
    partial = [x for x in lines if not (json.loads(x)["method"] == "caap" and json.loads(x)["sample"] in
                                        caap_samples[2:])]
    text = "\n".join(partial) + '\n{"sample": "im'  # plus a line still being written
    (out / "results.jsonl").write_text(text)
    (out / "table.md").unlink()
    assert main(args(setup, out, "--n", "4", "--seed", "1", "--table-only")) == 0
    assert (out / "results.jsonl").read_text() == text
    table = (out / "table.md").read_text()
    assert "| grad-cam | 4 |" in table and "| caap | 2 |" in table and "n differs across methods" in table
    assert main(args(setup, out, "--n", "4", "--seed", "1", "--table-only", "--common-images")) == 0
    table = (out / "table.md").read_text()
    assert "| grad-cam | 2 |" in table and "| caap | 2 |" in table and "every method scored" in table
    expected = {x: json.loads(x) for x in partial}
    kept = [r for r in expected.values() if r["sample"] in caap_samples[:2] and r["method"] == "grad-cam"]
    mean_del = 100 * np.mean([r["deletion"] for r in kept])
    assert f"{mean_del:.2f}" in table.splitlines()[2]
    reordered = [("caap,grad-cam" if a == "grad-cam,caap" else a) for a in args(setup, out, "--n", "4", "--seed", "1")]
    assert main(reordered + ["--table-only"]) == 0  # rows follow the --methods order given
    assert [line.split(" | ")[0] for line in (out / "table.md").read_text().splitlines()[2:4]] == ["| caap", "| grad-cam"]
    capsys.readouterr()
    assert main(args(setup, tmp_path / "none", "--table-only")) == 2
    assert "--table-only" in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_paired_differences_table(setup, tmp_path, capsys):
    """--paired REF: each other method minus REF on the same images, mean ± SE of the per-image difference,
    recomputed here from the rows; REF must be one of --methods and the run must have paper metrics, checked
    before anything is written."""
    out = tmp_path / "run"
    assert main(args(setup, out, "--n", "4", "--seed", "1", "--paired", "caap")) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by = {(r["method"], r["sample"]): r for r in rows}
    samples = sorted({r["sample"] for r in rows})
    for key, column in ((0, "deletion"), (3, "aupr1")):
        d = np.array([100 * (by[("grad-cam", s)][column] - by[("caap", s)][column]) for s in samples])
        cell = (out / "table_paired.md").read_text().splitlines()[2].split(" | ")[2 + key]
        assert cell == f"{d.mean():+.2f} ± {d.std() / np.sqrt(len(d)):.2f}"
    assert (out / "table_paired.md").read_text().splitlines()[2].startswith("| grad-cam | 4 |")
    assert (out / "table_paired.csv").read_text().startswith("method,reference,n,deletion_diff_mean")
    capsys.readouterr()
    for extra, needle in ((["--paired", "gae"], "--paired: 'gae' is not one of --methods"),
                          (["--paired", "caap", "--metrics", "segmentation"], "--paired compares the paper's")):
        assert main(args(setup, tmp_path / "x", *extra)) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


@pytest.mark.parametrize("change, message", [
    (["--methods", "caap,nope"], "unknown method(s) nope; registered: caap"),
    (["--dataset", "imagenet-x"], "unknown dataset 'imagenet-x'; available: imagenet-s50"),
    (["--dataset", "food101"], "food101: missing"),
    (["--dataset", "oxford-pet", "--root", "/nonexistent"], "--root /nonexistent: no such file"),
])
def test_user_errors_are_one_line(setup, tmp_path, capsys, change, message):
    argv = args(setup, tmp_path / "x")
    for flag, value in zip(change[::2], change[1::2]):
        i = argv.index(flag)
        argv[i + 1] = value
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_class_count_mismatch(setup, tmp_path, capsys):
    base = tmp_path / "food-101"
    (base / "images" / "a").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(base / "images" / "a" / "1.jpg")
    (base / "meta").mkdir()
    (base / "meta" / "test.json").write_text(json.dumps({"a": ["a/1"]}))
    argv = args(setup, tmp_path / "x")
    argv[argv.index("--dataset") + 1], argv[argv.index("--root") + 1] = "food101", str(tmp_path)
    assert main(argv) == 2
    assert "the model has 7 classes but food101 has 1" in capsys.readouterr().err


def test_torchrun_two_gloo_ranks_equal_a_single_process(setup, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert main(args(setup, single)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port),
           "-m", "analysis.cli", *args(setup, multi)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in multi.glob("results*.jsonl")) == ["results.rank0.jsonl", "results.rank1.jsonl"]
    assert (multi / "table.md").read_text() == (single / "table.md").read_text()
    assert (multi / "table.csv").read_text() == (single / "table.csv").read_text()
    # a killed rank: its part lost rows (and ends torn); a rerun (here single-process) computes only those
    part = multi / "results.rank1.jsonl"
    lines = part.read_text().splitlines()
    part.write_text(lines[0] + "\n" + lines[1][:20])
    assert main(args(setup, multi)) == 0
    assert len((multi / "results.jsonl").read_text().splitlines()) == len(lines) - 1
    assert (multi / "table.md").read_text() == (single / "table.md").read_text()


def test_console_script_dispatches_explain(setup, tmp_path, capsys):
    out = tmp_path / "o.png"
    assert main(["explain", str(setup / "im0.png"), "--weights", str(setup / "tiny.safetensors"), "--out", str(out)]) == 0
    assert out.is_file() and "top-5" in capsys.readouterr().out
    assert main(["explain", str(tmp_path / "missing.png"), "--weights", str(setup / "tiny.safetensors")]) == 2


def test_amp_bf16_runs_and_stays_close(setup, tmp_path):
    exact, amp = tmp_path / "fp32", tmp_path / "bf16"
    base = args(setup, exact, "--n", "2")
    base[base.index("--methods") + 1] = "grad-cam"
    assert main(base) == 0
    base[base.index("--out") + 1] = str(amp)
    assert main(base + ["--amp", "bf16"]) == 0
    read = lambda d: [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()]  # noqa: E731
    for a, b in zip(read(exact), read(amp)):
        assert abs(a["deletion"] - b["deletion"]) < 0.05 and abs(a["insertion"] - b["insertion"]) < 0.05
    assert json.loads((amp / "run.json").read_text())["amp"] == "bf16"

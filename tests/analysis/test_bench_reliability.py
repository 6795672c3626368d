"""``caap bench`` / ``caap figure`` reliability (issue 18): the README's torchrun command typed as a user types it
(the ``torchrun`` and ``caap`` console scripts, 2 gloo ranks, ``--n``), no option of ours that torchrun could take,
resume keyed on content (another --root with the same names, a checkpoint rewritten in place, a method whose
settings changed), figures that refuse rows of another run, arguments checked before anything is written, one-line
errors for corrupt run folders, and Ctrl-C as one line with exit status 130."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.cli import build_parser, main
from tests.conftest import one_line_error, write_checkpoint, write_manifest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliable")
    write_checkpoint(tmp)
    write_manifest(tmp / "data", 4, seed=0)
    write_manifest(tmp / "other", 4, seed=1)  # same file names, other pixels
    return tmp


def bench_args(setup, out, *extra, root=None, methods="grad-cam,rollout"):
    return ["bench", "--weights", str(setup / "tiny.safetensors"), "--dataset", "manifest", "--root",
            str(root or setup / "data" / "manifest.csv"), "--methods", methods, "--n-steps", "4", "--no-progress",
            "--out", str(out), *extra]


# ------------------------------------------------------------------------------------------ torchrun
def test_readme_torchrun_command_with_n_through_the_console_scripts(setup, tmp_path):
    """`torchrun --no-python --nproc-per-node 2 -- caap bench ... --n 3` exactly as the README shows it (the `--`
    keeps torchrun's argparse from reading caap's options: `--n` alone is an ambiguous torchrun prefix)."""
    readme = (REPO / "README.md").read_text()
    assert "torchrun --no-python --nproc-per-node 8 -- caap bench" in readme and "--n 500" in readme
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert main(bench_args(setup, single, "--n", "3")) == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(BIN / "torchrun"), "--no-python", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), "--", "caap", *bench_args(setup, multi, "--n", "3")]
    assert shutil.which("caap", path=env["PATH"]) == str(BIN / "caap")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in multi.glob("results*.jsonl")) == ["results.rank0.jsonl", "results.rank1.jsonl"]
    assert json.loads((multi / "run.json").read_text())["n"] == 3
    assert (multi / "table.md").read_text() == (single / "table.md").read_text()


def test_torchrun_with_suite_metrics_resumes_only_the_missing_metric(setup, tmp_path):
    """Real torchrun (2 gloo ranks, the console scripts) with ``--metrics``: per-rank suite files, the same table as
    one process; adding a metric to the finished run computes only its rows (the other files are untouched)."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    metrics = "deletion,avg-drop,random-logit"
    assert main(bench_args(setup, single, "--n", "3", "--metrics", metrics + ",segmentation")) == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def launch(metric_names):
        cmd = [str(BIN / "torchrun"), "--no-python", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(port), "--", "caap", *bench_args(setup, multi, "--n", "3", "--metrics",
                                                                      metric_names)]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    launch(metrics)
    files = sorted(p.name for p in multi.glob("*.jsonl"))
    assert files == sorted(f"{stem}.rank{r}.jsonl" for stem in ("results", "metrics-avg-drop", "metrics-random-logit")
                           for r in (0, 1))
    before = {name: (multi / name).read_bytes() for name in files}
    launch(metrics + ",segmentation")
    assert {name: (multi / name).read_bytes() for name in files} == before  # nothing recomputed
    seg = [json.loads(line) for r in (0, 1) for line in (multi / f"metrics-segmentation.rank{r}.jsonl").open()]
    assert len(seg) == 3 * 2  # 3 images x 2 methods, split over the ranks
    assert (multi / "table.md").read_text() == (single / "table.md").read_text()


def torchrun_options() -> set[str]:
    from torch.distributed.run import get_args_parser

    return {s for a in get_args_parser()._actions for s in a.option_strings if s.startswith("--")}


def our_options() -> set[str]:
    import argparse

    found, todo = set(), [build_parser()]
    while todo:
        parser = todo.pop()
        for action in parser._actions:
            found |= {s for s in action.option_strings if s.startswith("--")}
            if isinstance(action, argparse._SubParsersAction):
                todo += list(action.choices.values())
    return found - {"--help"}


def test_no_caap_option_can_be_taken_by_torchrun():
    """Without the `--`, torchrun's argparse reads options after the script too: an option of ours that equals a
    torchrun option, or is a prefix of exactly one, would be silently consumed by torchrun. The only collisions
    allowed are ambiguous prefixes (torchrun then stops with an error, never a silent misreading)."""
    theirs, ours = torchrun_options(), our_options()
    assert {"--n", "--n-steps", "--out", "--methods"} <= ours and "--nnodes" in theirs
    for option in ours:
        matches = {t for t in theirs if t.startswith(option)}
        assert option not in theirs and len(matches) != 1, (option, matches)


# ------------------------------------------------------------------------------------------ resume key
def test_resume_refuses_another_root_with_the_same_file_names(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(bench_args(setup, out)) == 0
    before = (out / "results.jsonl").read_text()
    code = main(bench_args(setup, out, root=setup / "other" / "manifest.csv"))
    one_line_error(code, capsys, "holds another run", "dataset_fingerprint")
    assert (out / "results.jsonl").read_text() == before
    moved = tmp_path / "moved"  # the same content elsewhere is the same run: nothing recomputed
    shutil.copytree(setup / "data", moved)
    assert main(bench_args(setup, out, root=moved / "manifest.csv")) == 0
    assert (out / "results.jsonl").read_text() == before


def test_resume_refuses_a_checkpoint_rewritten_in_place(setup, tmp_path, capsys):
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    write_checkpoint(ckpt_dir, seed=0)
    argv = bench_args(setup, tmp_path / "run")
    argv[argv.index("--weights") + 1] = str(ckpt_dir / "tiny.safetensors")
    assert main(argv) == 0
    write_checkpoint(ckpt_dir, seed=3)  # same path, same size, other weights
    one_line_error(main(argv), capsys, "holds another run", "weights_sha256")


def test_resume_refuses_a_method_whose_settings_changed(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(bench_args(setup, out)) == 0
    run = json.loads((out / "run.json").read_text())
    from caap.registry import method_settings

    assert run["method_settings"]["rollout"] == method_settings("rollout")  # recorded per method
    run["method_settings"]["rollout"]["start_layer"] += 1  # as another default would have stored it
    (out / "run.json").write_text(json.dumps(run))
    one_line_error(main(bench_args(setup, out)), capsys, "method 'rollout' was scored with other settings")
    assert main(bench_args(setup, out, methods="grad-cam")) == 0  # untouched methods still resume


# ------------------------------------------------------------------------------------------ checked first
@pytest.mark.parametrize("flag, value, message", [
    ("--n-steps", "0", "--n-steps must be an integer >= 1; got 0"),
    ("--n-steps", "-3", "--n-steps must be an integer >= 1; got -3"),
    ("--pixels-per-step", "0", "--pixels-per-step must be an integer >= 1; got 0"),
    ("--n", "0", "--n must be an integer >= 1; got 0"),
    ("--seed", "-1", "--seed must be an integer >= 0; got -1"),
    ("--batch-size", "0", "--batch-size must be an integer >= 1; got 0"),
    ("--memory-budget-gb", "nan", "--memory-budget-gb must be a finite number > 0; got nan"),
])
def test_bad_numbers_are_refused_before_anything_is_written(setup, tmp_path, capsys, flag, value, message):
    out = tmp_path / "run"
    argv = [a for a in bench_args(setup, out) if a not in ("--n-steps", "4")] if flag == "--pixels-per-step" \
        else bench_args(setup, out)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    one_line_error(main(argv), capsys, message)
    assert not out.exists()
    assert main(bench_args(setup, out)) == 0  # the corrected command is not locked out


def test_out_that_is_a_file(setup, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    one_line_error(main(bench_args(setup, tmp_path / "f")), capsys, "is a file; --out must be a directory")
    one_line_error(main(bench_args(setup, tmp_path / "f" / "sub")), capsys, "is a file")


@pytest.mark.parametrize("content, message", [
    ("{}\n", "line 1 is not a result row"),
    ('[1, 2]\n', "got list"),
    ('{"sample": "im0"}\n', "line 1 is not a result row"),
])
def test_corrupt_results_rows_are_one_line(setup, tmp_path, capsys, content, message):
    out = tmp_path / "run"
    assert main(bench_args(setup, out)) == 0
    rows = (out / "results.jsonl").read_text()
    (out / "results.jsonl").write_text(content + rows)
    one_line_error(main(bench_args(setup, out)), capsys, "results.jsonl", message)


def test_run_json_that_is_not_an_object(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(bench_args(setup, out)) == 0
    (out / "run.json").write_text("[1, 2]")
    one_line_error(main(bench_args(setup, out)), capsys, "run.json must hold a JSON object")
    (out / "run.json").write_text("{not json")
    one_line_error(main(bench_args(setup, out)), capsys, "run.json is not valid JSON")


# ------------------------------------------------------------------------------------------ figures
def figure_args(setup, out, results, *extra, weights=None, root=None):
    return ["figure", "curves", "--weights", str(weights or setup / "tiny.safetensors"), "--root",
            str(root or setup / "data" / "manifest.csv"), "--methods", "grad-cam,rollout", "--n-steps", "4",
            "--no-progress", "--out", str(out), "--results", str(results), *extra]


def test_figure_curves_refuses_rows_of_another_run(setup, tmp_path, capsys):
    bench = tmp_path / "bench"
    assert main(bench_args(setup, bench)) == 0
    capsys.readouterr()
    assert main(figure_args(setup, tmp_path / "fig", bench)) == 0  # same settings: rows reused
    assert not (tmp_path / "fig" / "curves.jsonl").exists()
    capsys.readouterr()
    one_line_error(main(figure_args(setup, tmp_path / "f2", bench, "--target", "label")), capsys,
                   "computed with protocol")
    steps = figure_args(setup, tmp_path / "f3", bench)
    steps[steps.index("--n-steps") + 1] = "8"
    one_line_error(main(steps), capsys, "computed with protocol")
    other = tmp_path / "other_ckpt"
    other.mkdir()
    write_checkpoint(other, seed=5)
    one_line_error(main(figure_args(setup, tmp_path / "f4", bench, weights=other / "tiny.safetensors")), capsys,
                   "weights_sha256")
    one_line_error(main(figure_args(setup, tmp_path / "f5", bench, root=setup / "other" / "manifest.csv")), capsys,
                   "differs from the one the rows were computed on")
    (bench / "run.json").unlink()
    one_line_error(main(figure_args(setup, tmp_path / "f6", bench)), capsys, "no run.json")


# ------------------------------------------------------------------------------------------ Ctrl-C, checkpoints
def test_sigint_is_one_line_and_exit_130(setup, tmp_path):
    """A real SIGINT to the `caap` console script while it scores: one line, exit status 130, rows kept."""
    data = tmp_path / "many"
    data.mkdir()
    rows = ["image,mask,label"]
    for i in range(200):  # enough images that the run is still scoring when the signal arrives, on any machine
        shutil.copy(setup / "data" / "im0.png", data / f"im{i}.png")
        shutil.copy(setup / "data" / "m0.png", data / f"m{i}.png")
        rows.append(f"im{i}.png,m{i}.png,0")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    argv = bench_args(setup, out, root=data / "manifest.csv", methods="rise")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a shell that starts jobs in the background (CI) ignores SIGINT for them, and Python keeps an ignored SIGINT:
    # give the child the default disposition a terminal gives, so it sees Ctrl-C as a user's run would
    proc = subprocess.Popen([str(BIN / "caap"), *argv], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = out / "results.jsonl"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (results.exists() and results.read_text().strip()):
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "caap: interrupted (rerun the same command to resume)"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert 1 <= len(results.read_text().splitlines()) < 200


def test_explain_refuses_a_pickled_object_in_one_line(setup, tmp_path, capsys):
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"w": Evil()}, evil)
    shutil.copy(setup / "tiny.json", tmp_path / "evil.json")
    code = main(["explain", str(setup / "data" / "im0.png"), "--weights", str(evil), "--out", str(tmp_path / "o.png")])
    one_line_error(code, capsys, "refused checkpoint", "posix.system" if os.name == "posix" else "GLOBAL")

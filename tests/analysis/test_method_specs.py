"""Method options on the command line (issue 24): ``--methods caap:radius=0:blank=mean`` is ``get_method("caap",
model, radius=0, blank="mean")`` under one canonical name, in ``caap bench`` rows, tables and run.json (resume key),
in MPRT's rebuild, in ``caap figure gallery`` and ``caap view``; bad specs are one line, exit 2, nothing written."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.cli import main
from caap import get_method
from caap.registry import canonical_spec, check_method_specs, get_method_spec, method_settings, parse_method_spec, \
    register
from tests.conftest import make_hooked, random_images, write_checkpoint, write_manifest

BIN = Path(sys.executable).parent
SPEC, REORDERED, OPTIONS = "caap:radius=0:blank=mean", "caap:blank=mean:radius=0", {"radius": 0, "blank": "mean"}


def test_grammar_values_and_canonical_spelling():
    name, options = parse_method_spec("caap : radius=0:blank=mean:a=1.5:b=TRUE:c=false:d=none:e=1e-3:f=-2:g=0.5x")
    assert name == "caap" and options == {"radius": 0, "blank": "mean", "a": 1.5, "b": True, "c": False, "d": None,
                                          "e": 0.001, "f": -2, "g": "0.5x"}
    assert [type(options[k]) for k in "abdef"] == [float, bool, type(None), float, int]
    assert canonical_spec(SPEC) == canonical_spec(REORDERED) == REORDERED
    assert canonical_spec("rollout:start_layer=02:discard_ratio=1e-1") == "rollout:discard_ratio=0.1:start_layer=2"
    assert canonical_spec("gae") == "gae" and canonical_spec("x:b=none:a=true") == "x:a=true:b=none"
    for spec in ("caap:radius", "caap:=1", ":radius=0", "caap:radius=", "caap:radius=1:radius=2", "caap:1x=2",
                 "caap:a=1e999", ""):
        with pytest.raises(ValueError):
            parse_method_spec(spec)
    assert check_method_specs(f" {SPEC}, gae,e-caap:engine=loop") == [REORDERED, "gae", "e-caap:engine=loop"]
    with pytest.raises(ValueError, match="same method"):
        check_method_specs(f"{SPEC},{REORDERED}")
    with pytest.raises(ValueError, match="has no option 'foo'; its options are: .*radius"):
        check_method_specs("caap:foo=1")
    with pytest.raises(ValueError, match="must not contain ':'"):
        register("my:method", lambda model: None)


def test_spec_builds_the_method_with_its_options(monkeypatch):
    model = make_hooked("vit")
    x = random_images(model, 2)
    expected = get_method("caap", model, **OPTIONS).attribute(x)
    torch.testing.assert_close(get_method_spec(SPEC, model).attribute(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(get_method(REORDERED, model).attribute(x), expected, rtol=0, atol=0)
    assert not torch.allclose(get_method("caap", model).attribute(x), expected)  # the options change the map
    assert method_settings(SPEC) == method_settings("caap", **OPTIONS) != method_settings("caap")
    assert get_method_spec("e-caap:engine=loop", model).engine == "loop"  # over the registered default
    with pytest.raises(ValueError, match=r"^method spec 'caap:radius=-1': radius must be an int >= 0; got -1$"):
        get_method_spec("caap:radius=-1", model)
    import caap.registry

    monkeypatch.setattr(caap.registry, "_USER", {})  # registered for this test only
    register("spec-kwargs-test", lambda model, **kw: get_method("gae", model, **kw))  # no signature to check
    with pytest.raises(ValueError, match="'spec-kwargs-test:foo=1': .*unexpected keyword argument 'foo'"):
        get_method_spec("spec-kwargs-test:foo=1", model)  # the constructor's TypeError, as one ValueError line


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("specs")
    write_checkpoint(tmp)
    write_manifest(tmp, 2)
    return tmp


def bench_args(setup, out, methods, *extra):
    return ["bench", "--weights", str(setup / "tiny.safetensors"), "--dataset", "manifest", "--root",
            str(setup / "manifest.csv"), "--methods", methods, "--n", "2", "--n-steps", "4", "--no-progress",
            "--out", str(out), *extra]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bench_console_script_records_recomputes_and_resumes(setup, tmp_path, capsys):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(BIN / "caap"), *bench_args(setup, out, f"{SPEC},caap", "--metrics",
                                                          "deletion,insertion,aupr,pointing-game,mprt")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows, mprt = read_rows(out / "results.jsonl"), read_rows(out / "metrics-mprt.jsonl")
    assert sorted({r["method"] for r in rows}) == sorted({r["method"] for r in mprt}) == ["caap", REORDERED]
    table = (out / "table.md").read_text()
    assert f"| {REORDERED} | 2 |" in table and f"| {REORDERED} | 2 |" in done.stdout and SPEC not in table
    run = json.loads((out / "run.json").read_text())
    assert run["methods"] == [REORDERED, "caap"]
    assert run["method_settings"][REORDERED] == method_settings("caap", **OPTIONS)
    assert run["method_settings"][REORDERED]["radius"] == 0 and run["method_settings"][REORDERED]["blank"] == "mean"

    # the rows are those of get_method("caap", model, radius=0, blank="mean"), MPRT's rebuild included
    from analysis.data import subset
    from analysis.datasets import get_dataset
    from analysis.evaluate import Protocol, score_sample
    from analysis.metrics import get_metric
    from caap.cli import load_checked_model

    model = load_checked_model(argparse.Namespace(model=None, weights=setup / "tiny.safetensors", hf=None,
                                                  device="cpu"))
    samples = subset(get_dataset("manifest", setup / "manifest.csv", None).samples, 2, 0)
    plain = {r["sample"]: r for r in rows if r["method"] == "caap"}
    for sample in samples:
        method = {"x": get_method("caap", model, **OPTIONS).attribute}
        mine = list(score_sample(model, method, ["x"], sample, Protocol("predicted", False, None, 4), seed=0,
                                 extras=[(get_metric("mprt"), ["x"])],
                                 rebuild=lambda n, m: get_method("caap", m, **OPTIONS).attribute))
        row = next(r for r in rows if r["method"] == REORDERED and r["sample"] == sample.name)
        for key in ("deletion", "insertion", "aupr1", "aupr0"):
            assert row[key] == pytest.approx(mine[0][key], rel=1e-5, abs=1e-7), key
        assert abs(row["aupr1"] - plain[sample.name]["aupr1"]) > 1e-4  # radius 1 / white differs
        np.testing.assert_allclose(row["curves"]["deletion"], mine[0]["curves"]["deletion"], rtol=1e-5)
        blocks = next(r for r in mprt if r["method"] == REORDERED and r["sample"] == sample.name)["mprt_blocks"]
        np.testing.assert_allclose(blocks["spearman"], mine[1]["mprt_blocks"]["spearman"], atol=1e-6)

    # the options reordered: the same method, resumed (no row recomputed)
    sizes = {p.name: p.stat().st_size for p in out.glob("*.jsonl")}
    capsys.readouterr()
    assert main(bench_args(setup, out, "caap:blank=mean:radius=0,caap", "--metrics",
                           "deletion,insertion,aupr,pointing-game,mprt")) == 0
    assert {p.name: p.stat().st_size for p in out.glob("*.jsonl")} == sizes
    assert json.loads((out / "run.json").read_text())["methods"] == [REORDERED, "caap"]
    assert f"| {REORDERED} | 2 |" in capsys.readouterr().out


@pytest.mark.parametrize("methods, needles", [
    ("caap:foo=1", ["--methods: method spec 'caap:foo=1': method 'caap' has no option 'foo'", "radius"]),
    ("caap:radius=-1", ["--methods: method spec 'caap:radius=-1': radius must be an int >= 0; got -1"]),
    ("caap:blank=grey", ["method spec 'caap:blank=grey': blank must be one of ('white', 'black', 'mean'"]),
    ("caap:radius=0.5", ["method spec 'caap:radius=0.5': radius must be an int >= 0; got 0.5"]),
    ("nope:radius=0,gae", ["--methods: unknown method(s) nope; registered: caap"]),
    (f"{SPEC},gae,{REORDERED}", [f"'{SPEC}' and '{REORDERED}' are the same method ('{REORDERED}')"]),
    ("caap:radius", ["'radius' is not KEY=VALUE"]),
])
def test_bench_bad_specs_are_one_line_and_write_nothing(setup, tmp_path, capsys, methods, needles):
    out = tmp_path / "x"
    assert main(bench_args(setup, out, methods)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(n in err for n in needles), err
    assert not out.exists()  # checked before run.json


def test_figure_gallery_and_view_take_specs(setup, tmp_path, capsys):
    from analysis.data import load_sample
    from analysis.datasets import get_dataset
    from caap.cli import load_checked_model

    fig = ["figure", "gallery", "--weights", str(setup / "tiny.safetensors"), "--root", str(setup / "manifest.csv"),
           "--n", "1", "--no-progress"]
    assert main([*fig, "--methods", f"{SPEC},gae", "--out", str(tmp_path / "g")]) == 0
    maps = np.load(tmp_path / "g" / "gallery_maps.npz")
    assert sorted(maps.files) == sorted([REORDERED, "gae"])
    model = load_checked_model(argparse.Namespace(model=None, weights=setup / "tiny.safetensors", hf=None,
                                                  device="cpu"))
    record = json.loads((tmp_path / "g" / "gallery.json").read_text())["images"][0]
    sample = next(s for s in get_dataset("manifest", setup / "manifest.csv", None).samples
                  if s.name == record["sample"])
    x = load_sample(model, sample).image
    expected = get_method("caap", model, **OPTIONS).attribute(x, torch.tensor([record["target"]]))[0]
    np.testing.assert_allclose(maps[REORDERED][0], expected.numpy(), rtol=1e-5, atol=1e-7)
    capsys.readouterr()
    assert main([*fig, "--methods", "caap:radius=-1", "--out", str(tmp_path / "g2")]) == 2
    err = capsys.readouterr().err
    assert "method spec 'caap:radius=-1': radius must be an int >= 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g2").exists()

    view = ["view", str(setup / "im0.png"), "--weights", str(setup / "tiny.safetensors"), "--no-sweep",
            "--no-attention", "--no-lens", "--classes", "1"]
    assert main([*view, "--methods", "caap:foo=1", "--out", str(tmp_path / "v.html")]) == 2
    assert main([*view, "--methods", "caap:blank=grey", "--out", str(tmp_path / "v.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "has no option 'foo'" in err[0] and "blank must be one of" in err[1], err
    assert not (tmp_path / "v.html").exists()
    assert main([*view, "--methods", f"{SPEC},gae", "--out", str(tmp_path / "v.html")]) == 0
    from analysis.viewer import View

    page = View(model, x, methods=f"{SPEC},gae", classes=1, sweep=False, attention=False, lens=False)
    assert page.methods == [REORDERED, "gae"] and page.doc["methods"] == [REORDERED, "gae"]
    top = page.images[0].classes[0]
    np.testing.assert_allclose(page.images[0].maps[REORDERED][0].numpy(),
                               get_method("caap", model, **OPTIONS).attribute(x, torch.tensor([top]))[0].numpy(),
                               rtol=1e-5, atol=1e-7)

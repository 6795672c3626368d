"""The metric registry and ``caap bench --metrics``: names, the resume key per metric, rank files, tables."""
import json

import pytest

import analysis.evaluate as evaluate_module
import analysis.metrics.suite as suite_module
from analysis.cli import main
from analysis.metrics import PAPER, Metric, get_metric, list_metrics, register
from analysis.metrics import registry as registry_module
from tests.conftest import write_checkpoint, write_manifest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    write_checkpoint(tmp)
    write_manifest(tmp, 3)
    return tmp


def args(setup, out, *extra):
    return ["bench", "--weights", str(setup / "tiny.safetensors"), "--dataset", "manifest", "--root",
            str(setup / "manifest.csv"), "--methods", "grad-cam,rollout", "--n-steps", "4", "--no-progress",
            "--out", str(out), *extra]


def test_registry_names_and_errors():
    assert list_metrics()[:4] == list(PAPER) and "avg-drop" in list_metrics()
    assert get_metric("deletion").lower_is_better == {"deletion"} and get_metric("aupr").needs_mask
    with pytest.raises(ValueError, match="unknown metric.*nope; registered: deletion, insertion"):
        get_metric("nope")
    with pytest.raises(ValueError, match="already registered"):
        register("avg-drop", lambda: None)
    with pytest.raises(ValueError, match="without '.'"):
        register("a.b", lambda: None)


def test_register_one_line_metric_is_scored_by_bench(setup, tmp_path, monkeypatch):
    """A new metric = a factory + one registration; bench writes its rows and table column."""
    def score(ctx, names, maps):
        return [{"map_sum": float(m.sum())} for m in maps]

    monkeypatch.setitem(registry_module._USER, "map-sum", lambda: Metric("map-sum", {"map_sum": "Sum"}, score=score))
    out = tmp_path / "run"
    assert main(args(setup, out, "--metrics", "map-sum")) == 0
    rows = [json.loads(x) for x in (out / "metrics-map-sum.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["metric"] for r in rows} == {"map-sum"} and not (out / "results.jsonl").exists()
    assert "| method | n | Sum |" in (out / "table.md").read_text()


def test_unknown_metric_is_one_line_exit_2(setup, tmp_path, capsys):
    assert main(args(setup, tmp_path / "x", "--metrics", "deletion,nope")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--metrics: unknown metric(s) nope; registered: deletion" in err
    assert "avg-drop" in err and not (tmp_path / "x").exists()


def test_adding_a_metric_computes_only_it_and_resumes(setup, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(args(setup, out)) == 0
    paper_rows, paper_table = (out / "results.jsonl").read_bytes(), (out / "table.md").read_text()
    assert not list(out.glob("metrics-*")) and not (out / "table_metrics.csv").exists()
    calls = []
    real = evaluate_module.score_attributions
    monkeypatch.setattr(evaluate_module, "score_attributions", lambda *a, **k: calls.append(1) or real(*a, **k))
    with_avg = args(setup, out, "--metrics", ",".join(PAPER) + ",avg-drop")
    assert main(with_avg) == 0
    assert calls == [] and (out / "results.jsonl").read_bytes() == paper_rows  # the paper's rows untouched
    rows = [json.loads(x) for x in (out / "metrics-avg-drop.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(0 <= r["avg_drop"] <= 1 and r["inc_conf"] in (0.0, 1.0) for r in rows)
    table = (out / "table.md").read_text()
    assert table.startswith(paper_table) and "| method | n | AvgDrop ↓ | IncConf ↑ |" in table
    assert (out / "table_metrics.csv").read_text().startswith("method,n,avg_drop_mean,avg_drop_se,avg_drop_n")
    run = json.loads((out / "run.json").read_text())
    assert run["metrics"] == list(PAPER) + ["avg-drop"] and "avg-drop" in run["metric_settings"]
    # everything done: neither the paper's metrics nor the suite's run again
    monkeypatch.setattr(suite_module, "score_extras", lambda *a, **k: pytest.fail("recomputed a suite row"))
    before = (out / "metrics-avg-drop.jsonl").read_bytes()
    assert main(with_avg) == 0 and calls == [] and (out / "metrics-avg-drop.jsonl").read_bytes() == before
    # a torn suite line is dropped and only that row recomputed
    monkeypatch.undo()
    lines = before.decode().splitlines()
    (out / "metrics-avg-drop.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    assert main(with_avg) == 0
    again = [json.loads(x) for x in (out / "metrics-avg-drop.jsonl").read_text().splitlines()]
    assert again[:-1] == rows[:-1] and again[-1]["avg_drop"] == pytest.approx(rows[-1]["avg_drop"], abs=1e-6)
    # changed metric settings are refused
    run["metric_settings"]["avg-drop"] = {"map": "other"}
    (out / "run.json").write_text(json.dumps(run))
    capsys.readouterr()
    assert main(with_avg) == 2
    assert "metric 'avg-drop' was scored with other settings" in capsys.readouterr().err


def test_rank_files_merge_like_a_single_process(setup, tmp_path, monkeypatch):
    """Two ranks write metrics-<name>.rank{r}.jsonl; the merged suite table equals a single process's."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    argv = args(setup, single, "--metrics", "avg-drop")
    assert main(argv) == 0
    monkeypatch.setattr("analysis.distributed.broadcast", lambda obj: obj)
    monkeypatch.setattr("analysis.distributed.barrier", lambda: None)
    for rank, extra in ((0, ()), (1, ()), (0, ("--table-only",))):  # rank 0 tabulates once rank 1 is done
        monkeypatch.setattr("analysis.distributed.init", lambda device, r=rank: (r, 2, device))
        assert main(args(setup, multi, "--metrics", "avg-drop", *extra)) == 0
    assert sorted(p.name for p in multi.glob("metrics-*")) == ["metrics-avg-drop.rank0.jsonl",
                                                               "metrics-avg-drop.rank1.jsonl"]
    strip = lambda t: [line for line in t.splitlines()]  # noqa: E731
    assert strip((multi / "table.md").read_text()) == strip((single / "table.md").read_text())


def test_mask_metric_without_masks_is_none_and_footnoted(setup, tmp_path, monkeypatch):
    def score(ctx, names, maps):
        return [{"hit": 1.0} for _ in maps]

    monkeypatch.setitem(registry_module._USER, "needs-mask",
                        lambda: Metric("needs-mask", {"hit": "Hit"}, needs_mask=True, score=score))
    manifest = tmp_path / "nomask.csv"
    manifest.write_text("image,label,kind\n" + "".join(f"{setup}/im{i}.png,{i},single\n" for i in range(2)))
    argv = args(setup, tmp_path / "run", "--metrics", "needs-mask,avg-drop")
    argv[argv.index("--root") + 1] = str(manifest)
    assert main(argv) == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics-needs-mask.jsonl").read_text().splitlines()]
    assert all(r["hit"] is None and "needs-mask skipped" in r["mask_note"] for r in rows)
    table = (tmp_path / "run" / "table.md").read_text()
    assert "needs-mask: need object masks; recorded as None" in table and "| grad-cam | 2 | – |" in table

"""evaluate(): protocol defaults, resumable rows, torn lines, summaries and tables."""
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.data import Sample
from analysis.evaluate import evaluate, format_csv, format_table, read_rows, summarize
from tests.conftest import make_hooked


@pytest.fixture
def samples(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(tmp_path / f"im{i}.png")
        mask = np.zeros((64, 64), "uint8")
        mask[16:48, 16:48] = 255
        Image.fromarray(mask).save(tmp_path / f"m{i}.png")
        out.append(Sample(tmp_path / f"im{i}.png", tmp_path / f"m{i}.png", i, f"im{i}"))
    return out


def centre(x, target):
    m = torch.zeros(1, 4, 4)
    m[0, 1:3, 1:3] = 1
    return m


def test_predicted_class_by_default_and_only_correct_rows(samples, tmp_path):
    model = make_hooked("vit")
    seen = []
    method = lambda x, t: (seen.append(int(t)), centre(x, t))[1]  # noqa: E731
    rows = evaluate(model, {"c": method}, samples, tmp_path / "r.jsonl", n_steps=4, progress=False)
    with torch.no_grad():
        predicted = [int(model(model.transform(Image.open(s.image).convert("RGB"))[None]).argmax()) for s in samples]
    assert seen == predicted == [r["target"] for r in rows]  # the old default explained the label
    assert all(r["protocol"]["only_correct"] is False for r in rows)
    assert "curves" not in rows[0]  # evaluate() keeps curves only when asked
    rows = evaluate(model, {"c": centre}, samples, tmp_path / "o.jsonl", n_steps=4, only_correct=True,
                    target="label", progress=False)
    assert all(r["protocol"]["only_correct"] is True for r in rows)
    assert [bool(r.get("skipped")) for r in rows] == [s.label != p for s, p in zip(samples, predicted)]


def test_resumable_torn_line_and_protocol_mismatch(samples, tmp_path, caplog):
    model = make_hooked("vit")
    calls = {"n": 0}

    def noise(x, target):
        calls["n"] += 1
        return torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(calls["n"]))

    out = tmp_path / "r.jsonl"
    rows = evaluate(model, {"centre": centre}, samples[:2], out, n_steps=4, progress=False, curves=True)
    assert len(rows) == 2 and len(rows[0]["curves"]["insertion"]) == 5
    with open(out, "a") as f:
        f.write('{"sample": "im2", "meth')  # a torn last line
    with caplog.at_level(logging.WARNING):
        rows = evaluate(model, {"centre": centre, "noise": noise}, samples, out, n_steps=4, progress=False)
    assert "torn last line" in caplog.text
    assert len(rows) == 6 and calls["n"] == 3 and len(out.read_text().splitlines()) == 6
    assert all(abs(r["ins_del"] - (r["insertion"] - r["deletion"])) < 1e-9 for r in rows)
    with pytest.raises(ValueError, match="protocol"):
        evaluate(model, {"centre": centre}, samples, out, n_steps=8, progress=False)
    summary = summarize(rows)
    assert summary["centre"]["aupr1"][2] == 3 and summary["centre"]["aupr1"][0] > summary["noise"]["aupr1"][0]
    table = format_table(summary)
    assert table.count("\n") == 3 and "**" in table.splitlines()[2] and "PG ↑" in table
    assert format_csv(summary).splitlines()[0].startswith("method,deletion_mean,deletion_se,deletion_n")


def test_summary_se_and_tables():
    rows = [{"method": "m", "deletion": float(i % 2), "insertion": 0.5, "ins_del": 0.0, "aupr1": None,
             "aupr0": None, "pointing_game": None, "seconds": 1.0} for i in range(128)]
    mean, se, n = summarize(rows)["m"]["deletion"]
    assert (mean, round(se * 100, 2), n) == (0.5, 4.42, 128)  # population SD / sqrt(n), as the paper
    assert summarize(list(reversed(rows)))["m"]["deletion"] == (mean, se, n)  # order-independent sums
    table = format_table(summarize(rows))
    assert "AUPR" not in table and "Del ↓" in table  # no masks: no localization columns
    with pytest.raises(ValueError, match="at least one method"):
        format_table({})


def test_read_rows_refuses_corruption_in_the_middle(tmp_path):
    p = tmp_path / "r.jsonl"
    row = '{"sample": "a", "method": "m"}'
    p.write_text(f'{row}\nnot json\n{row}\n')
    with pytest.raises(ValueError, match="line 2"):
        read_rows(p)
    p.write_text(row)  # no trailing newline: kept, and a newline added for the next append
    assert read_rows(p) == [json.loads(row)] and p.read_text() == row + "\n"
    p.write_text(f'{row}\n{{"a": 1}}\n')  # JSON but not a row (another tool's file)
    with pytest.raises(ValueError, match="line 2 is not a result row"):
        read_rows(p)


def test_maps_of_one_image_scored_together_equal_one_by_one(samples):
    """score_sample's batched path (every method's curves in one stream) keeps each row with its own map."""
    from analysis.data import load_sample
    from analysis.evaluate import Protocol, score_attribution, score_attributions

    model = make_hooked("vit")
    loaded = load_sample(model, samples[0])
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(1, 4, 4, generator=g), torch.rand(1, 64, 64, generator=g), -torch.rand(1, 4, 4, generator=g)]
    protocol = Protocol(n_steps=5)
    together = score_attributions(model, loaded.image, maps, 2, loaded.mask, protocol=protocol, batch_size=4)
    for m, row in zip(maps, together):
        alone = score_attribution(model, loaded.image, m, 2, loaded.mask, protocol=protocol, batch_size=1)
        assert row.keys() == alone.keys()
        for key in ("deletion", "insertion", "aupr1", "aupr0", "pointing_game"):
            assert row[key] == pytest.approx(alone[key], abs=1e-6), key
        assert np.allclose(row["curves"]["deletion"], alone["curves"]["deletion"], atol=1e-6)
    assert together[0]["deletion"] != pytest.approx(together[2]["deletion"], abs=1e-4)
    with pytest.raises(ValueError, match="one map"):
        score_attributions(model, loaded.image, [torch.rand(2, 4, 4)], 2, protocol=protocol)

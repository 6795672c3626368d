"""The viewer (analysis.viewer, ``caap view``): the Python data against the methods themselves, the page in a
real browser (Debian's chromium through selenium), the CLI's one-line errors and a ``caap bench`` folder."""
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.cli import main
from analysis.viewer import View
from analysis.viewer.encode import decode_f32, dequantize_rows, quantize_rows
from caap import get_method
from tests.conftest import make_hooked, make_timm, random_images, write_checkpoint, write_manifest

METHODS = ["caap", "gae", "rollout"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1100"]


@pytest.fixture(scope="module")
def built():
    model = make_hooked("vit")
    x = random_images(model, 2)
    page = View(model, x, methods=METHODS, classes=3, names=["first", "second"],
                sweep_blanks=("white", "black", "noisy"))
    return model, x, page


# ------------------------------------------------------------------ the data, against the methods themselves
def test_maps_and_sweep_equal_the_methods(built):
    model, x, page = built
    d = page.images[0]
    target = torch.tensor(d.classes)
    batch = x[:1].expand(len(d.classes), -1, -1, -1)
    for name in METHODS:
        expected = get_method(name, model).attribute(batch, target=target)
        torch.testing.assert_close(d.maps[name], expected.float(), rtol=0, atol=1e-6)
    sweep = d.sweeps["caap"]
    assert sweep["ends"] == [0, 1, 2] and sweep["blanks"] == ["white", "black", "noisy"]
    assert sweep["default"] == {"end": 2, "blank": "white"}  # ceil(2 * 3 / 3) = 2
    for blank, end in (("black", 0), ("noisy", 1), ("white", 2)):
        expected = get_method("caap", model, layers=(0, end), blank=blank).attribute(batch, target=target)
        got = sweep["maps"][sweep["blanks"].index(blank), sweep["ends"].index(end)]
        torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)
    assert not torch.equal(sweep["maps"][1, 0], sweep["maps"][0, 2])  # the sweep really varies
    assert "caap" not in page.doc["images"][0]["maps"]  # stored once, in the sweep
    stored = decode_f32(page.doc["images"][0]["sweeps"]["caap"]["data"]).reshape(sweep["maps"].shape)
    assert np.array_equal(stored, sweep["maps"].numpy())


def test_top_classes_lens_and_attention(built):
    model, x, page = built
    d = page.images[1]
    with torch.no_grad():
        probs = model(x[1:]).softmax(-1)[0]
        _, cache = model.run_with_cache(x[1:])
    assert d.classes == probs.topk(3).indices.tolist()
    last = model.cfg.n_layers - 1
    # CLS pooling: the lens at the last block's CLS token is the model's own output
    torch.testing.assert_close(d.lens["class_prob"][last, :, 0], probs[d.classes], rtol=1e-5, atol=1e-6)
    assert int(d.lens["top"][last, 0]) == int(probs.argmax())
    # a patch token at block 0, written out: final norm then head
    resid = cache["blocks.0.hook_resid_post"][0, 5]
    manual = model.head(model.ln_final(resid)).softmax(-1)
    assert int(d.lens["top"][0, 5]) == int(manual.argmax())
    torch.testing.assert_close(d.lens["top_prob"][0, 5], manual.max(), rtol=1e-5, atol=1e-6)
    pattern = torch.stack([cache[f"blocks.{b}.attn.hook_pattern"][0] for b in range(model.cfg.n_layers)])
    torch.testing.assert_close(d.attention, pattern, rtol=0, atol=1e-6)
    codes, scale = quantize_rows(pattern)
    back = dequantize_rows(codes, scale)
    assert np.all(np.abs(back - pattern.numpy()) <= scale[..., None] / 510 + 1e-7)


def test_api_errors_are_one_clear_line():
    model = make_hooked("vit")
    x = random_images(model, 1)
    for kwargs, message in ((dict(), "give images (with a model) or results"),
                            (dict(images=x), "images need a model"),
                            (dict(model=model, images=x, classes=0), "classes must be an int >= 1"),
                            (dict(model=model, images=x, methods="caap,nope"), "unknown method(s) 'nope'"),
                            (dict(model=model, images=x, sweep_blanks=("grey",)), "sweep_blanks must be among"),
                            (dict(model=model, images=x, sweep_ends=(3,)), "sweep_ends must be block indices"),
                            (dict(model=make_hooked("clip_headless"), images=x), "needs a classifier head"),
                            (dict(model=make_timm("vit"), images=x), "model must be a vit_lens.HookedViT")):
        with pytest.raises((ValueError, TypeError)) as err:
            View(**{"methods": ["caap"], **kwargs})
        assert message in str(err.value) and "\n" not in str(err.value), (kwargs.keys(), str(err.value))


def test_pil_image_input_uses_the_model_transform():
    model = make_hooked("vit")
    picture = Image.fromarray((np.random.default_rng(3).random((80, 96, 3)) * 255).astype("uint8"))
    page = View(model, picture, methods=["rollout"], classes=2, sweep=False, attention=False, lens=False)
    x = model.transform(picture)[None]
    torch.testing.assert_close(page.images[0].maps["rollout"],
                               get_method("rollout", model).attribute(x.expand(2, -1, -1, -1),
                                                                      target=torch.tensor(page.images[0].classes)))
    assert page.images[0].name == "image 0" and page.images[0].lens is None


def test_page_is_self_contained(built):
    html = built[2].html
    assert html.startswith("<!DOCTYPE html>") and "default-src 'none'" in html
    for needle in ('src="http', "src='http", 'href="http', "@import", "url(", "<link", "fetch(", "XMLHttpRequest"):
        assert needle not in html, needle
    assert html.count("<script") == 2 and "function decodeF32" in html  # readable JS inlined, data as JSON
    assert "<iframe srcdoc=" in built[2]._repr_html_()


# ------------------------------------------------------------------ the page in chromium
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() or not Path(DRIVER).exists():
        pytest.skip(f"no chromium/chromedriver at {CHROMIUM} / {DRIVER} (apt-get install chromium chromium-driver; "
                    f".ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="caap-viewer-chromium-")
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def requests_made(driver) -> list[str]:
    """Every URL the page asked for (CDP Network.requestWillBeSent in the performance log) since the last call."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def open_page(driver, html: str, tmp_path: Path, name="view.html"):
    path = tmp_path / name
    path.write_text(html, encoding="utf-8")
    driver.get_log("performance"), driver.get_log("browser")  # drop earlier pages' entries
    driver.get(path.as_uri())
    driver.execute_script("return 1")
    return path


def hover(driver, method: str, patch: int, grid=(4, 4), click: bool = False):
    from selenium.webdriver import ActionChains

    canvas = driver.find_element("css selector", f'canvas.map[data-method="{method}"]')
    size = canvas.size
    row, col = divmod(patch, grid[1])
    x = (col + 0.5) * size["width"] / grid[1] - size["width"] / 2
    y = (row + 0.5) * size["height"] / grid[0] - size["height"] / 2
    chain = ActionChains(driver).move_to_element_with_offset(canvas, int(x), int(y))
    (chain.click() if click else chain).perform()


def readouts(driver) -> dict[str, tuple[float, int]]:
    out = {}
    for panel in driver.find_elements("css selector", ".panel[data-method]"):
        score = panel.find_element("css selector", ".score").get_attribute("data-score")
        rank = panel.find_element("css selector", ".rank").get_attribute("data-rank")
        out[panel.get_attribute("data-method")] = (float(score), int(rank))
    return out


def expected(grid_map: torch.Tensor, patch: int) -> tuple[float, int]:
    flat = grid_map.flatten().numpy().astype(np.float32)
    return float(flat[patch]), int((flat > flat[patch]).sum()) + 1


def test_page_loads_hover_class_and_layer_switch(browser, built, tmp_path):
    from selenium.webdriver.support.ui import Select

    model, _, page = built
    open_page(browser, page.html, tmp_path)
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []
    panels = browser.find_elements("css selector", ".panel[data-method]")
    assert [p.get_attribute("data-method") for p in panels] == METHODS
    d = page.images[0]
    # hovering a patch of one panel shows every method's score and rank at that patch
    for patch in (0, 6, 15):
        hover(browser, "gae", patch)
        shown = readouts(browser)
        for m in METHODS:
            assert shown[m] == expected(d.maps[m][0], patch), (m, patch)
    # another class: the precomputed maps of that class
    Select(browser.find_element("id", "class-select")).select_by_value("2")
    hover(browser, "caap", 9)
    shown = readouts(browser)
    for m in METHODS:
        assert shown[m] == expected(d.maps[m][2], 9), m
    # CAAP's l_e slider and blank: the sweep's maps
    sweep = d.sweeps["caap"]
    browser.execute_script("const s = document.querySelector('.panel[data-method=caap] input.le');"
                           "s.value = 0; s.dispatchEvent(new Event('input'));")
    Select(browser.find_element("css selector", ".panel[data-method=caap] select.blank")).select_by_value("black")
    hover(browser, "caap", 3)
    want = expected(sweep["maps"][sweep["blanks"].index("black"), 0, 2], 3)
    assert readouts(browser)["caap"] == want and want != expected(d.maps["caap"][2], 3)
    assert browser.find_element("css selector", ".panel[data-method=caap] .le-value").text == "0..0"
    # the second image, and the export of a panel as PNG
    browser.find_element("css selector", "button[data-image='1']").click()
    hover(browser, "rollout", 4)
    assert readouts(browser)["rollout"] == expected(page.images[1].maps["rollout"][0], 4)
    assert browser.execute_script("return window.caapViewer.exportPanel('gae')").startswith("data:image/png;base64,")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_attention_and_lens_views(browser, built, tmp_path):
    model, _, page = built
    open_page(browser, page.html, tmp_path)
    hover(browser, "caap", 5, click=True)  # select patch 5: its attention to every patch, per block and head
    browser.execute_script("return window.caapViewer.attention().then(() => true)")  # wait for the inflate
    cells = browser.find_elements("css selector", "#attention-grid canvas.attn-cell")
    assert len(cells) == model.cfg.n_layers * model.cfg.n_heads
    hover(browser, "caap", 7)
    value = float(browser.find_element("id", "attention-value").get_attribute("data-value"))
    d = page.images[0]
    codes, scale = quantize_rows(d.attention)
    token = model.cfg.n_prefix_tokens
    want = dequantize_rows(codes, scale)[0, 0, token + 5, token + 7]  # block 0, head 0, from patch 5 to patch 7
    assert value == pytest.approx(float(want), rel=1e-6)
    assert abs(value - float(d.attention[0, 0, token + 5, token + 7])) <= float(scale[0, 0, token + 5]) / 510 + 1e-7
    top = browser.find_element("id", "lens-readout").get_attribute("data-top")
    assert int(top) == int(d.lens["top"][-1, token + 7])


def test_inline_jupyter_view_runs_in_its_iframe(browser, built, tmp_path):
    model, _, page = built
    open_page(browser, f"<!DOCTYPE html><html><body>{page._repr_html_()}</body></html>", tmp_path, "host.html")
    browser.switch_to.frame(browser.find_element("tag name", "iframe"))
    try:
        panels = browser.find_elements("css selector", ".panel[data-method]")
        assert [p.get_attribute("data-method") for p in panels] == METHODS
        hover(browser, "rollout", 6)
        assert readouts(browser)["rollout"] == expected(page.images[0].maps["rollout"][0], 6)
    finally:
        browser.switch_to.default_content()
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_no_request_leaves_the_page(browser, built, tmp_path):
    # the check itself sees a request: a page that loads a remote image is caught
    open_page(browser, '<img src="http://127.0.0.1:9/probe.png">', tmp_path, "control.html")
    assert any(u.startswith("http://127.0.0.1:9/") for u in requests_made(browser))
    path = open_page(browser, built[2].html, tmp_path)
    browser.find_element("css selector", "button[data-image='1']").click()
    hover(browser, "gae", 2, click=True)
    browser.execute_script("return window.caapViewer.attention().then(() => true)")
    urls = requests_made(browser)
    assert urls and all(u == path.as_uri() or u.startswith("data:") for u in urls), urls
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0


# ------------------------------------------------------------------ caap bench results and the CLI
@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viewer_bench")
    write_checkpoint(tmp)
    write_manifest(tmp, 3)
    out = tmp / "run"
    assert main(["bench", "--weights", str(tmp / "tiny.safetensors"), "--dataset", "manifest", "--root",
                 str(tmp / "manifest.csv"), "--methods", "grad-cam,rollout", "--n-steps", "4", "--no-progress",
                 "--out", str(out)]) == 0
    return tmp, out


def test_results_page_curves_metrics_and_order(bench_run, browser, tmp_path, capsys):
    from selenium.webdriver.support.ui import Select

    tmp, out = bench_run
    page_path = tmp_path / "results.html"
    assert main(["view", "--results", str(out), "--out", str(page_path)]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    page = View(results=out)
    assert [d.name for d in page.images] == ["im0", "im1", "im2"]
    assert all(d.display is not None and d.display.shape == (64, 64, 3) for d in page.images)
    browser.get_log("browser")
    browser.get(page_path.as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    lines = browser.find_elements("css selector", "svg.curve[data-curve=deletion] polyline")
    assert [p.get_attribute("data-method") for p in lines] == ["grad-cam", "rollout"]
    first = next(r for r in rows if r["sample"] == "im0" and r["method"] == "rollout")
    cell = browser.find_element("css selector", "table.metrics tr[data-method=rollout] td[data-metric=insertion]")
    assert cell.text == f"{100 * first['insertion']:.2f}"
    n_points = len(lines[1].get_attribute("points").split())
    assert n_points == len(first["curves"]["deletion"]) == 5
    # order the images by rollout's Insertion, high first
    Select(browser.find_element("id", "order-method")).select_by_value("rollout")
    Select(browser.find_element("id", "order-metric")).select_by_value("insertion")
    order = [b.get_attribute("data-image") for b in browser.find_elements("css selector", "#image-list button")]
    ins = {r["sample"]: r["insertion"] for r in rows if r["method"] == "rollout"}
    want = sorted(range(3), key=lambda i: -ins[f"im{i}"])
    assert [int(i) for i in order] == want
    # filter: keep images whose rollout Insertion (x 100) is at least the median's
    median = sorted(ins.values())[1] * 100
    browser.execute_script(f"const m = document.getElementById('order-min'); m.value = '{median - 1e-9}';"
                           "m.dispatchEvent(new Event('input'));")
    assert len(browser.find_elements("css selector", "#image-list button")) == 2


@pytest.mark.parametrize("extra, message", [
    (["IMG"], "give the model with --model NAME"),
    ([], "give IMAGE... with a model, or --results DIR"),
    (["IMG", "--weights", "W", "--methods", "caap,nope"], "--methods: unknown method(s) nope"),
    (["IMG", "--weights", "W", "--classes", "0"], "--classes must be an integer >= 1"),
    (["missing.png", "--weights", "W"], "image not found"),
    (["--results", "nowhere"], "--results 'nowhere': no such directory"),
    (["IMG", "--weights", "W", "--sweep-blanks", "grey"], "--sweep-blanks: unknown blank(s) grey"),
])
def test_cli_errors_are_one_line(bench_run, tmp_path, capsys, monkeypatch, extra, message):
    tmp, _ = bench_run
    monkeypatch.chdir(tmp_path)
    subs = {"IMG": str(tmp / "im0.png"), "W": str(tmp / "tiny.safetensors")}
    assert main(["view", *[subs.get(a, a) for a in extra], "--out", str(tmp_path / "v.html")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "v.html").exists()


def test_cli_writes_the_page_and_refuses_a_directory(bench_run, tmp_path, capsys):
    tmp, _ = bench_run
    base = ["view", str(tmp / "im0.png"), "--weights", str(tmp / "tiny.safetensors"), "--methods", "gae,caap",
            "--classes", "2", "--sweep-blanks", "white", "--no-attention"]
    assert main(base + ["--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "v.html")]) == 0
    html = (tmp_path / "v.html").read_text()
    doc = json.loads(html.split('id="viewer-data">', 1)[1].split("</script>", 1)[0].replace("<\\/", "</"))
    assert doc["methods"] == ["gae", "caap"] and len(doc["images"][0]["classes"]) == 2
    assert doc["images"][0]["attention"] is None and doc["images"][0]["sweeps"]["caap"]["blanks"] == ["white"]

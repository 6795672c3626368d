"""Size and first paint of the viewer page (issue 21's budget: <= 5 MB and first paint < 1 s for one image x 6
methods x top-5 classes at 224 px).

    python benchmarks/bench_viewer.py --weights ../shared/eval/models/dinov2_vits14_davis20.safetensors \
        --image ../shared/eval/davis/images/blackswan_00000.jpg --out outputs/view.html [--screenshot PNG]
    python benchmarks/bench_viewer.py --random --out outputs/view.html     # a random ViT-S/14-sized model
    python benchmarks/bench_viewer.py --html outputs/view.html             # measure a page already written

Builds the page (6 methods, top-5 classes, CAAP's full sweep: every block x 5 blanks, attention, logit lens),
reports its size split by part, then opens it in Debian's chromium (headless, fresh profile, no network) a few
times and reports first-contentful-paint and the time the script finished drawing every panel
(``window.caapViewer.renderedAt``), both from the page's performance clock (ms since navigation start).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

METHODS = "caap,gae,grad-cam,rollout,ixg+,t-attr"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def build(args) -> Path:
    import torch

    from analysis.viewer import View

    if args.random:
        import timm

        from vit_lens import HookedViT

        torch.manual_seed(0)
        model = HookedViT.from_timm(timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224,
                                                      num_classes=20).eval())
        images = torch.randn(1, 3, 224, 224)
        names = ["random"]
    else:
        from caap.cli import read_image
        from vit_lens import HookedViT

        model = HookedViT.from_checkpoint(args.weights)
        images, names = [read_image(args.image)], [args.image.name]
    start = time.perf_counter()
    page = View(model, images, methods=METHODS.split(","), classes=5, names=names)
    print(f"built in {time.perf_counter() - start:.1f} s (compute: 6 methods x 5 classes, CAAP sweep "
          f"{model.cfg.n_layers} blocks x 5 blanks)")
    out = page.save(args.out)
    parts = {k: len(json.dumps(v)) for k, v in page.doc["images"][0].items() if k in
             ("src", "maps", "sweeps", "attention", "lens")}
    print("parts (bytes of JSON text): " + ", ".join(f"{k} {v / 1e6:.3f} MB" for k, v in parts.items()))
    return out


def paint_times(path: Path, rounds: int, screenshot: Path | None) -> list[tuple[float, float]]:
    from selenium import webdriver
    from selenium.webdriver import ActionChains
    from selenium.webdriver.chrome.service import Service

    times = []
    for r in range(rounds):
        profile = tempfile.mkdtemp(prefix="bench-viewer-")
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for flag in FLAGS + [f"--user-data-dir={profile}", "--window-size=1500,1400"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                                  options=options)
        try:
            driver.get(path.resolve().as_uri())
            fcp, rendered = driver.execute_script(
                "const p = performance.getEntriesByName('first-contentful-paint')[0];"
                "return [p ? p.startTime : null, window.caapViewer.renderedAt];")
            times.append((fcp, rendered))
            if screenshot is not None and r == rounds - 1:
                canvas = driver.find_element("css selector", "canvas.map[data-method]")
                gw = driver.execute_script("return window.caapViewer.data.model.grid[1]")
                step = canvas.size["width"] / gw
                at = (int(7.5 * step - canvas.size["width"] / 2), int(8.5 * step - canvas.size["height"] / 2))
                ActionChains(driver).move_to_element_with_offset(canvas, *at).click().perform()
                driver.execute_script("return window.caapViewer.attention().then(() => true)")
                driver.save_screenshot(str(screenshot))
                print(f"wrote {screenshot}")
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--image", type=Path)
    parser.add_argument("--random", action="store_true", help="a random-weight ViT-S/14 (224 px, 20 classes)")
    parser.add_argument("--html", type=Path, help="measure this page instead of building one")
    parser.add_argument("--out", type=Path, default=Path("outputs/view.html"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--screenshot", type=Path)
    args = parser.parse_args(argv)
    if args.html is None and not args.random and (args.weights is None or args.image is None):
        parser.error("give --weights and --image, or --random, or --html PAGE")
    path = args.html or build(args)
    size = path.stat().st_size
    print(f"{path}: {size / 1e6:.2f} MB (budget 5 MB)")
    times = paint_times(path, args.rounds, args.screenshot)
    fcp = [t[0] for t in times if t[0] is not None]
    drawn = [t[1] for t in times]
    rounds = ", ".join(f"{t:.0f}" for t in fcp)
    print(f"first contentful paint: median {statistics.median(fcp):.0f} ms (rounds {rounds});"
          f" every panel drawn: median {statistics.median(drawn):.0f} ms (budget 1000 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

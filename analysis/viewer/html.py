"""One self-contained HTML page: ``viewer.css`` and the ``viewer*.js`` parts (beside this file) inlined, the data
as one JSON block, images as data URIs. A Content-Security-Policy forbids every request (``default-src 'none'``; only
inline code and ``data:``/``blob:`` images), so the page works offline and nothing leaves it."""
from __future__ import annotations

import html as html_lib
import json
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ("viewer.js", "viewer_attention.js", "viewer_results.js", "viewer_layout.js")  # one scope, this order
CSP = ("default-src 'none'; img-src data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")


def asset(name: str) -> str:
    """The text of ``viewer.css`` or one of :data:`SCRIPTS`."""
    return (HERE / name).read_text(encoding="utf-8")


def script() -> str:
    """The page's code: :data:`SCRIPTS` as the body of one strict-mode function (a shared private scope)."""
    return "(function () {\n\"use strict\";\n" + "\n".join(asset(name) for name in SCRIPTS) + "})();"


def script_json(doc: dict) -> str:
    """``doc`` as JSON safe inside ``<script>``: no NaN (refused), and ``</`` / ``<!--`` cannot end the block."""
    text = json.dumps(doc, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def render(doc: dict) -> str:
    """The page for ``doc`` (the structure :class:`analysis.viewer.View` builds)."""
    title = html_lib.escape(doc.get("title") or "caap viewer")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{title}</title>\n<style>\n{asset('viewer.css')}\n</style>\n</head>\n<body>\n"
        "<div id=\"app\">loading…</div>\n"
        f"<script type=\"application/json\" id=\"viewer-data\">{script_json(doc)}</script>\n"
        f"<script>\n{script()}\n</script>\n</body>\n</html>\n"
    )


def iframe(page: str, height: int = 900) -> str:
    """``page`` inside an ``<iframe srcdoc>`` (Jupyter: its scripts run and its styles stay inside)."""
    return (f"<iframe srcdoc=\"{html_lib.escape(page, quote=True)}\" style=\"width:100%;height:{int(height)}px;"
            f"border:1px solid #ddd\" sandbox=\"allow-scripts allow-downloads\"></iframe>")

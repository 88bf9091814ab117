"""`dvc plots show` renders every declared plot offline, checked in a real browser (headless Chromium).

The page is the one DVC wrote, unmodified: its template (.dvc/plots.html, scripts/plots_page.py)
carries vega, vega-lite and vega-embed inline, so nothing is fetched. Chromium runs with the
network blocked (every host resolves to nothing, every request goes to a dead proxy). A separate
harness page written beside it loads the page in a 1400 x 900 frame (--allow-file-access-from-files
lets the harness read the frame's DOM), waits for rendering and reports, per vega plot, how many
canvas pixels differ from the background, per image whether it decoded and how wide it is shown,
and every resource the page requested; Chromium prints the harness's final DOM (--dump-dom) and
its console on stderr (--enable-logging), where the page's uncaught errors appear.

Skips, with the reason, when Chromium is not installed (Debian: apt-get install chromium
chromium-driver; .ci/run does).
"""

import html as html_lib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, dvc

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
browser = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                             "(Debian: apt-get install chromium chromium-driver); cannot check that plots render")

EVALUATE_PLOTS = {"plots/evaluate/val_mse_hist.json", "plots/evaluate/val_l0_hist.json",
                  "plots/evaluate/test_confusion.csv", "plots/evaluate/evaluation.png"}
FRAME_WIDTH = 1400  # px: the window the reader used
MAX_FIGURE_WIDTH = 1200  # px: every matplotlib figure the pipeline writes fits this
NO_NETWORK = ["--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]
# console lines that mean the page broke (vega's "spec uses Vega-Lite v5" notes are harmless)
CONSOLE_ERROR = re.compile(r"CONSOLE.*(Uncaught|Error|net::ERR_)")

HARNESS = """<!DOCTYPE html>
<html><body style="margin:0">
<iframe id="page" src="%(page)s" style="width:%(width)dpx;height:900px;border:0"></iframe>
<script>
(function () {
  var VEGA_IDS = %(ids)s;
  function ink(c) {  // pixels that differ from the top-left (background) pixel
    if (!c.width || !c.height) return 0;
    var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, n = 0;
    for (var i = 4; i < d.length; i += 4)
      if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2] || d[i + 3] !== d[3]) n++;
    return n;
  }
  function report(last) {
    var frame = document.getElementById('page'), doc = frame.contentDocument;
    var vega = VEGA_IDS.map(function (id) {
      var div = doc.getElementById(id), c = div && div.querySelector('canvas'), svg = div && div.querySelector('svg');
      return {id: id, ink: c ? ink(c) : 0, svg_marks: svg ? svg.querySelectorAll('path,rect,text').length : 0};
    });
    var images = Array.prototype.map.call(doc.images, function (im) {
      return {src: im.getAttribute('src'), complete: im.complete, width: im.naturalWidth,
              shown: im.getBoundingClientRect().right};
    });
    var done = vega.every(function (v) { return v.ink > 0 || v.svg_marks > 0; }) &&
               images.every(function (im) { return im.complete; });
    if (!done && !last) return false;
    var requests = frame.contentWindow.performance.getEntriesByType('resource').map(function (e) { return e.name; });
    var pre = document.createElement('pre');
    pre.id = 'render-check';
    pre.textContent = JSON.stringify({vega: vega, images: images, requests: requests, finished: done,
                                      viewport: doc.documentElement.clientWidth});
    document.body.appendChild(pre);
    return true;
  }
  window.addEventListener('load', function () {
    var tries = 0, timer = setInterval(function () { if (report(++tries >= 100)) clearInterval(timer); }, 100);
  });
})();
</script>
</body></html>
"""


def render_check(page: Path) -> tuple[dict, list[str]]:
    """Load `page` (untouched) in headless Chromium without network; the harness's report and
    the page's console errors."""
    vega_ids = re.findall(r"vegaEmbed\('#([^']+)'", page.read_text())
    harness = page.with_name("render-check-harness.html")
    harness.write_text(HARNESS % {"page": page.name, "width": FRAME_WIDTH, "ids": json.dumps(vega_ids)})
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--allow-file-access-from-files", *NO_NETWORK, "--enable-logging=stderr", "--v=0",
                           f"--window-size={FRAME_WIDTH + 50},1000", "--virtual-time-budget=30000",
                           "--dump-dom", harness.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="render-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"Chromium printed no render report (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    errors = [line for line in proc.stderr.splitlines() if CONSOLE_ERROR.search(line)]
    return json.loads(html_lib.unescape(found.group(1))), errors


def test_plots_template_is_current():
    """.dvc/plots.html is what scripts/plots_page.py builds from vendor/vega, and those files are
    the npm builds vendor/vega/README.md names (sha256)."""
    import hashlib

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "plots_page.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    readme = (ROOT / "vendor" / "vega" / "README.md").read_text()
    listed = re.findall(r"\| (\S+\.min\.js) \| \S+ \| ([0-9a-f]{64}) \|", readme)
    assert len(listed) == 3, readme
    for name, sha in listed:
        assert hashlib.sha256((ROOT / "vendor" / "vega" / name).read_bytes()).hexdigest() == sha, name
    template = (ROOT / ".dvc" / "plots.html").read_text()
    assert "{scripts}" not in template and "{plot_divs}" in template and "cdn." not in template.split("<script>")[0]
    # the versions inlined are the ones DVC's renderer asks the CDN for
    from dvc_render.vega import VegaRenderer

    cdn = re.findall(r"npm/([a-z-]+)@([0-9.]+)", VegaRenderer.SCRIPTS)
    assert sorted(f"{n}-{v}.min.js" for n, v in cdn) == sorted(n for n, _ in listed)


@browser
def test_every_declared_plot_is_drawn_offline(pipeline_run, tmp_path):
    declared = json.loads(dvc(pipeline_run, "plots", "show", "--json").stdout)
    assert not declared.get("errors"), declared["errors"]
    kinds = {plot_id: {r["type"] for r in renderers} for plot_id, renderers in declared["data"].items()}
    assert EVALUATE_PLOTS <= set(kinds), sorted(kinds)
    for plot_id, renderers in declared["data"].items():
        for r in renderers:
            if r["type"] == "vega":
                assert r["content"]["data"]["values"], f"{plot_id}: no data points"
    n_vega = sum(r["type"] == "vega" for rs in declared["data"].values() for r in rs)
    n_images = sum(r["type"] == "image" for rs in declared["data"].values() for r in rs)

    out = tmp_path / "html"
    dvc(pipeline_run, "plots", "show", "--out", str(out))
    page = out / "index.html"
    assert "cdn.jsdelivr.net" not in page.read_text().split("<body>")[0], "the page still loads scripts from a CDN"
    report, console_errors = render_check(page)

    assert report["finished"], report
    assert console_errors == [], console_errors
    assert [r for r in report["requests"] if not r.startswith("file:")] == [], "the page asked the network"
    assert len(report["vega"]) == n_vega
    for plot in report["vega"]:
        assert plot["ink"] > 0 or plot["svg_marks"] > 0, f"vega plot {plot['id']} drew nothing"
    assert len(report["images"]) == n_images
    for image in report["images"]:
        assert image["complete"] and image["width"] > 0, f"image {image['src']} did not load"
        assert image["width"] <= MAX_FIGURE_WIDTH, f"{image['src']} is {image['width']} px wide"
        assert image["shown"] <= report["viewport"], f"{image['src']} runs off the page"


@browser
def test_default_cdn_page_fails_offline(pipeline_run, tmp_path):
    """The check can fail: DVC's own template (CDN scripts) draws no vega plot without network."""
    from dvc_render.html import PAGE_HTML

    template = tmp_path / "cdn.html"
    template.write_text(PAGE_HTML)
    out = tmp_path / "html"
    dvc(pipeline_run, "plots", "show", "--html-template", str(template), "--out", str(out))
    report, console_errors = render_check(out / "index.html")
    assert not report["finished"]
    assert all(plot["ink"] == 0 and plot["svg_marks"] == 0 for plot in report["vega"])
    assert any("vegaEmbed is not defined" in line for line in console_errors), console_errors

"""`dvc plots show` renders every declared plot, checked in a real browser (headless Chromium).

The page DVC writes loads vega, vega-lite and vega-embed from a CDN. Machines here reach package
registries only, so the test loads the very same versions from the npm registry instead (`npm
pack`, cached under pytest's cache folder; the CDN URL serves each package's build/NAME.min.js)
by swapping those three script URLs; nothing else in the page changes. A small script appended
to the page waits for rendering and reports, per vega plot, how many canvas pixels differ from
the background, and per image whether it decoded; Chromium prints the final DOM (--dump-dom)
and the test reads that report.

Skips, with the reason, when Chromium is not installed (Debian: apt-get install chromium
chromium-driver) or when npm cannot fetch the vega libraries.
"""

import html as html_lib
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import dvc

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                "(Debian: apt-get install chromium chromium-driver); cannot check that plots render")

CDN_SCRIPT = re.compile(r'<script src="(https://cdn\.jsdelivr\.net/npm/([a-z-]+)@([0-9.]+))"></script>')
EVALUATE_PLOTS = {"plots/evaluate/val_mse_hist.json", "plots/evaluate/val_l0_hist.json",
                  "plots/evaluate/test_confusion.csv", "plots/evaluate/evaluation.png"}

# Appended to the page: poll until every vega plot has drawn something and every image has
# loaded (or 10 s of virtual time pass), then write the findings into <pre id="render-check">.
CHECK_JS = """
<script>
(function () {
  var VEGA_IDS = %s, errors = [];
  var origError = console.error;
  console.error = function () { errors.push(Array.prototype.join.call(arguments, ' ')); origError.apply(console, arguments); };
  window.addEventListener('error', function (e) { errors.push(String(e.message)); });
  window.addEventListener('unhandledrejection', function (e) { errors.push(String(e.reason)); });  // a failed vegaEmbed rejects
  function ink(c) {  // pixels that differ from the top-left (background) pixel
    if (!c.width || !c.height) return 0;
    var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, n = 0;
    for (var i = 4; i < d.length; i += 4)
      if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2] || d[i + 3] !== d[3]) n++;
    return n;
  }
  function report(last) {
    var vega = VEGA_IDS.map(function (id) {
      var div = document.getElementById(id), c = div && div.querySelector('canvas'), svg = div && div.querySelector('svg');
      return {id: id, ink: c ? ink(c) : 0, svg_marks: svg ? svg.querySelectorAll('path,rect,text').length : 0};
    });
    var images = Array.prototype.map.call(document.images, function (im) {
      return {src: im.getAttribute('src'), complete: im.complete, width: im.naturalWidth};
    });
    var done = vega.every(function (v) { return v.ink > 0 || v.svg_marks > 0; }) &&
               images.every(function (im) { return im.complete; });
    if (!done && !last) return false;
    var pre = document.createElement('pre');
    pre.id = 'render-check';
    pre.textContent = JSON.stringify({vega: vega, images: images, errors: errors, finished: done});
    document.body.appendChild(pre);
    return true;
  }
  window.addEventListener('load', function () {
    var tries = 0, timer = setInterval(function () { if (report(++tries >= 100)) clearInterval(timer); }, 100);
  });
})();
</script>
"""


def local_vega(name: str, version: str, cache: Path) -> Path | None:
    """build/NAME.min.js (the file the CDN URL serves) of NAME@VERSION from npm, cached."""
    js = cache / f"{name}-{version}" / "package" / "build" / f"{name}.min.js"
    if js.exists():
        return js
    if shutil.which("npm") is None:
        return None
    proc = subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", str(cache)],
                          capture_output=True, text=True, timeout=180)
    tgz = cache / f"{name}-{version}.tgz"
    if proc.returncode != 0 or not tgz.exists():
        return None
    with tarfile.open(tgz) as tar:
        tar.extractall(cache / f"{name}-{version}", filter="data")
    return js if js.exists() else None


def render_check(page: Path, cache: Path) -> dict:
    """Load `page` in headless Chromium and return the appended script's report."""
    html = page.read_text()
    vega_ids = re.findall(r"vegaEmbed\('#([^']+)'", html)
    for url, name, version in CDN_SCRIPT.findall(html):
        js = local_vega(name, version, cache)
        if js is None:
            pytest.skip(f"`npm pack {name}@{version}` failed (npm missing or registry unreachable): no local copy of {url}")
        html = html.replace(url, js.resolve().as_uri())
    checked = page.with_name("checked.html")
    checked.write_text(html.replace("</body>", CHECK_JS % json.dumps(vega_ids) + "</body>"))
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--virtual-time-budget=30000", "--dump-dom", checked.resolve().as_uri()],
                          capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="render-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"Chromium printed no render report (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(html_lib.unescape(found.group(1)))


def test_every_declared_plot_is_drawn(pipeline_run, tmp_path, request):
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
    cache = Path(request.config.cache.mkdir("vega-js"))
    report = render_check(out / "index.html", cache)

    assert report["finished"], report
    assert report["errors"] == [], report["errors"]
    assert len(report["vega"]) == n_vega
    for plot in report["vega"]:
        assert plot["ink"] > 0 or plot["svg_marks"] > 0, f"vega plot {plot['id']} drew nothing"
    assert len(report["images"]) == n_images
    for image in report["images"]:
        assert image["complete"] and image["width"] > 0, f"image {image['src']} did not load"

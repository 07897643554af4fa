"""A real browser for the plots pages: Debian's Chromium, headless, with the network blocked.

The page under test is copied with a probe script added at its end. Once the page has had
time to render, the probe reports what a user would see: for each Vega plot the page embeds,
how many data marks it drew (lines, points, matrix cells, bars), how many numbers it wrote
as marks (the confusion matrix's counts), what its axes say, every text it shows and its x
axis' tick labels; and for each image whether it loaded. Chromium prints the resulting DOM,
the test reads the report from it.
"""

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# CI sets it, so that a missing browser fails there instead of skipping the check.
REQUIRE_BROWSER = "REQUIRE_BROWSER"

PROBE = """
<script>
window.addEventListener("load", () => setTimeout(() => {
  const plots = PLOT_IDS.map((id) => {
    const div = document.getElementById(id);
    // Vega-Embed draws SVG: data marks are items of groups with the role "mark" (axes,
    // legends and titles have other roles).
    const marks = div ? div.querySelectorAll("svg g.role-mark > path").length : 0;
    const texts = div ? div.querySelectorAll("svg g.role-mark > text").length : 0;
    // Vega labels each axis for screen readers: "Y-axis titled 'actual digit' for ...".
    const axes = div
      ? [...div.querySelectorAll("svg g.role-axis")].map((g) => g.getAttribute("aria-label"))
      : [];
    // Every word the plot shows (titles, tick labels, legends, facet headers), and the tick
    // labels of its x axes.
    const words = div ? [...div.querySelectorAll("svg text")].map((t) => t.textContent) : [];
    const xticks = div
      ? [...div.querySelectorAll("svg g.role-axis")]
          .filter((g) => (g.getAttribute("aria-label") || "").startsWith("X-axis"))
          .flatMap((g) => [...g.querySelectorAll("g.role-axis-label text")])
          .map((t) => t.textContent)
      : [];
    return { id, marks, texts, axes, words, xticks };
  });
  const images = [...document.querySelectorAll("img")].map((img) => ({
    src: img.getAttribute("src"),
    loaded: img.complete && img.naturalWidth > 0,
  }));
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({ plots, images });
  document.body.appendChild(probe);
}, 3000));
</script>
"""


def find_browser() -> str:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    message = "no Chromium here (Debian: apt-get install chromium)"
    if os.environ.get(REQUIRE_BROWSER):
        pytest.fail(message)
    pytest.skip(message)


def render(page: Path) -> dict:
    """Open `page` offline; return {"plots": [{id, marks, texts, axes, words, xticks}],
    "images": [{src, loaded}]}."""
    browser = find_browser()
    text = page.read_text(encoding="utf-8")
    # The Vega plots, as DVC's page embeds them: vegaEmbed('#<id>', spec).
    plot_ids = re.findall(r"vegaEmbed\('#([^']+)'", text)
    probed = page.with_name(f"probed_{page.name}")
    probe = PROBE.replace("PLOT_IDS", json.dumps(plot_ids))
    probed.write_text(text + probe, encoding="utf-8")
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: every host is unknown
            "--virtual-time-budget=30000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    probed.unlink()
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found, f"the page did not finish loading:\n{result.stderr[-2000:]}"
    return json.loads(html.unescape(found[1]))

"""DVC's plots, offline: the page template that makes `dvc plots show` and `dvc plots diff`
work with no network, and PNGs of DVC's plot specs (for the report).

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN: with no network, every Vega
plot stays an empty box. This template (set as `plots.html_template` in .dvc/config) carries
the three libraries inline instead, from vl-convert-python's bundle. To move to newer versions:
pin a newer vl-convert-python, then run

    mnist-cnn offline-plots

and commit the template it rewrites.
"""

from importlib import metadata
from pathlib import Path

import vl_convert

from mnist_cnn.errors import PipelineError
from mnist_cnn.files import write_text

TEMPLATE = Path(".dvc/offline_plots.html")
# DVC's plot specs declare the Vega-Lite v5 schema; newest v5 that vl-convert ships.
VEGA_LITE_VERSION = "5.21"
# DVC fills these in; the page must hold {plot_divs} once, the bundle none of them.
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {versions}, inlined by `mnist-cnn offline-plots`
         so that the page needs no network. No placeholder for DVC's own script tags: they
         load these from a CDN. -->
    <script>
(() => {
BUNDLE
})();
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def versions() -> str:
    return (
        f"Vega {vl_convert.get_vega_version()}, Vega-Lite {VEGA_LITE_VERSION},"
        f" Vega-Embed {vl_convert.get_vega_embed_version()}"
        f" (vl-convert-python {metadata.version('vl-convert-python')})"
    )


def page(bundle: str, versions: str) -> str:
    """DVC's page layout with the libraries in a script of its own.

    The bundle runs inside a function, so its top-level names cannot clash with the `var spec`
    of DVC's plot scripts; it sets window.vegaEmbed, which they call.
    """
    found = [placeholder for placeholder in PLACEHOLDERS if placeholder in bundle]
    if found or "</script" in bundle.lower():
        problem = ", ".join(found) or "</script"
        raise PipelineError(f"the Vega bundle contains {problem}: it cannot be inlined as is")
    return PAGE.replace("{versions}", versions).replace("BUNDLE", bundle)


def vega_png(spec: dict) -> bytes:
    """A Vega-Lite plot spec (as `dvc plots diff --json` gives it) drawn as a PNG."""
    return vl_convert.vegalite_to_png(spec, vl_version=VEGA_LITE_VERSION)


def write_template(output: Path) -> None:
    if output == TEMPLATE and not TEMPLATE.parent.is_dir():  # would make a .dvc/ of its own
        raise PipelineError(
            f"{TEMPLATE.parent}/: not found: run this in the project's root, or give -o FILE"
        )
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE_VERSION)
    write_text(output, page(bundle, versions()))
    print(f"{output}: {versions()}, {output.stat().st_size:,} bytes")

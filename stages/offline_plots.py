"""Write the page template that makes `dvc plots show` and `dvc plots diff` work offline.

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN: with no network, every Vega
plot stays an empty box. This template (set as `plots.html_template` in .dvc/config) carries
the three libraries inline instead, from vl-convert-python's bundle. To move to newer versions:
pin a newer vl-convert-python, then run

    python -m stages.offline_plots

and commit the template it rewrites.
"""

import argparse
import sys
from importlib import metadata
from pathlib import Path

import vl_convert

from stages.errors import PipelineError, run_stage
from stages.files import write_text

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
    <!-- {versions}, inlined by `python -m stages.offline_plots`
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


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stages.offline_plots", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-o", "--output", type=Path, default=TEMPLATE)
    output = parser.parse_args().output
    if output == TEMPLATE and not TEMPLATE.parent.is_dir():  # would make a .dvc/ of its own
        raise PipelineError(
            f"{TEMPLATE.parent}/: not found: run this in the project's root, or give -o FILE"
        )
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE_VERSION)
    write_text(output, page(bundle, versions()))
    print(f"{output}: {versions()}, {output.stat().st_size:,} bytes")


if __name__ == "__main__":
    sys.exit(run_stage(main))

"""A Markdown report of what a change did against a base revision, for a pull request.

    mnist-cnn report --base main -o report.md

compares the workspace (in CI: the pull request's head, with its committed results) with
`--base`: the params that changed (`dvc params diff`), the test metrics with their deltas
(`dvc metrics diff`), and the plots as PNG files in a folder beside the report
(`report_files/` for `report.md`): the loss and accuracy curves of both revisions, both
confusion matrices, drawn offline from DVC's own plot specs (`dvc plots diff --json`) with
vl-convert, and both revisions' misclassified digits. Needs no terminal and no network.
"""

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from mnist_cnn.errors import PipelineError
from mnist_cnn.files import scratch_directory_beside, write_bytes, write_text
from mnist_cnn.params import read_paths
from mnist_cnn.tools import run_tool
from mnist_cnn.vega import vega_png

# The evaluate stage's images worth a reviewer's look (the others repeat the Vega plots or do
# not change): file stem -> heading.
REPORTED_IMAGES = {"misclassified": "Misclassified test digits"}
# (key in metrics/evaluate.json, name in the report, shown as a percentage)
HEADLINE_METRICS = [
    ("accuracy", "test accuracy", True),
    ("loss", "test loss", False),
]


def dvc_json(*arguments: str) -> dict:
    output = run_tool([sys.executable, "-m", "dvc", *arguments, "--json"], f"dvc {arguments[0]}")
    return json.loads(output or "{}")


def git(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *arguments], capture_output=True, text=True)


def resolve_base(base: str, metrics_path: str) -> str:
    """The base's commit id; it must exist and hold committed metrics."""
    if git("rev-parse", "--is-inside-work-tree").returncode != 0:
        raise PipelineError("not in a git repository: the report compares git revisions")
    found = git("rev-parse", "--verify", "--quiet", f"{base}^{{commit}}")
    if found.returncode != 0:
        raise PipelineError(f"--base {base}: unknown revision")
    commit = found.stdout.strip()
    if git("cat-file", "-e", f"{commit}:{metrics_path}").returncode != 0:
        raise PipelineError(
            f"--base {base}: has no {metrics_path} (run the pipeline and commit its results there)"
        )
    return commit


def value(number: float | None, percent: bool) -> str:
    if number is None:
        return "–"
    return f"{number * 100:.2f} %" if percent else f"{number:.4f}"


def delta(number: float | None, percent: bool) -> str:
    if number is None:
        return "–"
    return f"{number * 100:+.2f} pt" if percent else f"{number:+.4f}"


def as_yaml(setting: object) -> str:
    """A param's value as params.yaml spells it: null, true, [32, 64], adam."""
    return setting if isinstance(setting, str) else json.dumps(setting)


def table_cell(text: str) -> str:
    """`text` shown as typed in a Markdown table cell: a `|` would end the cell, and HTML
    would be rendered (or, on GitHub, dropped)."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def code_span(text: str) -> str:
    """`text` as inline code, whatever it holds (a branch may be named `` a`<b>` ``): fenced by
    more backticks than any run inside it, so that none ends it early; HTML in code is shown,
    not rendered."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return f"{fence}{padded}{fence}"


def params_section(diff: dict) -> list[str]:
    changed = {key: change for file in diff.values() for key, change in file.items()}
    if not changed:
        return ["No params changed."]
    rows = ["| param | base | this change |", "|---|---|---|"]
    for key, change in sorted(changed.items()):
        old, new = (table_cell(as_yaml(change.get(side))) for side in ("old", "new"))
        rows.append(f"| `{key}` | {old} | {new} |")
    return rows


def stale_stages() -> list[str]:
    """The stages whose params, code or data changed since the workspace's results were made
    (`dvc status`): their metrics are not what the params beside them give. Outputs or data
    merely absent (a CI checkout that pulled nothing) do not count."""
    stale = {
        name.rpartition(":")[2]
        for name, changes in dvc_json("status").items()
        for change in changes
        if isinstance(change, dict)  # "always changed" and the like are strings
        and any(state != "deleted" for state in change.get("changed deps", {}).values())
    }
    return sorted(stale)


def output_file(output: Path) -> Path:
    if output.is_dir() or output.name in ("", ".", ".."):
        raise PipelineError(f"-o {output}: is a folder; expected a file name such as report.md")
    return output


def metrics_section(diff: dict, metrics_path: str) -> list[str]:
    """The headline metrics with their deltas (per digit: the plot)."""
    metrics = diff.get(metrics_path, {})
    rows = ["| metric | base | this change | change |", "|---|---|---|---|"]
    for key, name, percent in HEADLINE_METRICS:
        entry = metrics.get(key, {})
        old, new = entry.get("old"), entry.get("new")
        change = new - old if old is not None and new is not None else None
        rows.append(
            f"| {name} | {value(old, percent)} | {value(new, percent)} | {delta(change, percent)} |"
        )
    return rows


def render_plots(plots: dict, folder: Path, base: str) -> tuple[list, dict]:
    """Draw what `dvc plots diff --json` gives into `folder`.

    Returns the Vega plots as (title, PNG name), in DVC's order, and the image plots shown in
    the report as {name: {"base": file name, "change": file name}}.
    """
    curves, images = [], {}
    for plot_id, views in plots.items():
        stem = Path(plot_id).stem
        for view in views:
            if view["type"] == "vega":
                spec = view["content"]
                title = spec.get("title", stem)
                title = title.get("text", stem) if isinstance(title, dict) else title
                png = vega_png(spec)
                write_bytes(folder / f"{stem}.png", png)
                curves.append((title, f"{stem}.png"))
            elif view["type"] == "image" and stem in REPORTED_IMAGES:
                side = "base" if view["revisions"] == [base] else "change"
                name = f"{stem}_{side}{Path(view['url']).suffix}"
                shutil.copyfile(view["url"], folder / name)
                images.setdefault(stem, {})[side] = name
    return curves, images


def markdown(
    base: str,
    base_commit: str,
    params: list[str],
    metrics: list[str],
    plots: tuple[list, dict],
    folder: str,
) -> str:
    curves, images = plots
    lines = [
        f"# What this change did, against {code_span(base)} ({base_commit[:8]})",
        "",
        "## Params",
        "",
        *params,
        "",
        "## Test metrics",
        "",
        *metrics,
        "",
        "## Plots",
        "",
        "Curves: one line style and point shape per revision (`workspace` is this change);"
        " the confusion matrices side by side.",
        "",
    ]
    for title, name in curves:
        lines += [f"### {title}", "", f"![{title}]({folder}/{name})", ""]
    for stem, sides in images.items():
        cells = [
            f"![{stem}, {side}]({folder}/{sides[side]})" if side in sides else "–"
            for side in ("base", "change")
        ]
        lines += [f"### {REPORTED_IMAGES[stem]}", ""]
        base_cell = code_span(base).replace("|", "\\|")  # a | would end the cell, even in code
        lines += [f"| base: {base_cell} | this change |", "|---|---|", f"| {' | '.join(cells)} |"]
        lines += [""]
    return "\n".join(lines)


def write_report(base: str, output: Path) -> None:
    output = output_file(output)
    files_dir = output.with_name(f"{output.stem}_files")

    paths = read_paths()
    commit = resolve_base(base, str(paths.evaluate_metrics))
    if not Path(".dvc").is_dir():
        raise PipelineError("no .dvc/ here: run the report in the project's root")
    params = params_section(dvc_json("params", "diff", base))
    if stale := stale_stages():
        warning = (
            f"the workspace's results are not up to date ({', '.join(stale)} changed since "
            "they ran): run dvc repro first, or these metrics are not the params' beside them"
        )
        print(f"warning: {warning}", file=sys.stderr)
        params = [f"> **Warning:** {warning}.", "", *params]
    metrics_diff = dvc_json("metrics", "diff", base, "--all")
    metrics = metrics_section(metrics_diff, str(paths.evaluate_metrics))

    # Everything is made in a scratch folder; only a complete report is moved into place.
    with scratch_directory_beside(output) as scratch:
        pages = scratch / "dvc_plots"
        plots = dvc_json("plots", "diff", base, "-o", str(pages)).get("data", {})
        images = scratch / "images"
        images.mkdir()
        rendered = render_plots(plots, images, base)
        text = markdown(base, commit, params, metrics, rendered, files_dir.name)
        count = len(list(images.iterdir()))
        shutil.rmtree(files_dir, ignore_errors=True)
        images.rename(files_dir)
    write_text(output, text + "\n")
    print(f"{output}: {count} pictures in {files_dir}/")


"""The pull-request report's refusals, through the command line: one line, exit 1, and no
report or image folder left behind (a complete report is checked end to end, in
test_pipeline.py); and the offline plots template, which the command that writes it would
write the same."""

import html
import subprocess

import markdown_it
import pytest

from mnist_cnn.report import markdown as markdown_report
from tests.helpers import (
    PROJECT_ROOT,
    copy_project,
    error_line,
    params_with,
    run_command,
    write_params,
)

pytestmark = pytest.mark.cli


def report(folder, *arguments: str) -> subprocess.CompletedProcess:
    return run_command(("report", "-o", "report.md", *arguments), folder)


def git(folder, *arguments: str) -> None:
    subprocess.run(["git", *arguments], cwd=folder, check=True, capture_output=True)


@pytest.fixture
def project(tmp_path):
    """A git repository with params.yaml committed, and no results."""
    write_params(tmp_path, {})
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "params")
    return tmp_path


def refused(result: subprocess.CompletedProcess, folder) -> str:
    assert not (folder / "report.md").exists() and not (folder / "report_files").exists()
    return error_line(result)


def test_outside_a_git_repository(tmp_path):
    write_params(tmp_path, {})
    assert refused(report(tmp_path, "--base", "main"), tmp_path) == (
        "error: not in a git repository: the report compares git revisions"
    )


def test_unknown_base_revision(project):
    assert refused(report(project, "--base", "no-such-branch"), project) == (
        "error: --base no-such-branch: unknown revision"
    )


def test_base_without_metrics(project):
    metrics = params_with({})["paths"]["evaluate_metrics"]
    assert refused(report(project, "--base", "HEAD"), project) == (
        f"error: --base HEAD: has no {metrics} (run the pipeline and commit its results there)"
    )


def test_committed_plots_template_is_what_the_command_writes(tmp_path):
    """`python -m stages.offline_plots`, the README's command, with the pinned
    vl-convert-python: the same bytes as the committed template, which DVC's config names."""
    copy_project(tmp_path)
    (tmp_path / ".dvc/offline_plots.html").unlink()
    result = run_command(("offline-plots",), tmp_path)
    assert result.returncode == 0, result.stderr
    committed = PROJECT_ROOT / ".dvc/offline_plots.html"
    assert (tmp_path / ".dvc/offline_plots.html").read_bytes() == committed.read_bytes()
    assert "html_template = offline_plots.html" in (PROJECT_ROOT / ".dvc/config").read_text()
    assert committed.stat().st_size < 2_000_000


@pytest.mark.parametrize("output", [".", "existing"])
def test_output_that_is_a_folder(project, output):
    (project / "existing").mkdir()
    result = run_command(("report", "--base", "HEAD", "-o", output), project)
    assert error_line(result) == (
        f"error: -o {output}: is a folder; expected a file name such as report.md"
    )
    listed = sorted(path.name for path in project.iterdir())
    assert listed == [".git", "dvc.yaml", "existing", "params.yaml"]


def test_git_repository_without_dvc(project):
    """Committed metrics, but no .dvc/: one line, not DVC's "Having any troubles?" footer."""
    metrics = project / params_with({})["paths"]["evaluate_metrics"]
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"accuracy": 0.9}\n')
    git(project, "add", "-A")
    git(project, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "metrics")
    assert refused(report(project, "--base", "HEAD"), project) == (
        "error: no .dvc/ here: run the report in the project's root"
    )


def test_offline_plots_outside_the_project_makes_no_dvc_folder(tmp_path):
    result = run_command(("offline-plots",), tmp_path)
    assert error_line(result) == (
        "error: .dvc/: not found: run this in the project's root, or give -o FILE"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("base", ["main", "a`<b>bold</b>`|x", "``edge`", "<script>x</script>"])
def test_any_base_name_is_shown_as_typed(base):
    """A branch name is the user's text: in the heading and the images' table it stays inside
    its code span, its HTML shown and not rendered, its `|` not a new cell."""
    plots = ([], {"misclassified": {"base": "b.png"}})
    text = markdown_report(base, "0123456789abcdef", [], [], plots, "f")
    page = markdown_it.MarkdownIt("commonmark").enable("table").render(text)
    escaped = html.escape(base, quote=False)
    assert f"<h1>What this change did, against <code>{escaped}</code> (01234567)</h1>" in page
    assert f"<th>base: <code>{escaped}</code></th>" in page
    assert "<b>" not in page and "<script>" not in page

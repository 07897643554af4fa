"""End to end: real `dvc repro` runs of the project, copied into a temporary git repository,
on a small subset of the real MNIST files and one epoch."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT, write_params

QUICK = {
    "preprocess.max_train_images": 2000,
    "preprocess.validation_images": 500,
    "preprocess.max_test_images": 1000,
    "train.epochs": 1,
    "train.batch_size": 64,
}
STAGES = ["download", "preprocess", "train", "evaluate"]


class Repo:
    def __init__(self, root: Path, mnist_dir: Path) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "MNIST_MIRROR": str(mnist_dir),
            # The stages run as `python -m ...`: make that this interpreter.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@localhost",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@localhost",
        }

    def run(self, *command: str) -> str:
        result = subprocess.run(
            command, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def dvc(self, *arguments: str) -> str:
        return self.run(sys.executable, "-m", "dvc", *arguments)

    def repro(self, *arguments: str) -> list[str]:
        """Run `dvc repro`; return the stages it ran."""
        return re.findall(r"Running stage '(\w+)'", self.dvc("repro", *arguments))

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)

    def results(self) -> dict[str, bytes]:
        """dvc.lock and every file under metrics/ and plots/, by path."""
        files = [self.root / "dvc.lock"]
        files += [
            p
            for folder in ("metrics", "plots")
            for p in (self.root / folder).rglob("*")
            if p.is_file()
        ]
        return {str(path.relative_to(self.root)): path.read_bytes() for path in files}


@pytest.fixture
def repo(tmp_path, mnist_dir) -> Repo:
    """The project's committed code and config, without its published results."""
    listed = subprocess.run(
        ["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in listed:
        if name == "dvc.lock" or name.split("/")[0] in {"metrics", "plots", "tests"}:
            continue
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, target)
    repo = Repo(tmp_path, mnist_dir)
    write_params(tmp_path, QUICK)
    repo.run("git", "init", "-q")
    repo.commit("project")
    return repo


def test_pipeline_end_to_end(repo):
    assert repo.repro() == STAGES
    assert repo.repro() == []

    write_params(repo.root, {**QUICK, "evaluate.sample_images": 5})
    assert repo.repro() == ["evaluate"]

    repo.commit("one epoch")
    before = json.loads((repo.root / "metrics/evaluate.json").read_text())
    write_params(repo.root, {**QUICK, "evaluate.sample_images": 5, "train.epochs": 2})
    assert repo.repro() == ["train", "evaluate"]

    params_diff = json.loads(repo.dvc("params", "diff", "--json"))
    assert params_diff["params.yaml"]["train.epochs"] == {"old": 1, "new": 2, "diff": 1}
    metrics_diff = json.loads(repo.dvc("metrics", "diff", "--json"))
    accuracy = metrics_diff["metrics/evaluate.json"]["accuracy"]
    assert accuracy["old"] == before["accuracy"]
    assert accuracy["new"] != accuracy["old"]
    assert accuracy["diff"] == pytest.approx(accuracy["new"] - accuracy["old"])

    repo.dvc("plots", "show", "-o", "shown")
    page = (repo.root / "shown/index.html").read_text()
    for plot in (
        "Loss",
        "Accuracy",
        "Confusion matrix",
        "confusion_matrix.png",
        "samples.png",
        "misclassified.png",
    ):
        assert plot in page
    repo.dvc("plots", "diff", "HEAD", "-o", "compared")
    assert "Confusion matrix" in (repo.root / "compared/index.html").read_text()

    published = repo.results()
    assert repo.repro("-f") == STAGES
    assert repo.results() == published

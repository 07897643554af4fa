"""End to end: real `dvc repro` runs of the project, copied into a temporary git repository,
on a small subset of the real MNIST files and one epoch."""

import json

import pytest

from tests.helpers import STAGES, Repo, copy_project

# What `dvc plots show` draws: each plot file and its title (images have none).
PLOTS = {
    "plots/train/loss.csv": "Loss",
    "plots/train/accuracy.csv": "Accuracy",
    "plots/evaluate/predictions.csv": "Confusion matrix",
    "plots/evaluate/images/confusion_matrix.png": None,
    "plots/evaluate/images/samples.png": None,
    "plots/evaluate/images/misclassified.png": None,
}


@pytest.fixture
def repo(tmp_path, mnist_dir) -> Repo:
    """The project in a fresh git repository, on the quick params."""
    copy_project(tmp_path)
    repo = Repo(tmp_path, {"MNIST_MIRROR": str(mnist_dir)})
    repo.set_params({})
    repo.run("git", "init", "-q")
    repo.commit("project")
    return repo


def test_pipeline_end_to_end(repo):
    assert repo.repro() == STAGES
    assert repo.repro() == []

    repo.set_params({"evaluate.sample_images": 5})
    assert repo.repro() == ["evaluate"]

    repo.commit("one epoch")
    before = json.loads((repo.root / "metrics/evaluate.json").read_text())
    repo.set_params({"evaluate.sample_images": 5, "train.epochs": 2})
    assert repo.repro() == ["train", "evaluate"]

    params_diff = json.loads(repo.dvc("params", "diff", "--json"))
    assert params_diff["params.yaml"]["train.epochs"] == {"old": 1, "new": 2, "diff": 1}
    metrics_diff = json.loads(repo.dvc("metrics", "diff", "--json"))
    accuracy = metrics_diff["metrics/evaluate.json"]["accuracy"]
    assert accuracy["old"] == before["accuracy"]
    assert accuracy["new"] != accuracy["old"]
    assert accuracy["diff"] == pytest.approx(accuracy["new"] - accuracy["old"])

    # Exactly the plots the project defines, titled, and no raw rendering of any data file.
    shown = json.loads(repo.dvc("plots", "show", "--json"))["data"]
    assert set(shown) == set(PLOTS)
    for plot, title in PLOTS.items():
        if title:
            assert shown[plot][0]["content"]["title"] in (title, {"text": title, "anchor": "middle"})
    repo.dvc("plots", "show", "-o", "shown")
    assert (repo.root / "shown/index.html").exists()
    repo.dvc("plots", "diff", "HEAD", "-o", "compared")
    assert "Confusion matrix" in (repo.root / "compared/index.html").read_text()

    published = repo.results()
    assert repo.repro("-f") == STAGES
    assert repo.results() == published


def test_run_cache_restores_every_stage(repo):
    """Going back to params run before runs nothing: DVC restores each stage from its
    run-cache, byte for byte, dvc.lock, metrics and plots included."""
    assert repo.repro() == STAGES
    first = repo.results() | {"model": repo.read("models/model.keras")}
    runs = list((repo.root / ".dvc/cache/runs").glob("*/*/*"))
    assert len(runs) == len(STAGES)  # every stage is saved in the run-cache

    repo.set_params({"train.epochs": 2})
    assert repo.repro() == ["train", "evaluate"]
    assert repo.results() != {k: v for k, v in first.items() if k != "model"}

    repo.set_params({"train.epochs": 1})
    assert repo.repro() == []
    assert repo.results() | {"model": repo.read("models/model.keras")} == first

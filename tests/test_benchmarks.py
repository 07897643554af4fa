"""The training benchmark on the quick pipeline's prepared data: a benchmark, not a test of
speed; this checks that it runs every setup and judges each target."""

import json
import re
import sys

import pytest

from mnist_cnn.precision import cpu_flags_in_use, resolve_precision
from tests.helpers import QUICK


@pytest.mark.e2e  # on the baseline pipeline's prepared data (`built`)
def test_training_benchmark_reports_each_setup_and_target(built):
    printed = built.run(
        sys.executable, "-m", "benchmarks.train_speed", "--seeds", "1", "--output", "bench.json"
    ).stdout
    summary = json.loads((built.root / "bench.json").read_text())
    setups = summary["setups"]
    assert list(setups) == ["reference", "defaults", "defaults-float32"]
    assert setups["reference"]["epochs"] == 10  # the notebook's
    assert setups["defaults"]["epochs"] == QUICK["train.epochs"]  # this project's params.yaml
    auto = resolve_precision("auto", cpu_flags_in_use(), [])
    assert (setups["defaults"]["precision"], setups["defaults-float32"]["precision"]) == (
        auto,
        "float32",
    )
    if auto == "float32":  # forcing float32 is the same computation: measured once
        assert setups["defaults-float32"]["runs"] == setups["defaults"]["runs"]
    for result in setups.values():
        assert 0 < result["train_seconds"]
        assert 0 < result["train_peak_rss_mib"] <= result["process_peak_rss_mib"]
        assert 0.1 < result["validation_accuracy"] <= 1 and 0.1 < result["test_accuracy"] <= 1
    verdicts = re.findall(
        r"^(defaults(?:-float32)?): (test accuracy|training time|peak RSS of training) .*"
        r" \((met|MISSED): ",
        printed,
        re.MULTILINE,
    )
    judged = ("defaults-float32",) if auto == "float32" else ("defaults", "defaults-float32")
    assert [verdict[:2] for verdict in verdicts] == [
        (setup, target)
        for setup in judged
        for target in ("test accuracy", "training time", "peak RSS of training")
    ], printed
    if auto == "float32":  # the bfloat16 targets are not this machine's
        assert "defaults: precision auto is float32 here: the float32 targets apply" in printed
    assert summary["machine"]["auto_precision"] == auto

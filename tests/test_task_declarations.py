"""The one declaration of each setting the probes and the tables share: the task's primary
metric (each task module's PRIMARY_METRIC / HIGHER_IS_BETTER), the readout names (the stored ones of
the feature cache, plus concat for the probes) and the aligned manifest reader of the probes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pclbench.align.shards import read_manifest
from pclbench.evaluate import TASKS, extract, linear, primary_metric
from pclbench.report.tables import Comparison

# hand-written: the headline number of each task (docs/method.md §4; mean MAE over yaw/pitch/roll)
EXPECTED = {"expression": ("accuracy_pct", True), "verification": ("accuracy_pct", True),
            "au": ("mean_f1_pct", True), "pose": ("mae_mean_deg", False)}


def test_primary_metric_is_the_task_modules_declaration():
    assert {t: primary_metric(t) for t in TASKS.names()} == EXPECTED


def test_tables_read_the_same_declaration_for_a_benchmark_without_results():
    # the configured metric order lists mae_yaw_deg first: the primary column is still the task's
    tables = {"primary_readout": "trunk", "decimals": 2, "published": "unused.yaml",
              "metrics": {"pose": ["mae_yaw_deg", "mae_mean_deg"], "au": ["mean_f1_pct"]}}
    comp = Comparison([], {"tables": tables, "benchmarks": {"aflw2000": {"task": "pose"}, "disfa": {"task": "au"}}},
                      not_run={"aflw2000": "no data", "disfa": "no data"})
    assert comp.primary_metric("aflw2000") == "mae_mean_deg" and comp.direction("aflw2000", "mae_mean_deg") is False
    assert comp.primary_metric("disfa") == "mean_f1_pct" and comp.direction("disfa", "mean_f1_pct") is True
    assert comp.direction("aflw2000", "mae_yaw_deg") is False  # not the primary: errors are lower-is-better


def test_readout_names():
    assert extract.READOUTS == ("trunk", "face", "pose")
    assert linear.READOUTS == ("trunk", "face", "pose", "concat")


def test_read_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="aligned manifest not found.*run the align stage"):
        read_manifest(tmp_path)
    pd.DataFrame({"path": ["a", "b"]}).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(KeyError, match="no column 'row'"):
        read_manifest(tmp_path)
    pd.DataFrame({"path": ["a", "b"], "row": [0, 0]}).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(ValueError, match="column row has duplicates"):
        read_manifest(tmp_path)
    pd.DataFrame({"path": ["a", "b"], "row": [0, 1]}).to_csv(tmp_path / "manifest.csv", index=False)
    m = read_manifest(tmp_path)  # no images.npy needed
    assert m["path"].tolist() == ["a", "b"] and m["row"].tolist() == [0, 1]


def test_load_split_orders_the_manifest_by_the_feature_rows(tmp_path):
    (tmp_path / "aligned" / "test").mkdir(parents=True)
    (tmp_path / "features").mkdir()
    pd.DataFrame({"path": ["a", "b", "c"], "row": [0, 1, 2]}).to_csv(tmp_path / "aligned" / "test" / "manifest.csv",
                                                                      index=False)
    f = {k: np.arange(6, dtype=np.float32).reshape(3, 2) + i for i, k in enumerate(extract.READOUTS)}
    np.savez(tmp_path / "features" / "test.npz", row=np.array([2, 0, 1]), **f)
    x, man = linear.load_split(tmp_path / "features", tmp_path / "aligned", "test", "concat")
    assert man["path"].tolist() == ["c", "a", "b"]
    assert x.shape == (3, 4) and np.array_equal(x, np.concatenate([f["face"], f["pose"]], axis=1))

"""Linear probes on synthetic cached features with known structure (architecture.md stages 4-5)."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pclbench.config import ConfigError
from pclbench.probes import TASKS, load_results, run_task, save_result
from pclbench.probes.linear import load_split
from pclbench.probes.splits import carve_validation, check_fold_exclusivity



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids contention with other test processes; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TRAIN = {"optimizer": "lbfgs", "lr_grid": [1.0], "weight_decay_grid": [1e-3, 1e-2], "epochs": 20,
         "batch_size": 0, "lr_schedule": "constant", "eval_every": 10}
ADAM = {"optimizer": "adam", "lr_grid": [0.1], "weight_decay_grid": [0.0, 1e-3], "epochs": 60,
        "batch_size": 0, "lr_schedule": "cosine", "eval_every": 10}
CONFIG = {
    "probe": {"readout": "trunk", "device": "cpu", "standardize": True, "refit": "train_val",
              "val_fraction": 0.25, "num_threads": 1},
    "tasks": {
        "expression": {"dataset": "synth_expression", "train_split": "train", "test_split": "test",
                       "class_names": ["surprise", "fear", "disgust", "happiness", "sadness", "anger",
                                       "neutral"],
                       "selection_metric": "accuracy", "train": dict(TRAIN)},
        "verification": {"dataset": "synth_verification", "split": "all", "pairs_file": "pairs.csv",
                         "n_folds": 10},
        "au": {"dataset": "synth_au", "split": "all", "aus": "all", "occurrence_threshold": 2,
               "decision_threshold": 0.5, "train": dict(TRAIN)},
        "pose": {"dataset": "synth_pose", "train_split": "train", "test_split": "test",
                 "standardize_targets": True, "train": dict(ADAM)},
    },
    "pcl": {"pose_negatives": "fixed", "noise_std": 0.4},
}


def config(**probe):
    c = copy.deepcopy(CONFIG)
    c["probe"].update(probe)
    return c


def write_split(root, split, manifest: pd.DataFrame, trunk, face=None, pose=None, rows=None):
    """Stage-2 manifest + stage-4 feature cache for one split; ``rows`` = manifest rows that have
    features (default all, in order)."""
    d = root / "aligned" / split
    d.mkdir(parents=True)
    m = manifest.copy()
    m["row"] = np.arange(len(m))
    m.to_csv(d / "manifest.csv", index=False)
    rows = np.arange(len(m)) if rows is None else np.asarray(rows)
    f = root / "features"
    f.mkdir(exist_ok=True)
    face = trunk if face is None else face
    pose = trunk if pose is None else pose
    np.savez(f / f"{split}.npz", trunk=trunk[rows].astype(np.float32), face=face[rows].astype(np.float32),
             pose=pose[rows].astype(np.float32), row=rows.astype(np.int64))


def base_manifest(n, subjects, **cols):
    m = pd.DataFrame({"path": [f"images/{i:05d}.png" for i in range(n)], "subject": subjects,
                      "clip": -1, "frame": -1, "yaw": 0.0, "pitch": 0.0, "roll": 0.0, "expression": 0,
                      "fold": -1})
    for k, v in cols.items():
        m[k] = v
    return m


def run(task, root, cfg=None, seed=0):
    return run_task(task, root / "features", root / "aligned", root / "raw", cfg or config(), seed, "pcl")


# ---------------------------------------------------------------------------------------------------
# validation carving and fold checks

def test_carve_validation_is_subject_disjoint():
    rng = np.random.default_rng(0)
    subjects = rng.integers(0, 20, 500)
    tr, va = carve_validation(500, 0.2, np.random.default_rng(1), subjects)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(500))
    assert not set(subjects[tr].tolist()) & set(subjects[va].tolist())
    assert 100 <= len(va) < 100 + np.bincount(subjects).max()


def test_carve_validation_without_subjects_and_errors():
    tr, va = carve_validation(100, 0.3, np.random.default_rng(0), None)
    assert len(va) == 30 and len(tr) == 70 and not set(tr) & set(va)
    tr2, va2 = carve_validation(100, 0.3, np.random.default_rng(0), [-1] * 100)  # -1 = unknown subject
    assert va2.tolist() == va.tolist()
    with pytest.raises(ValueError, match="some|no subject"):
        carve_validation(3, 0.3, np.random.default_rng(0), ["a", "", "b"])
    with pytest.raises(ValueError, match="only one subject"):
        carve_validation(4, 0.3, np.random.default_rng(0), ["a"] * 4)


def test_fold_exclusivity_checks():
    assert check_fold_exclusivity(["a", "a", "b", "c"], [0, 0, 1, 1], "m.csv").tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"m\.csv: folds are not subject-exclusive.*'a': \[0, 1\]"):
        check_fold_exclusivity(["a", "a", "b"], [0, 1, 1], "m.csv")
    with pytest.raises(ValueError, match="no fold"):
        check_fold_exclusivity(["a", "b"], [0, -1], "m.csv")
    with pytest.raises(ValueError, match="at least 2 folds"):
        check_fold_exclusivity(["a", "b"], [0, 0], "m.csv")


# ---------------------------------------------------------------------------------------------------
# expression

def make_expression(root, signal, d=32, seed=0, n_train=280, n_test=140, signal_in="trunk"):
    rng = np.random.default_rng(seed)
    for split, n, s0 in (("train", n_train, 0), ("test", n_test, 100)):
        y = rng.integers(0, 7, n)
        onehot = np.zeros((n, d))
        onehot[np.arange(n), y] = signal
        noise = rng.normal(0, 0.2, (n, d))  # Bayes error ~0.1%
        informative, random = onehot + noise, rng.normal(0, 1.0, (n, d))
        feats = {"trunk": random, "face": random, "pose": random}
        feats[signal_in] = informative
        write_split(root, split, base_manifest(n, s0 + rng.integers(0, 14, n), expression=y), **feats)


def test_expression_one_hot_features_are_near_perfect(tmp_path):
    make_expression(tmp_path, signal=1.0)
    r = run("expression", tmp_path)
    assert r["metrics"]["accuracy_pct"] > 95 and r["metrics"]["mean_class_accuracy_pct"] > 95
    cm = np.array(r["confusion_matrix"]["counts"])
    assert cm.shape == (7, 7) and cm.sum() == r["n_test"] == 140
    assert r["metrics"]["accuracy_pct"] == pytest.approx(100 * np.trace(cm) / cm.sum())
    assert r["n_train"] + r["n_val"] == 280 and r["n_fit"] == 280
    assert r["selected"]["weight_decay"] in TRAIN["weight_decay_grid"]
    assert r["readout"] == "trunk" and r["method_info"] == CONFIG["pcl"]
    assert set(r["per_class"]) == set(CONFIG["tasks"]["expression"]["class_names"])
    json.dumps(r, allow_nan=False)  # plain JSON


def test_expression_random_features_are_at_chance(tmp_path):
    make_expression(tmp_path, signal=0.0, n_test=700)
    r = run("expression", tmp_path)
    # chance = 1/7 = 14.3%; the binomial std on 700 samples is 1.3 points
    assert 5 < r["metrics"]["accuracy_pct"] < 25


def test_readout_selects_the_feature_key(tmp_path):
    make_expression(tmp_path, signal=1.0, signal_in="face")
    face = run("expression", tmp_path, config(readout="face"))
    trunk = run("expression", tmp_path, config(readout="trunk"))
    concat = run("expression", tmp_path, config(readout="concat"))
    assert face["metrics"]["accuracy_pct"] > 95 and concat["metrics"]["accuracy_pct"] > 90
    assert trunk["metrics"]["accuracy_pct"] < 35
    x, _ = load_split(tmp_path / "features", tmp_path / "aligned", "train", "concat")
    assert x.shape == (280, 64)


def test_train_only_refit_keeps_the_selected_model(tmp_path):
    make_expression(tmp_path, signal=1.0)
    r = run("expression", tmp_path, config(refit="train_only"))
    assert r["n_fit"] == r["n_train"] < 280
    assert r["metrics"]["accuracy_pct"] > 90


def test_probe_config_errors_name_the_key(tmp_path):
    make_expression(tmp_path, signal=1.0)
    c = config()
    c["tasks"]["expression"]["train"]["lr"] = 0.1
    with pytest.raises(ConfigError, match="tasks.expression.train.lr"):
        run("expression", tmp_path, c)
    c = config()
    c["tasks"]["expression"]["train"]["weight_decay_grid"] = []
    with pytest.raises(ConfigError, match="weight_decay_grid"):
        run("expression", tmp_path, c)
    with pytest.raises(ConfigError, match="probe.readout"):
        run("expression", tmp_path, config(readout="head"))
    with pytest.raises(KeyError, match="unknown task"):
        run("fer", tmp_path)


def test_feature_cache_errors(tmp_path):
    make_expression(tmp_path, signal=1.0)
    np.savez(tmp_path / "features" / "test.npz", trunk=np.zeros((3, 4), np.float32), row=np.array([0, 1, 999]))
    with pytest.raises(ValueError, match="not in"):
        load_split(tmp_path / "features", tmp_path / "aligned", "test", "trunk")
    with pytest.raises(KeyError, match="face"):
        load_split(tmp_path / "features", tmp_path / "aligned", "test", "face")
    with pytest.raises(FileNotFoundError, match="val.npz"):
        load_split(tmp_path / "features", tmp_path / "aligned", "val", "trunk")


# ---------------------------------------------------------------------------------------------------
# verification

def make_verification(root, n_subjects=40, per_subject=4, d=32, failed=()):
    """Identity prototypes + noise; 10 folds with disjoint identities; ``failed`` image indices are
    missing from the aligned manifest (alignment failures)."""
    rng = np.random.default_rng(3)
    protos = rng.normal(size=(n_subjects, d))
    subj = np.repeat(np.arange(n_subjects), per_subject)
    feats = protos[subj] + rng.normal(0, 0.4, (len(subj), d))
    m = base_manifest(len(subj), subj)
    keep = np.setdiff1d(np.arange(len(subj)), failed)
    write_split(root, "all", m.iloc[keep].reset_index(drop=True), feats[keep])
    pairs = []
    for s in range(n_subjects):
        fold = s % 10
        i = s * per_subject
        pairs.append((fold, m.path[i], m.path[i + 1], 1))
        pairs.append((fold, m.path[i + 2], m.path[i + 3], 1))
        t = ((s + 10) % n_subjects) * per_subject  # a subject of the same fold
        pairs.append((fold, m.path[i], m.path[t + 1], 0))
        pairs.append((fold, m.path[i + 3], m.path[t + 2], 0))
    (root / "raw").mkdir()
    p = pd.DataFrame(pairs, columns=["fold", "path_a", "path_b", "same"])
    p.to_csv(root / "raw" / "pairs.csv", index=False)
    return m, p


def test_verification_identity_features(tmp_path):
    make_verification(tmp_path)
    r = run("verification", tmp_path)
    assert r["metrics"]["accuracy_mean_pct"] > 95
    assert len(r["per_fold"]) == 10 and r["n_pairs_dropped"] == 0 and r["n_test"] == 160
    assert r["n_train"] == 0 and r["n_val"] == 0
    accs = [f["accuracy_pct"] for f in r["per_fold"]]
    assert r["metrics"]["accuracy_mean_pct"] == pytest.approx(np.mean(accs))


def test_verification_drops_and_counts_unaligned_pairs(tmp_path):
    failed = [0, 5, 17]
    m, p = make_verification(tmp_path, failed=failed)
    bad = set(m.path[failed])
    expected = int(sum((a in bad) or (b in bad) for a, b in zip(p.path_a, p.path_b)))
    assert expected > 0
    r = run("verification", tmp_path)
    assert r["n_pairs_dropped"] == expected
    assert r["n_pairs_used"] == r["n_pairs_total"] - expected == sum(f["n_pairs"] for f in r["per_fold"])


def test_verification_fold_count_is_checked(tmp_path):
    make_verification(tmp_path)
    c = config()
    c["tasks"]["verification"]["n_folds"] = 5
    with pytest.raises(ValueError, match="expected tasks.verification.n_folds = 5"):
        run("verification", tmp_path, c)


# ---------------------------------------------------------------------------------------------------
# AU

AUS = [1, 2, 4, 6, 12, 25]


def make_au(root, fold_of_subject=None, n=360, d=24):
    """Intensities from a known linear model of a latent z that the features encode linearly."""
    rng = np.random.default_rng(4)
    subj = rng.integers(0, 12, n)
    fold_of_subject = fold_of_subject or {s: s % 3 for s in range(12)}
    z = rng.normal(size=(n, len(AUS)))
    mix = rng.normal(size=(len(AUS), d))
    feats = z @ mix + rng.normal(0, 0.05, (n, d))
    intensity = np.clip(np.round(2.4 + 1.5 * z, 1), 0, 5)
    cols = {f"AU{k}": intensity[:, j] for j, k in enumerate(AUS)}
    m = base_manifest(n, subj, fold=[fold_of_subject[s] for s in subj], **cols)
    write_split(root, "all", m, feats)
    return intensity


def test_au_probe_recovers_a_linear_model(tmp_path):
    intensity = make_au(tmp_path)
    r = run("au", tmp_path)
    assert r["metrics"]["mean_f1_pct"] > 90
    assert list(r["per_au"]) == [f"AU{k}" for k in AUS]
    assert len(r["per_fold"]) == 3 and sum(f["n_test"] for f in r["per_fold"]) == r["n_test"] == 360
    for j, k in enumerate(AUS):  # occurrence = intensity >= 2
        assert r["per_au"][f"AU{k}"]["base_rate_pct"] == pytest.approx(100 * np.mean(intensity[:, j] >= 2))
    folds = [f["mean_f1_pct"] for f in r["per_fold"]]
    assert r["metrics"]["fold_mean_f1_mean_pct"] == pytest.approx(np.mean(folds))


def test_au_validation_thresholds_and_au_subset(tmp_path):
    make_au(tmp_path)
    c = config()
    c["tasks"]["au"].update(decision_threshold="validation", aus=[12, 1])
    r = run("au", tmp_path, c)
    assert list(r["per_au"]) == ["AU12", "AU1"]
    assert r["metrics"]["mean_f1_pct"] > 85
    assert all(0 <= t <= 1 or t < 0 for f in r["per_fold"] for t in f["thresholds"].values())
    c["tasks"]["au"]["aus"] = [3]
    with pytest.raises(KeyError, match=r"AU\(s\) \[3\]"):
        run("au", tmp_path, c)


def test_au_fold_violation_raises(tmp_path):
    # subject 0 in fold 0 for some rows and fold 1 for others: rewrite the manifest
    make_au(tmp_path)
    mpath = tmp_path / "aligned" / "all" / "manifest.csv"
    m = pd.read_csv(mpath)
    first = m.index[m.subject == 0][0]
    m.loc[first, "fold"] = 1
    m.to_csv(mpath, index=False)
    with pytest.raises(ValueError, match="not subject-exclusive"):
        run("au", tmp_path)


# ---------------------------------------------------------------------------------------------------
# pose

def make_pose(root, encode, d=16, n_train=400, n_test=200):
    rng = np.random.default_rng(5)
    for split, n, s0 in (("train", n_train, 0), ("test", n_test, 50)):
        ang = np.stack([rng.uniform(-60, 60, n), rng.uniform(-30, 30, n), rng.uniform(-20, 20, n)], 1)
        feats = rng.normal(0, 1, (n, d))
        if encode == "all":
            feats[:, :3] = ang / 30.0 + rng.normal(0, 0.001, (n, 3))
        elif encode == "yaw":
            feats[:, 0] = ang[:, 0] / 30.0
        write_split(root, split, base_manifest(n, s0 + rng.integers(0, 20, n), yaw=ang[:, 0], pitch=ang[:, 1],
                                               roll=ang[:, 2]), feats)


def test_pose_features_linear_in_angles(tmp_path):
    make_pose(tmp_path, "all")
    r = run("pose", tmp_path)
    assert r["angle_order"] == ["yaw", "pitch", "roll"]
    for a in ("yaw", "pitch", "roll"):
        assert r["metrics"][f"mae_{a}_deg"] < 1.0
    assert r["metrics"]["mae_mean_deg"] == pytest.approx(
        np.mean([r["metrics"][f"mae_{a}_deg"] for a in ("yaw", "pitch", "roll")]))


def test_pose_angle_order_yaw_only_feature(tmp_path):
    """A feature that encodes only yaw: low yaw MAE, pitch/roll MAE at the feature-free baseline."""
    make_pose(tmp_path, "yaw")
    r = run("pose", tmp_path)
    pa = r["per_angle"]
    assert pa["yaw"]["mae_deg"] < 0.1 * pa["yaw"]["baseline_median_mae_deg"]
    for a in ("pitch", "roll"):
        assert pa[a]["mae_deg"] > 0.85 * pa[a]["baseline_median_mae_deg"]
    # baselines of uniform angles: E|U(-h, h)| = h / 2
    assert pa["pitch"]["baseline_median_mae_deg"] == pytest.approx(15, rel=0.2)
    assert pa["roll"]["baseline_median_mae_deg"] == pytest.approx(10, rel=0.2)


# ---------------------------------------------------------------------------------------------------
# registry and result files

def test_registry_and_result_files(tmp_path):
    assert TASKS.names() == ["au", "expression", "pose", "verification"]
    res = {"task": "au", "method": "pcl", "metrics": {"mean_f1_pct": float("nan"), "x": np.float32(1.5)},
           "per_fold": (1, 2)}
    p = save_result(res, tmp_path / "pcl" / "au.json")
    (tmp_path / "pcl" / "run.json").write_text('{"stage": "probe"}')  # provenance, not a result
    assert not list((tmp_path / "pcl").glob(".*tmp"))
    loaded = load_results(tmp_path)
    assert loaded == [{"task": "au", "method": "pcl", "metrics": {"mean_f1_pct": None, "x": 1.5},
                       "per_fold": [1, 2], "source": "pcl/au.json"}]
    assert math.isclose(json.loads(p.read_text())["metrics"]["x"], 1.5)
    (tmp_path / "pcl" / "pose.json").write_text('{"metrics": {}}')
    with pytest.raises(ValueError, match="pose.json: not a probe result"):
        load_results(tmp_path)


# ---------------------------------------------------------------------------------------------------
# the generic trainer

def _onehot_data(n, d=24, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, n)
    x = np.zeros((n, d), np.float32)
    x[np.arange(n), y] = 1.0
    return (x + rng.normal(0, 0.2, (n, d))).astype(np.float32), y


def _fit(train_over=None, **probe_over):
    from pclbench.config import from_dict
    from pclbench.probes.linear import ProbeConfig, TrainConfig, fit_probe

    x, y = _onehot_data(240)
    xt, yt = _onehot_data(200, seed=1)
    probe = from_dict(ProbeConfig, {**CONFIG["probe"], **probe_over}, "probe").check()
    train = from_dict(TrainConfig, {**TRAIN, **(train_over or {})}, "train").check("train")
    out = fit_probe(x, y, xt, loss="ce", out_dim=7, probe=probe, train=train,
                    score=lambda o, t: float((o.argmax(1) == t).mean()), higher_is_better=True, seed=0,
                    subjects=np.arange(240) % 12)
    return out, float((out.test_outputs.argmax(1) == yt).mean())


@pytest.mark.parametrize("over", [
    {},  # lbfgs
    {**ADAM, "optimizer": "adamw", "batch_size": 64, "lr_grid": [0.05], "epochs": 30},
    {**ADAM, "lr_schedule": "constant"},
])
def test_every_optimizer_fits_separable_classes(over):
    out, acc = _fit(over)
    assert acc > 0.95
    assert out.n_train + out.n_val == 240 and out.n_fit == 240
    epochs = over.get("epochs", TRAIN["epochs"])
    assert {g["epoch"] for g in out.grid} == set(range(10, epochs + 1, 10))


def test_raw_features_without_standardisation():
    _, acc = _fit(standardize=False)
    assert acc > 0.95


def test_lbfgs_needs_full_batch_constant_lr():
    from pclbench.config import from_dict
    from pclbench.probes.linear import TrainConfig

    with pytest.raises(ConfigError, match="tasks.au.train: optimizer lbfgs"):
        from_dict(TrainConfig, {**TRAIN, "lr_schedule": "cosine"}, "t").check("tasks.au.train")
    with pytest.raises(ConfigError, match="lbfgs"):
        from_dict(TrainConfig, {**TRAIN, "batch_size": 32}, "t").check("tasks.au.train")


def test_selection_never_reads_the_test_set():
    """The selected setting and every validation score are the same whatever the test features."""
    from pclbench.config import from_dict
    from pclbench.probes.linear import ProbeConfig, TrainConfig, fit_probe

    x, y = _onehot_data(240)
    runs = []
    for xt in (np.zeros((50, 24), np.float32), np.random.default_rng(9).normal(size=(50, 24)).astype(np.float32)):
        for refit in ("train_val", "train_only"):
            probe = from_dict(ProbeConfig, {**CONFIG["probe"], "refit": refit}, "probe")
            out = fit_probe(x, y, xt, loss="ce", out_dim=7, probe=probe, train=from_dict(TrainConfig, TRAIN, "t"),
                            score=lambda o, t: float((o.argmax(1) == t).mean()), higher_is_better=True, seed=0)
            runs.append((out.selected, out.grid))
    assert all(r == runs[0] for r in runs)

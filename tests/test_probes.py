"""Linear probes on synthetic cached features with known structure (architecture.md stages 4-5)."""
from __future__ import annotations

import copy
import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
import torch

from pclbench.core.config import ConfigError
from pclbench.evaluate import TASKS, load_results, run_benchmark, save_result
from pclbench.evaluate.linear import load_split
from pclbench.evaluate.splits import carve_validation, check_fold_exclusivity


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs with one torch thread (conftest.one_torch_thread)."""


# the clean loop's settings of the authors'-loop keys (init ... standardize; config.yaml's defaults)
LOOP = {"lr_step": "step", "init": "zeros", "shuffle": True, "decay_bias": False, "standardize": None}
TRAIN = {"optimizer": "lbfgs", "lr_grid": [1.0], "weight_decay_grid": [1e-3, 1e-2], "epochs": 20,
         "batch_size": 0, "lr_schedule": "constant", "eval_every": 10, **LOOP}
ADAM = {"optimizer": "adam", "lr_grid": [0.1], "weight_decay_grid": [0.0, 1e-3], "epochs": 60,
        "batch_size": 0, "lr_schedule": "cosine", "eval_every": 10, **LOOP}
CLASSES = ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]
AUS = [1, 2, 4, 6, 12, 25]
CONFIG = {
    "seed": 0,
    "probe": {"readouts": ["trunk"], "n_seeds": 1, "protocol": "clean", "device": "cpu", "standardize": True,
              "refit": "train_val", "val_fraction": 0.25, "num_threads": 1},
    "tasks": {
        "expression": {"selection_metric": "accuracy", "train": dict(TRAIN)},
        "verification": {"pairs_file": "pairs.csv", "n_folds": 10, "mode": "cosine", "margin": 0.0,
                         "train": {**ADAM, "lr_grid": [1e-2], "weight_decay_grid": [0.0], "epochs": 20}},
        "au": {"occurrence_threshold": 2, "threshold": "fixed", "fixed_threshold": 0.5, "train": dict(TRAIN)},
        "pose": {"standardize_targets": True, "train": dict(ADAM)},
    },
    "pcl": {"pose_negatives": "fixed", "noise_std": 0.4},
}
BENCHMARKS = {
    "expression": {"task": "expression", "train": {"dataset": "expr", "split": "train"},
                   "test": {"dataset": "expr", "split": "test"}, "labels": CLASSES, "description": "test"},
    "verification": {"task": "verification", "train": None, "test": {"dataset": "ver", "split": "all"},
                     "labels": None, "description": "test"},
    "au": {"task": "au", "train": None, "test": {"dataset": "au", "split": "all"},
           "labels": [f"AU{k}" for k in AUS], "description": "test"},
    "pose": {"task": "pose", "train": {"dataset": "pose", "split": "train"},
             "test": {"dataset": "pose", "split": "test"}, "labels": None, "description": "test"},
}


def config(**probe):
    c = copy.deepcopy(CONFIG)
    c["probe"].update(probe)
    return c


def write_split(root, split, manifest: pd.DataFrame, trunk, face=None, pose=None, rows=None, dataset="expr"):
    """Stage-2 manifest + stage-4 feature cache of ``dataset/split`` under ``root``; ``rows`` =
    manifest rows that have features (default all, in order)."""
    d = root / "aligned" / dataset / split
    d.mkdir(parents=True)
    m = manifest.copy()
    m["row"] = np.arange(len(m))
    m.to_csv(d / "manifest.csv", index=False)
    rows = np.arange(len(m)) if rows is None else np.asarray(rows)
    f = root / "features" / dataset
    f.mkdir(parents=True, exist_ok=True)
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


def run_all(task, root, cfg=None, entry=None):
    """The whole probe result of the test benchmark of ``task``."""
    return run_benchmark(task, entry or BENCHMARKS[task], root / "features", root / "aligned", root / "raw",
                         cfg or config(), "pcl")


def run(task, root, cfg=None, entry=None):
    """The single run (one readout, one seed) of the default test config."""
    res = run_all(task, root, cfg, entry)
    assert len(res["runs"]) == 1
    return {**res["runs"][0], "method_info": res["method_info"]}


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

def make_expression(root, signal, d=32, seed=0, n_train=280, n_test=140, signal_in="trunk", n_classes=7):
    rng = np.random.default_rng(seed)
    for split, n, s0 in (("train", n_train, 0), ("test", n_test, 100)):
        y = rng.integers(0, n_classes, n)
        onehot = np.zeros((n, d))
        onehot[np.arange(n), y] = signal
        noise = rng.normal(0, 0.2, (n, d))  # Bayes error ~0.1%
        informative, random = onehot + noise, rng.normal(0, 1.0, (n, d))
        feats = {"trunk": random, "face": random, "pose": random}
        feats[signal_in] = informative
        write_split(root, split, base_manifest(n, s0 + rng.integers(0, 14, n), expression=y), **feats)
        if split == "test":
            return y


def test_expression_one_hot_features_are_near_perfect(tmp_path):
    make_expression(tmp_path, signal=1.0)
    res = run_all("expression", tmp_path)
    assert (res["benchmark"], res["task"], res["method"], res["protocol"]) == ("expression", "expression", "pcl",
                                                                               "clean")
    assert res["datasets"] == {"train": "expr/train", "test": "expr/test"}
    assert res["primary_metric"] == "accuracy_pct" and res["higher_is_better"] is True
    r = res["runs"][0]
    assert r["metrics"]["accuracy_pct"] > 95 and r["metrics"]["mean_class_accuracy_pct"] > 95
    cm = np.array(r["confusion_matrix"]["counts"])
    assert cm.shape == (7, 7) and cm.sum() == r["n_test"] == 140
    assert r["metrics"]["accuracy_pct"] == pytest.approx(100 * np.trace(cm) / cm.sum())
    assert r["n_train"] + r["n_val"] == 280 and r["n_fit"] == 280
    assert r["selected"]["weight_decay"] in TRAIN["weight_decay_grid"]
    assert r["selected"]["selected_on"] == "validation"
    assert r["readout"] == "trunk" and res["method_info"] is None  # filled by `pclbench probe --checkpoint`
    assert list(r["per_class"]) == CLASSES
    json.dumps(res, allow_nan=False)  # plain JSON


def test_expression_random_features_are_at_chance(tmp_path):
    make_expression(tmp_path, signal=0.0, n_test=700)
    r = run("expression", tmp_path)
    # chance = 1/7 = 14.3%; the binomial std on 700 samples is 1.3 points
    assert 5 < r["metrics"]["accuracy_pct"] < 25


def test_expression_class_count_comes_from_the_benchmark_labels(tmp_path):
    """AffectNet: one dataset, labels 0-7; the 7-class benchmark leaves contempt (7) out, the 8-class
    one keeps it."""
    y_test = make_expression(tmp_path, signal=1.0, n_classes=8)
    seven = run("expression", tmp_path)
    assert seven["n_test"] == int((y_test < 7).sum()) and seven["n_excluded"]["test"] == int((y_test == 7).sum()) > 0
    assert np.array(seven["confusion_matrix"]["counts"]).shape == (7, 7)
    eight = run("expression", tmp_path, entry={**BENCHMARKS["expression"], "labels": CLASSES + ["contempt"]})
    assert eight["n_test"] == 140 and eight["n_excluded"] == {"train": 0, "test": 0}
    assert np.array(eight["confusion_matrix"]["counts"]).shape == (8, 8)
    assert eight["per_class"]["contempt"]["support"] == int((y_test == 7).sum())
    assert eight["metrics"]["accuracy_pct"] > 90


def test_every_readout_in_one_job(tmp_path):
    make_expression(tmp_path, signal=1.0, signal_in="face")
    res = run_all("expression", tmp_path, config(readouts=["face", "trunk", "concat"]))
    assert res["readouts"] == ["face", "trunk", "concat"] and [r["readout"] for r in res["runs"]] == res["readouts"]
    acc = {ro: res["summary"][ro]["accuracy_pct"]["mean"] for ro in res["readouts"]}
    assert acc["face"] > 95 and acc["concat"] > 90 and acc["trunk"] < 35
    x, _ = load_split(tmp_path / "features" / "expr", tmp_path / "aligned" / "expr", "train", "concat")
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
    with pytest.raises(ConfigError, match="probe.readouts"):
        run("expression", tmp_path, config(readouts=["head"]))
    with pytest.raises(ConfigError, match="probe.protocol"):
        run("expression", tmp_path, config(protocol="best"))
    with pytest.raises(ConfigError, match="benchmarks.fer.task"):
        run_benchmark("fer", {**BENCHMARKS["expression"], "task": "fer"}, tmp_path, tmp_path, tmp_path, config(), "m")
    with pytest.raises(ConfigError, match="benchmarks.e.labels"):
        run_benchmark("e", {**BENCHMARKS["expression"], "labels": None}, tmp_path, tmp_path, tmp_path, config(), "m")


def test_feature_cache_errors(tmp_path):
    make_expression(tmp_path, signal=1.0)
    feats, aligned = tmp_path / "features" / "expr", tmp_path / "aligned" / "expr"
    np.savez(feats / "test.npz", trunk=np.zeros((3, 4), np.float32), row=np.array([0, 1, 999]))
    with pytest.raises(ValueError, match="not in"):
        load_split(feats, aligned, "test", "trunk")
    with pytest.raises(KeyError, match="face"):
        load_split(feats, aligned, "test", "face")
    with pytest.raises(FileNotFoundError, match="val.npz"):
        load_split(feats, aligned, "val", "trunk")


# ---------------------------------------------------------------------------------------------------
# verification

def make_verification(root, n_subjects=40, per_subject=4, d=32, failed=(), noise=0.4, nuisance=0, seed=3):
    """Identity prototypes + noise; 10 folds with disjoint identities; ``failed`` image indices are
    missing from the aligned manifest (alignment failures); ``nuisance`` extra dimensions of large
    identity-free variance (they swamp the raw cosine; a trained linear map can ignore them)."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(n_subjects, d))
    subj = np.repeat(np.arange(n_subjects), per_subject)
    feats = protos[subj] + rng.normal(0, noise, (len(subj), d))
    if nuisance:
        feats = np.concatenate([feats, rng.normal(0, 6.0, (len(subj), nuisance))], axis=1)
    m = base_manifest(len(subj), subj)
    keep = np.setdiff1d(np.arange(len(subj)), failed)
    write_split(root, "all", m.iloc[keep].reset_index(drop=True), feats[keep], dataset="ver")
    pairs = []
    for s in range(n_subjects):
        fold = s % 10
        i = s * per_subject
        pairs.append((fold, m.path[i], m.path[i + 1], 1))
        pairs.append((fold, m.path[i + 2], m.path[i + 3], 1))
        t = ((s + 10) % n_subjects) * per_subject  # a subject of the same fold
        pairs.append((fold, m.path[i], m.path[t + 1], 0))
        pairs.append((fold, m.path[i + 3], m.path[t + 2], 0))
    (root / "raw" / "ver").mkdir(parents=True)
    p = pd.DataFrame(pairs, columns=["fold", "path_a", "path_b", "same"])
    p.to_csv(root / "raw" / "ver" / "pairs.csv", index=False)
    return m, p, feats


def test_verification_identity_features(tmp_path):
    make_verification(tmp_path)
    res = run_all("verification", tmp_path, config(n_seeds=3))
    assert res["seeds"] == [0] and len(res["runs"]) == 1  # training-free: one run, whatever n_seeds
    assert res["std_over"] == "folds" and res["datasets"] == {"test": "ver/all"}
    r = res["runs"][0]
    assert r["metrics"]["accuracy_pct"] > 95
    assert len(r["per_fold"]) == 10 and r["n_pairs_dropped"] == 0 and r["n_test"] == 160
    assert r["n_train"] == 0 and r["n_val"] == 0
    accs = [f["accuracy_pct"] for f in r["per_fold"]]
    assert r["metrics"]["accuracy_pct"] == pytest.approx(np.mean(accs))
    assert res["summary"]["trunk"]["accuracy_pct"] == pytest.approx(
        {"mean": statistics.mean(accs), "std": statistics.stdev(accs), "n": 10})


def test_verification_folds_match_a_hand_loop(tmp_path):
    """Per fold: the threshold is chosen on the OTHER nine folds' cosines (brute force over
    midpoints) and applied to the held-out fold."""
    m, p, feats = make_verification(tmp_path, noise=1.5)
    r = run("verification", tmp_path)
    row = {path: i for i, path in enumerate(m.path)}
    a = feats[[row[x] for x in p.path_a]]
    b = feats[[row[x] for x in p.path_b]]
    cos = np.array([float(u @ v / np.linalg.norm(u) / np.linalg.norm(v)) for u, v in zip(a, b)])
    for f in r["per_fold"]:
        test = (p.fold == f["fold"]).to_numpy()
        s_tr, y_tr = cos[~test], p.same.to_numpy()[~test]
        u = np.unique(s_tr)
        cands = np.concatenate([[u[0] - 1], (u[:-1] + u[1:]) / 2, [u[-1] + 1]])
        accs = [np.mean((s_tr > t) == y_tr) for t in cands]
        t = cands[int(np.argmax(accs))]
        assert f["threshold"] == pytest.approx(t)
        assert f["accuracy_pct"] == pytest.approx(100 * np.mean((cos[test] > t) == p.same.to_numpy()[test]))
    assert 55 < r["metrics"]["accuracy_pct"] < 100  # noisy enough that thresholds matter


def test_verification_drops_and_counts_unaligned_pairs(tmp_path):
    failed = [0, 5, 17]
    m, p, _ = make_verification(tmp_path, failed=failed)
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


def test_verification_linear_mode_learns_to_ignore_nuisance_dimensions(tmp_path):
    """Identity in 8 dims, 24 dims of large identity-free noise: the raw cosine is near chance, the
    Siamese linear map trained on the other folds' pairs recovers the identity."""
    make_verification(tmp_path, d=8, noise=0.3, nuisance=24, per_subject=4)
    cos = run("verification", tmp_path)
    c = config(n_seeds=2)
    c["tasks"]["verification"]["mode"] = "linear"
    c["tasks"]["verification"]["train"].update(lr_grid=[0.1], epochs=40)
    res = run_all("verification", tmp_path, c)
    assert res["std_over"] == "seeds" and res["seeds"] == [0, 1] and len(res["runs"]) == 2
    lin = res["runs"][0]
    assert cos["metrics"]["accuracy_pct"] < 60 and lin["metrics"]["accuracy_pct"] > 72
    sel = lin["selected"]["per_fold"]
    assert len(sel) == 10 and all(s["selected_on"] == "validation" for s in sel)
    assert all(s["validation_fold"] == (s["fold"] + 1) % 10 for s in sel)  # the next fold, cyclically
    assert lin["n_train"] == 128 and lin["n_val"] == 16  # 8 folds fit, 1 validation fold, 16 pairs each


# ---------------------------------------------------------------------------------------------------
# AU

def make_au(root, fold_of_subject=None, n=360, d=24, feature_noise=0.05, base=2.4, scale=1.5, seed=4):
    """Intensities from a known linear model of a latent z that the features encode linearly."""
    rng = np.random.default_rng(seed)
    subj = rng.integers(0, 12, n)
    fold_of_subject = fold_of_subject or {s: s % 3 for s in range(12)}
    z = rng.normal(size=(n, len(AUS)))
    mix = rng.normal(size=(len(AUS), d))
    feats = z @ mix + rng.normal(0, feature_noise, (n, d))
    intensity = np.clip(np.round(base + scale * z, 1), 0, 5)
    cols = {f"AU{k}": intensity[:, j] for j, k in enumerate(AUS)}
    m = base_manifest(n, subj, fold=[fold_of_subject[s] for s in subj], **cols)
    write_split(root, "all", m, feats, dataset="au")
    return intensity


def test_au_probe_recovers_a_linear_model(tmp_path):
    intensity = make_au(tmp_path)
    res = run_all("au", tmp_path)
    assert res["primary_metric"] == "mean_f1_pct" and res["datasets"] == {"test": "au/all"}
    r = res["runs"][0]
    assert r["metrics"]["mean_f1_pct"] > 90
    assert list(r["per_au"]) == [f"AU{k}" for k in AUS]
    assert r["metrics"]["mean_f1_pct"] == pytest.approx(np.mean([r["metrics"][f"f1_AU{k}_pct"] for k in AUS]))
    assert len(r["per_fold"]) == 3 and sum(f["n_test"] for f in r["per_fold"]) == r["n_test"] == 360
    for j, k in enumerate(AUS):  # occurrence = intensity >= 2
        assert r["per_au"][f"AU{k}"]["base_rate_pct"] == pytest.approx(100 * np.mean(intensity[:, j] >= 2))
    folds = [f["mean_f1_pct"] for f in r["per_fold"]]
    assert r["fold_mean_f1"]["mean_pct"] == pytest.approx(np.mean(folds))
    assert r["fold_mean_f1"]["std_pct"] == pytest.approx(statistics.stdev(folds))
    assert all(t == 0.5 for f in r["per_fold"] for t in f["thresholds"].values())


def test_au_decision_thresholds_match_a_hand_loop():
    from pclbench.evaluate import metrics
    from pclbench.evaluate.au import decision_thresholds

    rng = np.random.default_rng(0)
    probs = np.round(rng.uniform(size=(40, 3)), 2)
    y = (rng.uniform(size=(40, 3)) < probs * 0.8).astype(float)
    y[:, 2] = 0  # no positive: keeps the fixed value
    assert decision_thresholds(probs, y, "fixed", 0.4).tolist() == [0.4] * 3
    th = decision_thresholds(probs, y, "validation", 0.4)
    for j in range(2):
        u = np.unique(probs[:, j])
        cands = np.concatenate([[u[0] - 1], (u[:-1] + u[1:]) / 2, [u[-1] + 1]])
        f1 = [metrics.binary_f1(y[:, j], probs[:, j] > c)[0] for c in cands]
        assert th[j] == pytest.approx(cands[int(np.argmax(f1))])
    assert th[2] == 0.4


def test_au_validation_thresholds_help_rare_weak_aus(tmp_path):
    """Rare AUs (base rate ~16%) from weakly informative features: calibrated probabilities seldom
    pass 0.5, so thresholds chosen on validation give a higher F1 than the fixed 0.5."""
    make_au(tmp_path, feature_noise=6.0, base=1.0, scale=1.0, n=600)
    fixed = run("au", tmp_path)
    c = config()
    c["tasks"]["au"]["threshold"] = "validation"
    val = run("au", tmp_path, c)
    assert val["metrics"]["mean_f1_pct"] > fixed["metrics"]["mean_f1_pct"] + 5
    th = [t for f in val["per_fold"] for t in f["thresholds"].values()]
    assert np.mean(th) < 0.5 and len(set(th)) > 1


def test_au_subset_and_missing_columns(tmp_path):
    make_au(tmp_path)
    r = run("au", tmp_path, entry={**BENCHMARKS["au"], "labels": ["AU12", "AU1"]})
    assert list(r["per_au"]) == ["AU12", "AU1"] and r["metrics"]["mean_f1_pct"] > 85
    everything = run("au", tmp_path, entry={**BENCHMARKS["au"], "labels": None})
    assert list(everything["per_au"]) == [f"AU{k}" for k in sorted(AUS)]
    with pytest.raises(KeyError, match=r"column\(s\) \['AU3'\]"):
        run("au", tmp_path, entry={**BENCHMARKS["au"], "labels": ["AU3"]})


def test_au_fold_violation_raises(tmp_path):
    # subject 0 in fold 0 for some rows and fold 1 for others: rewrite the manifest
    make_au(tmp_path)
    mpath = tmp_path / "aligned" / "au" / "all" / "manifest.csv"
    m = pd.read_csv(mpath)
    first = m.index[m.subject == 0][0]
    m.loc[first, "fold"] = 1
    m.to_csv(mpath, index=False)
    with pytest.raises(ValueError, match="not subject-exclusive"):
        run("au", tmp_path)


# ---------------------------------------------------------------------------------------------------
# pose

def make_pose(root, encode, d=16, n_train=400, n_test=200, datasets=("pose", "pose"), swap_yaw_pitch=False):
    """Angles uniform in +-60 (yaw), +-30 (pitch), +-20 (roll) degrees; ``encode`` = which angles the
    features hold linearly. ``datasets`` = (train dataset, test dataset); ``swap_yaw_pitch`` writes the
    yaw values under the pitch column and vice versa (the authors' log labels, docs/method.md §6.1 item 5)."""
    rng = np.random.default_rng(5)
    for (split, n, s0), ds in zip((("train", n_train, 0), ("test", n_test, 50)), datasets):
        ang = np.stack([rng.uniform(-60, 60, n), rng.uniform(-30, 30, n), rng.uniform(-20, 20, n)], 1)
        feats = rng.normal(0, 1, (n, d))
        if encode == "all":
            feats[:, :3] = ang / 30.0 + rng.normal(0, 0.001, (n, 3))
        elif encode == "yaw":
            feats[:, 0] = ang[:, 0] / 30.0
        yaw, pitch = (ang[:, 1], ang[:, 0]) if swap_yaw_pitch else (ang[:, 0], ang[:, 1])
        write_split(root, split, base_manifest(n, s0 + rng.integers(0, 20, n), yaw=yaw, pitch=pitch, roll=ang[:, 2]),
                    feats, dataset=ds)


def test_pose_features_linear_in_angles(tmp_path):
    make_pose(tmp_path, "all")
    res = run_all("pose", tmp_path)
    assert res["primary_metric"] == "mae_mean_deg" and res["higher_is_better"] is False
    r = res["runs"][0]
    assert r["angle_order"] == ["yaw", "pitch", "roll"]
    for a in ("yaw", "pitch", "roll"):
        assert r["metrics"][f"mae_{a}_deg"] < 1.0
    assert r["metrics"]["mae_mean_deg"] == pytest.approx(
        np.mean([r["metrics"][f"mae_{a}_deg"] for a in ("yaw", "pitch", "roll")]))


def test_pose_trains_on_one_dataset_and_tests_on_another(tmp_path):
    """300W-LP -> AFLW2000: the benchmark's train and test name different datasets."""
    make_pose(tmp_path, "all", n_train=300, n_test=120, datasets=("lp", "aflw"))
    entry = {**BENCHMARKS["pose"], "train": {"dataset": "lp", "split": "train"},
             "test": {"dataset": "aflw", "split": "test"}}
    res = run_all("pose", tmp_path, entry=entry)
    assert res["datasets"] == {"train": "lp/train", "test": "aflw/test"}
    r = res["runs"][0]
    assert r["n_train"] + r["n_val"] == r["n_fit"] == 300 and r["n_test"] == 120
    assert r["metrics"]["mae_mean_deg"] < 1.0
    with pytest.raises(FileNotFoundError, match="aflw"):
        run_all("pose", tmp_path, entry={**entry, "train": {"dataset": "aflw", "split": "train"}})


def test_pose_angle_order_yaw_only_feature(tmp_path):
    """A feature that encodes only yaw: low yaw MAE, pitch/roll MAE at the feature-free baseline."""
    make_pose(tmp_path, "yaw")
    r = run("pose", tmp_path)
    pa = r["per_angle"]
    assert pa["yaw"]["mae_deg"] < 0.1 * pa["yaw"]["baseline_median_mae_deg"]
    for a in ("pitch", "roll"):
        assert pa[a]["mae_deg"] > 0.85 * pa[a]["baseline_median_mae_deg"]
    # baselines of uniform angles: E|U(-h, h)| = h / 2
    assert pa["yaw"]["baseline_median_mae_deg"] == pytest.approx(30, rel=0.2)
    assert pa["pitch"]["baseline_median_mae_deg"] == pytest.approx(15, rel=0.2)
    assert pa["roll"]["baseline_median_mae_deg"] == pytest.approx(10, rel=0.2)


def test_pose_swapped_angle_order_is_caught(tmp_path):
    """The same yaw-only features with yaw and pitch swapped in the labels (the authors' log naming):
    the checks of the test above fail -- "yaw" is now at its baseline and "pitch" is the one
    predicted -- so a swapped order cannot pass unnoticed."""
    make_pose(tmp_path, "yaw", swap_yaw_pitch=True)
    pa = run("pose", tmp_path)["per_angle"]
    assert not pa["yaw"]["mae_deg"] < 0.1 * pa["yaw"]["baseline_median_mae_deg"]
    assert pa["yaw"]["mae_deg"] > 0.85 * pa["yaw"]["baseline_median_mae_deg"]
    assert pa["pitch"]["mae_deg"] < 0.1 * pa["pitch"]["baseline_median_mae_deg"]
    assert pa["yaw"]["baseline_median_mae_deg"] == pytest.approx(15, rel=0.2)  # the pitch range


# ---------------------------------------------------------------------------------------------------
# registry and result files

def test_registry_and_result_files(tmp_path):
    assert TASKS.names() == ["au", "expression", "pose", "verification"]
    res = {"task": "au", "method": "pcl", "metrics": {"mean_f1_pct": float("nan"), "x": np.float32(1.5)},
           "per_fold": (1, 2)}
    p = save_result(res, tmp_path / "pcl" / "au.json")
    (tmp_path / "pcl" / "run.json").write_text('{"stage": "probe"}')  # provenance, not a result
    (tmp_path / "pcl" / "x.run.json").write_text('{"stage": "extract"}')
    assert not list((tmp_path / "pcl").glob(".*tmp"))
    loaded = load_results(tmp_path)
    assert loaded == [{"task": "au", "method": "pcl", "metrics": {"mean_f1_pct": None, "x": 1.5},
                       "per_fold": [1, 2], "source": "pcl/au.json"}]
    assert math.isclose(json.loads(p.read_text())["metrics"]["x"], 1.5)
    (tmp_path / "pcl" / "synth_pose.json").write_text('{"metrics": {}}')
    with pytest.raises(ValueError, match="synth_pose.json: not a probe result"):
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
    from pclbench.core.config import from_dict
    from pclbench.evaluate.linear import ProbeConfig, TrainConfig, fit_probe

    x, y = _onehot_data(240)
    xt, yt = _onehot_data(200, seed=1)
    probe = from_dict(ProbeConfig, {**CONFIG["probe"], **probe_over}, "probe")
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
    from pclbench.core.config import from_dict
    from pclbench.evaluate.linear import TrainConfig

    with pytest.raises(ConfigError, match="tasks.au.train: optimizer lbfgs"):
        from_dict(TrainConfig, {**TRAIN, "lr_schedule": "cosine"}, "t").check("tasks.au.train")
    with pytest.raises(ConfigError, match="lbfgs"):
        from_dict(TrainConfig, {**TRAIN, "batch_size": 32}, "t").check("tasks.au.train")


def test_selection_never_reads_the_test_set():
    """The selected setting and every validation score are the same whatever the test features."""
    from pclbench.core.config import from_dict
    from pclbench.evaluate.linear import ProbeConfig, TrainConfig, fit_probe

    x, y = _onehot_data(240)
    runs = []
    for xt in (np.zeros((50, 24), np.float32), np.random.default_rng(9).normal(size=(50, 24)).astype(np.float32)):
        for refit in ("train_val", "train_only"):
            probe = from_dict(ProbeConfig, {**CONFIG["probe"], "refit": refit}, "probe")
            out = fit_probe(x, y, xt, loss="ce", out_dim=7, probe=probe, train=from_dict(TrainConfig, TRAIN, "t"),
                            score=lambda o, t: float((o.argmax(1) == t).mean()), higher_is_better=True, seed=0)
            runs.append((out.selected, out.grid))
    assert all(r == runs[0] for r in runs)

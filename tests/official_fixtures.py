"""Tiny datasets written in the EXACT official release formats, for the parser tests.

Each ``write_<dataset>(root)`` writes a few images plus the label files as the release ships them and
returns what the test needs to compute its expectations by hand. Layouts and formats follow the
parsers' docstrings (which cite what they rely on); the values are chosen so every label mapping,
fold rule, drop rule and sign convention is exercised at least once.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, value: int, size: tuple[int, int] = (16, 12), fmt: str | None = None) -> None:
    """A flat-grey RGB image of ``size`` (w, h) with grey level ``value`` (identifies the image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path, format=fmt)


# ---------------------------------------------------------------------------------------------- RAF-DB

def write_raf_db(root: Path, with_aligned: bool = True) -> dict:
    """basic/EmoLabel/list_patition_label.txt + basic/Image/{aligned,original}/."""
    labels = [("train_00001.jpg", 1), ("train_00002.jpg", 7), ("train_00003.jpg", 4), ("test_0001.jpg", 5),
              ("test_0002.jpg", 2)]
    base = root / "basic"
    (base / "EmoLabel").mkdir(parents=True)
    (base / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {k}\n" for n, k in labels))
    for i, (n, _) in enumerate(labels):
        stem = n[:-4]
        write_image(base / "Image" / "original" / n, 10 + i)
        if with_aligned:
            write_image(base / "Image" / "aligned" / f"{stem}_aligned.jpg", 100 + i, size=(100, 100))
    return {"labels": labels}


# ---------------------------------------------------------------------------------------------- AffectNet

AFFECTNET_HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,"
                    "valence,arousal")


def affectnet_landmarks(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(10, 200, size=(68, 2)), 2)


def write_affectnet(root: Path) -> dict:
    """Manually_Annotated_file_lists/{training,validation}.csv + Manually_Annotated_Images/<sub>/<file>.

    training.csv: one image per AffectNet label 0-10; validation.csv without a header row (as in
    some copies), labels 3 and 7, one with an empty landmark field.
    """
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    train, val = [], []
    for label in range(11):
        rel = f"{label + 1}/img_{label:02d}.jpg"
        lm = affectnet_landmarks(label)
        train.append((rel, label, lm))
    val.append(("20/v_a.JPG", 3, affectnet_landmarks(100)))
    val.append(("20/v_b.jpg", 7, None))
    for rel, label, _ in train + val:
        write_image(root / "Manually_Annotated_Images" / rel, 20 + label, fmt="JPEG")

    def line(rel, label, lm):
        lm_text = "" if lm is None else ";".join(f"{v:.2f}" for v in lm.reshape(-1))
        return f'{rel},5,6,200,210,"{lm_text}",{label},0.1,-0.2\n' if lm is None else \
            f"{rel},5,6,200,210,{lm_text},{label},0.1,-0.2\n"

    (lists / "training.csv").write_text(AFFECTNET_HEADER + "\n" + "".join(line(*r) for r in train))
    (lists / "validation.csv").write_text("".join(line(*r) for r in val))
    return {"train": train, "val": val}


# ---------------------------------------------------------------------------------------------- FER2013

def write_fer2013(root: Path) -> dict:
    """fer2013.csv with header emotion,pixels,Usage; each row's 48x48 image is a distinct gradient."""
    rows = [(0, "Training"), (5, "Training"), (6, "PublicTest"), (1, "PrivateTest"), (3, "PrivateTest")]
    images = []
    lines = ["emotion,pixels,Usage"]
    for k, (emotion, usage) in enumerate(rows):
        img = ((np.arange(48 * 48).reshape(48, 48) * (k + 1)) % 256).astype(np.uint8)
        images.append(img)
        lines.append(f"{emotion},{' '.join(str(int(v)) for v in img.reshape(-1))},{usage}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "fer2013.csv").write_text("\n".join(lines) + "\n")
    return {"rows": rows, "images": images}


# ---------------------------------------------------------------------------------------------- LFW

def write_lfw(root: Path, pairs_in_downloads: bool = True) -> dict:
    """lfw/<Name>/<Name>_NNNN.jpg + pairs.txt ('2\\t2' header; per set 2 matched, 2 mismatched)."""
    people = {"Ann_A": 3, "Bob_B": 2, "Cid_C": 1, "Dee_D": 2, "Eve_E": 1, "Fay_F": 1}
    for name, n in people.items():
        for i in range(1, n + 1):
            write_image(root / "lfw" / name / f"{name}_{i:04d}.jpg", 30 + i, fmt="JPEG")
    text = ("2\t2\n"
            "Ann_A\t1\t2\nBob_B\t1\t2\n"
            "Ann_A\t3\tCid_C\t1\nBob_B\t2\tCid_C\t1\n"
            "Dee_D\t1\t2\nDee_D\t2\t1\n"
            "Eve_E\t1\tFay_F\t1\nDee_D\t1\tEve_E\t1\n")
    pairs_path = root / ("downloads" if pairs_in_downloads else "") / "pairs.txt"
    pairs_path.parent.mkdir(parents=True, exist_ok=True)
    pairs_path.write_text(text)
    return {"pairs_path": pairs_path}


# ---------------------------------------------------------------------------------------------- CPLFW

def write_cplfw(root: Path) -> dict:
    """images/<Name>_<k>.jpg + pairs_CPLFW.txt (two consecutive lines per pair, label 1/0 on both).

    20 pairs = 10 folds of 2: per fold one same pair then one different pair.
    """
    pairs = []
    for fold in range(10):
        a = f"P{fold}_Alpha"
        pairs.append((f"{a}_1.jpg", f"{a}_2.jpg", 1))
        pairs.append((f"{a}_1.jpg", f"Q{fold}_Beta_1.jpg", 0))
    names = sorted({n for p in pairs for n in p[:2]})
    for i, n in enumerate(names):
        write_image(root / "images" / n, i, fmt="JPEG")
    (root / "pairs_CPLFW.txt").write_text("".join(f"{a} {s}\n{b} {s}\n" for a, b, s in pairs))
    return {"pairs": pairs, "names": names}


# ---------------------------------------------------------------------------------------------- DISFA

DISFA_AUS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)


def disfa_intensity(subject_no: int, frame: int, au: int) -> int:
    return (subject_no + frame + au) % 6


def write_disfa_video(path: Path, n_frames: int, size: tuple[int, int] = (32, 24)) -> None:
    """Left-camera-like AVI (MJPEG) whose frame k (1-based) is flat grey 40 * k."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=20)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuvj420p"
        for k in range(1, n_frames + 1):
            arr = np.full((size[1], size[0], 3), 40 * k, np.uint8)
            for pkt in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def write_disfa(root: Path) -> dict:
    """ActionUnit_Labels/SNxxx/SNxxx_auK.txt ('frame,intensity', 1-based) for SN001 (video) and SN013
    (pre-extracted frames). SN001's au1 file codes one extra frame (5) that the others lack."""
    frames = {"SN001": [1, 2, 3, 4], "SN013": [1, 2, 3]}
    for subject, fr in frames.items():
        no = int(subject[2:])
        d = root / "ActionUnit_Labels" / subject
        d.mkdir(parents=True)
        for au in DISFA_AUS:
            extra = [5] if (subject == "SN001" and au == 1) else []
            (d / f"{subject}_au{au}.txt").write_text(
                "".join(f"{f},{disfa_intensity(no, f, au)}\n" for f in fr + extra))
    write_disfa_video(root / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi", 4)
    for f in frames["SN013"]:
        write_image(root / "Frames_LeftCamera" / "SN013" / f"{f}.png", 7 * f, fmt="PNG")
    return {"frames": frames}


# ---------------------------------------------------------------------------------------------- BP4D

BP4D_HEADER_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 27, 28)
BP4D_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)


def bp4d_code(frame: int, au: int) -> int:
    return (frame * au) % 2


def write_bp4d(root: Path) -> dict:
    """AUCoding/AU_OCC/<subj>_<task>.csv (header '0,<AU numbers>', first column = frame, codes 0/1/9)
    and BP4D-training/<subj>/<task>/<frame>.jpg. Frame 3 of F001_T1 has a 9 in AU7 (dropped);
    frame 4 of F001_T1 has no image (dropped); M011_T2 is a second subject in fold 1."""
    seqs = {("F001", "T1"): [1, 2, 3, 4], ("M011", "T2"): [10, 11]}
    d = root / "AUCoding" / "AU_OCC"
    d.mkdir(parents=True)
    for (subj, task), frames in seqs.items():
        lines = ["0," + ",".join(str(a) for a in BP4D_HEADER_AUS)]
        for f in frames:
            codes = [bp4d_code(f, a) for a in BP4D_HEADER_AUS]
            if (subj, f) == ("F001", 3):
                codes[BP4D_HEADER_AUS.index(7)] = 9
            lines.append(f"{f}," + ",".join(str(c) for c in codes))
            if (subj, f) != ("F001", 4):
                write_image(root / "BP4D-training" / subj / task / f"{f:04d}.jpg", 5 * f, fmt="JPEG")
        (d / f"{subj}_{task}.csv").write_text("\n".join(lines) + "\n")
    return {"seqs": seqs}


# ---------------------------------------------------------------------------------------------- 3DDFA head pose

def face_template() -> np.ndarray:
    """(68, 3) crude 3D face in 3DDFA model axes (x to the image right, y up, z towards the camera):
    iBUG eyes 36-41 on the image left, 42-47 on the image right, nose tip 30 in front, mouth corners."""
    pts = np.zeros((68, 3))
    ang = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    pts[:, 0], pts[:, 1] = 45 * np.cos(ang), 55 * np.sin(ang) - 10  # an outline; overwritten below
    for i, j in enumerate(range(36, 42)):
        pts[j] = (-30 + 6 * math.cos(i), 30 + 3 * math.sin(i), 0)
    for i, j in enumerate(range(42, 48)):
        pts[j] = (30 + 6 * math.cos(i), 30 + 3 * math.sin(i), 0)
    pts[30] = (0, 0, 40)
    pts[48], pts[54] = (-22, -30, 8), (22, -30, 8)
    return pts


def rotation_3ddfa(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """3DDFA's RotationMatrix(phi, gamma, theta) = Rx Ry Rz (radians)."""
    cx, sx, cy, sy, cz, sz = (math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw), math.cos(roll),
                              math.sin(roll))
    rx = np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def project_3ddfa(pose_para: np.ndarray, height: int = 120) -> np.ndarray:
    """Matlab-style projection f R S + t, image y = height + 1 - y -> (3, 68) (x, y, z), 1-based."""
    pitch, yaw, roll, tx, ty, tz, f = pose_para
    v = f * rotation_3ddfa(pitch, yaw, roll) @ face_template().T + np.array([[tx], [ty], [tz]])
    v[1] = height + 1 - v[1]
    return v


#: (name, Pose_Para radians: pitch, yaw, roll, tx, ty, tz, f)
POSES_300WLP = [
    ("AFW/AFW_1051618982_1_0", (0.05, 0.70, 0.02, 60, 60, 0, 0.5)),   # turned to the image left
    ("AFW/AFW_1051618982_1_1", (-0.10, -0.80, 0.05, 60, 60, 0, 0.5)),  # turned to the image right
    ("AFW_Flip/AFW_1051618982_1_0", (0.05, -0.70, -0.02, 60, 60, 0, 0.5)),
    ("HELEN/HELEN_232194_1_0", (0.30, 0.10, 0.45, 60, 60, 0, 0.5)),    # rolled
    ("IBUG/IBUG_image_003_1_0", (0.10, 1.90, 0.00, 60, 60, 0, 0.5)),   # yaw 108.9 deg -> dropped
]
POSES_AFLW = [
    ("image00002", (-0.20, 0.60, -0.50, 60, 60, 0, 0.5)),
    ("image00004", (0.15, -0.10, 0.10, 60, 60, 0, 0.5)),
    ("image00006", (1.80, 0.00, 0.00, 60, 60, 0, 0.5)),  # pitch 103.1 deg -> dropped
    ("image00008", (0.00, 0.00, -1.74, 60, 60, 0, 0.5)),  # roll -99.7 deg -> dropped
]


def write_300w_lp(root: Path) -> dict:
    """300W_LP/<subset>/<name>.jpg + .mat (Pose_Para (1, 7), pt2d (2, 68)) and each unflipped view's own
    points in 300W_LP/landmarks/<subset>/<name>_pts.mat (pts_2d, pts_3d: (68, 2), 1-based).

    As in the release (cleardusk/3DDFA issue #192; tensorflow/datasets the300w_lp builder, which calls
    it ``landmarks_origin``), the image ``.mat``'s ``pt2d`` is the SOURCE photo's points, identical for
    every profiled view ``<photo>_<k>`` of one photo; here the source is the ``_0`` view of the photo.
    ``landmarks/`` has no ``_Flip`` folders (TFDS builder, merlresearch/LUVLi organize_300W_LP.py).
    Returns the poses and each unflipped view's own (68, 2) 1-based points.
    """
    from scipy.io import savemat

    own: dict[str, np.ndarray] = {}
    source: dict[str, np.ndarray] = {}  # "<subset>/<photo>" -> the source photo's (2, 68) pt2d
    for name, para in POSES_300WLP:
        photo = name.rsplit("_", 1)[0]
        v = project_3ddfa(np.array(para, dtype=np.float32).astype(np.float64))
        source.setdefault(photo, v[:2])  # the first view listed per photo is its _0 view
    for name, para in POSES_300WLP:
        p = root / "300W_LP" / f"{name}.jpg"
        write_image(p, 90, size=(120, 120), fmt="JPEG")
        v = project_3ddfa(np.array(para, dtype=np.float32).astype(np.float64))
        savemat(p.with_suffix(".mat"), {"Pose_Para": np.array([para], dtype=np.float32),
                                        "pt2d": source[name.rsplit("_", 1)[0]], "Shape_Para": np.zeros((199, 1)),
                                        "Exp_Para": np.zeros((29, 1))})
        if "_Flip/" not in name:
            own[name] = v[:2].T.copy()  # (68, 2)
            f = root / "300W_LP" / "landmarks" / f"{name}_pts.mat"
            f.parent.mkdir(parents=True, exist_ok=True)
            savemat(f, {"pts_2d": own[name], "pts_3d": own[name]})
    return {"poses": POSES_300WLP, "own_points": own}


def write_aflw2000(root: Path) -> dict:
    """AFLW2000/image*.jpg + .mat with Pose_Para (1, 7), pt3d_68 (3, 68) and AFLW's 21-point pt2d."""
    from scipy.io import savemat

    for name, para in POSES_AFLW:
        p = root / "AFLW2000" / f"{name}.jpg"
        write_image(p, 70, size=(120, 120), fmt="JPEG")
        v = project_3ddfa(np.array(para, dtype=np.float64))
        savemat(p.with_suffix(".mat"), {"Pose_Para": np.array([para], dtype=np.float32), "pt3d_68": v,
                                        "pt2d": -np.ones((2, 21))})
    return {"poses": POSES_AFLW}

"""SynthFaces renderer: a parametric 3D head with FACS action units, rendered by a numpy z-buffer.

This is the image model behind :mod:`pclbench.data.synth`. A face is a closed triangle mesh over a
(u, v) parameter grid (u = azimuth around the vertical axis, v = elevation, both in radians, seen
from a centre inside the head). Each grid point is pushed out along its ray to the surface of a
smooth union of ellipsoids (cranium, mid-face, jaw, chin: the identity's 3D head proportions), plus
radial relief (nose, brow ridge, eye sockets and eyeballs, cheekbones, lips, chin, ears, hair volume)
and plus the 3D displacement fields of the action units. The mesh is rasterised with a vectorised
z-buffer (so the far side of the face is occluded by the near side, the nose hides the far cheek),
shaded with Lambert + ambient + a little Blinn-Phong specular in linear RGB, and textured
procedurally in the same (u, v) parameters (skin, sclera/iris/pupil, lids and lashes, brows, lips,
teeth, nostrils, hair, beard, expression wrinkles). The 68 landmarks are 3D points on the same
surface, moved by the same AU fields, projected by the same camera (all 68 are given even when
self-occluded, as in 300W-LP / AFLW2000-3D).

Conventions (every module relies on them)
-----------------------------------------
* Head frame, units of about 10 cm: x points to the *image right* of a frontal face (= the subject's
  left), y up, z out of the face towards the camera. The eye line is at y = 0.
* Image: x right, y down; landmark ``(x, y)`` is in pixels with ``(0, 0)`` the *centre* of the
  top-left pixel (0-based pixel centres, the convention of :mod:`pclbench.align.landmarks`).
* Head pose in degrees, order (yaw, pitch, roll); a head-frame point p goes to the camera frame as
  ``R @ p`` with ``R = Rz(roll) @ Ry(-yaw) @ Rx(-pitch)`` (right-handed elementary rotations), i.e.

  - yaw > 0: the face turns towards the *image left* (the subject turns to their right);
  - pitch > 0: the face looks up;
  - roll > 0: the head tilts counter-clockwise in the image (the top of the head moves left).

* Horizontal flip: the identity geometry and every AU field are left-right symmetric, so the
  mirror image of a face at (yaw, pitch, roll) under a scene is the face at (-yaw, pitch, -roll)
  under the mirrored scene (:meth:`Scene.mirrored`: light x component, face offset and background
  mirrored). Landmarks map by ``x -> W - 1 - x`` and the index permutation
  :data:`IBUG68_FLIP_PERMUTATION`.
* Action units are FACS intensities on the 0-5 scale (occurrence = intensity >= 2, the DISFA
  convention). The rendered set is :data:`AU_NAMES`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np

# --------------------------------------------------------------------------------------------------
# Label vocabularies
# --------------------------------------------------------------------------------------------------

#: Action units the renderer deforms the face with (FACS numbers), in manifest column order.
AU_NAMES: tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU12", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26",
)

#: Expression labels, 0-based in RAF-DB order (docs/architecture.md, Stage 1).
EXPRESSIONS: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")

#: EMFACS-style prototypes restricted to the rendered AUs: expression -> (core AUs, optional AUs).
#: Core AUs are always active in an instance of the expression, optional ones with probability 1/2.
#: Surprise and fear list AU25 with AU26 because a dropped jaw parts the lips in this face model.
PROTOTYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "surprise": (("AU1", "AU2", "AU5", "AU25", "AU26"), ()),
    "fear": (("AU1", "AU2", "AU4", "AU5", "AU20", "AU25", "AU26"), ("AU7",)),
    "disgust": (("AU9", "AU15"), ("AU17", "AU25")),
    "happiness": (("AU6", "AU12"), ("AU25",)),
    "sadness": (("AU1", "AU4", "AU15"), ("AU17",)),
    "anger": (("AU4", "AU5", "AU7", "AU23"), ("AU17",)),
    "neutral": ((), ()),
}

#: iBUG-68 index permutation of a horizontal flip: ``lm_flipped = mirror_x(lm)[IBUG68_FLIP_PERMUTATION]``.
IBUG68_FLIP_PERMUTATION: np.ndarray = np.array(
    [16 - i for i in range(17)]                                 # jaw 0..16
    + [26 - i for i in range(10)]                               # brows 17..26
    + [27, 28, 29, 30, 35, 34, 33, 32, 31]                      # nose bridge, nose base
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]          # eyes 36..47
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]          # outer lips 48..59
    + [64, 63, 62, 61, 60, 67, 66, 65],                         # inner lips 60..67
    dtype=np.int64,
)
IBUG68_FLIP_PERMUTATION.setflags(write=False)

# --------------------------------------------------------------------------------------------------
# Fixed face-model constants (anatomy of the model, not experiment hyperparameters)
# --------------------------------------------------------------------------------------------------

_ORIGIN = np.array([0.0, -0.25, 0.0])  # ray centre inside the head (between ears, below the eye line)
_ANCHOR = np.array([0.0, -0.2, 0.3])  # head-frame point placed at the face centre of the frame
_FACE_HEIGHT = 1.55  # nominal brow-to-chin height (units): Scene.scale is this height / frame size
_CAMERA_DISTANCE = 10.0  # ~1 m perspective camera (units from the anchor)
_BAND_DV = 0.004  # rest width (radians of v) of the lip seam that opens into the mouth
_GAMMA = 2.2

# Per-AU displacement amplitudes (units at intensity 5).
_JAW_DROP = 0.26
_LIPS_PART = 0.05
_UPPER_LIP_UP = 0.015


def _ss(e0, e1, x):
    """Smoothstep from e0 to e1 (either order)."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _g(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _g2(x, y, cx, cy, sx, sy):
    """Symmetric pair of Gaussians at (+-cx, cy): smooth across the midline."""
    return _g(x, y, cx, cy, sx, sy) + _g(x, y, -cx, cy, sx, sy)


def _g2odd(x, y, cx, cy, sx, sy):
    """Antisymmetric pair (+ at +cx, - at -cx): for lateral (x) displacements."""
    return _g(x, y, cx, cy, sx, sy) - _g(x, y, -cx, cy, sx, sy)


def _to_lin(c):
    return np.asarray(c, dtype=np.float64) ** _GAMMA


# --------------------------------------------------------------------------------------------------
# Identity and scene
# --------------------------------------------------------------------------------------------------

_SKIN_ANCHORS = np.array([
    [0.97, 0.82, 0.72], [0.92, 0.74, 0.61], [0.84, 0.63, 0.48],
    [0.70, 0.50, 0.36], [0.52, 0.35, 0.24], [0.34, 0.22, 0.15],
])
_HAIR_COLOURS = np.array([
    [0.05, 0.045, 0.04], [0.16, 0.10, 0.06], [0.33, 0.21, 0.12], [0.72, 0.57, 0.36],
    [0.55, 0.24, 0.11], [0.55, 0.54, 0.52], [0.85, 0.84, 0.80],
])
_HAIR_P = np.array([0.30, 0.25, 0.17, 0.12, 0.06, 0.06, 0.04])
_IRIS_COLOURS = np.array([
    [0.30, 0.17, 0.08], [0.13, 0.08, 0.05], [0.32, 0.48, 0.66], [0.33, 0.47, 0.28],
    [0.47, 0.36, 0.18], [0.46, 0.51, 0.56],
])
_HAIR_STYLES = ("short", "medium", "long", "bald")


@dataclass(frozen=True)
class Identity:
    """Everything that makes one synthetic person (left-right symmetric). Lengths in head units."""

    # head volume (smooth union of ellipsoids)
    cranium: tuple[float, float, float]   # half width, half height, half depth of the cranium
    face_w: float                          # half width of the mid-face (cheeks)
    jaw_w: float                           # half width of the jaw
    jaw_h: float                           # half height of the jaw ellipsoid
    chin_w: float                          # half width of the chin
    chin_y: float                          # y of the chin bottom
    chin_z: float                          # forward position of the chin
    # eyes
    eye_x: float
    eye_y: float
    eye_w: float                           # half width (canthus to centre)
    eye_up: float                          # upper lid height above the eye centre
    eye_lo: float                          # lower lid depth below the eye centre
    eye_tilt: float                        # canthal tilt (outer corner up if > 0)
    iris_r: float
    iris_rgb: tuple[float, float, float]
    # brows
    brow_gap: float                        # brow centre height above the eye centre
    brow_th: float
    brow_arch: float
    brow_rgb: tuple[float, float, float]
    brow_ridge: float
    # nose
    nose_prot: float
    nose_tip_y: float
    nose_bridge_w: float
    nose_tip_w: float
    ala_w: float
    # mouth
    mouth_y: float
    mouth_w: float                         # half width
    lip_up: float
    lip_lo: float
    lip_rgb: tuple[float, float, float]
    # cheeks, ears
    cheek: float
    ear: float
    # colours and hair
    skin_rgb: tuple[float, float, float]
    hair_rgb: tuple[float, float, float]
    hair_style: str
    hairline: float                        # fy of the frontal hairline
    hair_thick: float
    hair_len: float                        # y of the tips of long hair
    beard: float                           # beard density 0 (none) .. 1 (full)
    neck_w: float

    @property
    def band(self) -> tuple[float, float]:
        """(v_top, v_bot): the lip-seam rows of the grid; the mouth opens between them."""
        v_top = math.asin(self.mouth_y - _ORIGIN[1])
        return v_top, v_top - _BAND_DV


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity: head proportions, features, skin tone, iris, hair colour/style."""
    u = rng.uniform
    t = u(0.0, 1.0) * (len(_SKIN_ANCHORS) - 1)
    i0 = int(min(t, len(_SKIN_ANCHORS) - 2))
    skin = (1 - (t - i0)) * _SKIN_ANCHORS[i0] + (t - i0) * _SKIN_ANCHORS[i0 + 1]
    skin = np.clip(skin * u(0.95, 1.05) + rng.normal(0, 0.015, 3), 0.05, 1.0)
    hair = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=_HAIR_P)] * u(0.85, 1.15)
    hair = np.clip(hair + rng.normal(0, 0.015, 3), 0.02, 0.95)
    brow = np.clip(np.minimum(hair * 0.8, skin * 0.45) + 0.02, 0.02, 0.9)
    iris = np.clip(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * u(0.85, 1.15), 0.02, 0.9)
    lip = np.clip(skin * np.array([0.88, 0.62, 0.62]) * u(0.85, 1.0) + np.array([0.06, 0.0, 0.01]), 0.03, 1.0)
    style = _HAIR_STYLES[rng.choice(4, p=[0.45, 0.25, 0.2, 0.1])]
    mouth_w = u(0.22, 0.28)
    return Identity(
        cranium=(u(0.74, 0.80), u(0.90, 0.97), u(0.94, 1.02)),
        face_w=u(0.64, 0.72), jaw_w=u(0.56, 0.68), jaw_h=u(0.42, 0.52), chin_w=u(0.20, 0.30),
        chin_y=u(-1.20, -1.08), chin_z=u(0.44, 0.52),
        eye_x=u(0.29, 0.34), eye_y=u(-0.02, 0.02), eye_w=u(0.135, 0.16), eye_up=u(0.05, 0.065),
        eye_lo=u(0.035, 0.045), eye_tilt=u(-0.03, 0.10), iris_r=u(0.058, 0.066),
        iris_rgb=tuple(iris),
        brow_gap=u(0.15, 0.20), brow_th=u(0.028, 0.045), brow_arch=u(0.01, 0.04), brow_rgb=tuple(brow),
        brow_ridge=u(0.02, 0.06),
        nose_prot=u(0.16, 0.24), nose_tip_y=u(-0.46, -0.38), nose_bridge_w=u(0.06, 0.08),
        nose_tip_w=u(0.10, 0.13), ala_w=u(0.12, 0.16),
        mouth_y=u(-0.74, -0.68), mouth_w=mouth_w, lip_up=u(0.045, 0.075), lip_lo=u(0.06, 0.09),
        lip_rgb=tuple(lip),
        cheek=u(0.0, 0.06), ear=u(0.10, 0.16),
        skin_rgb=tuple(skin), hair_rgb=tuple(hair), hair_style=style,
        hairline=u(0.42, 0.62), hair_thick=u(0.05, 0.15), hair_len=u(-2.2, -1.4),
        beard=float(u(0.3, 1.0)) if rng.uniform() < 0.15 else 0.0,
        neck_w=u(0.42, 0.50),
    )


@dataclass(frozen=True)
class Scene:
    """Everything of one shot that is not the person: framing, lighting, background, clothes, noise."""

    scale: float                            # nominal face height / frame size (0.4..0.6 typical)
    offset: tuple[float, float]             # face centre offset from the frame centre, fraction of size
    light_dir: tuple[float, float, float]   # unit vector towards the light, camera frame
    light_rgb: tuple[float, float, float]   # directional light colour * intensity (linear)
    ambient_rgb: tuple[float, float, float]  # ambient light (linear)
    bg_kind: int                             # 0 gradient, 1 value noise, 2 soft blobs
    bg_rgb: tuple[tuple[float, float, float], tuple[float, float, float]]  # two background colours (sRGB)
    bg_angle: float                          # gradient direction, radians
    bg_seed: int                             # seeds the background texture
    cloth_rgb: tuple[float, float, float]
    noise_std: float                         # sensor noise, uint8 levels
    noise_seed: int
    mirror: bool = False                     # background and noise mirrored (see :meth:`mirrored`)

    def mirrored(self) -> "Scene":
        """The horizontally mirrored scene (light, face offset, background, noise)."""
        lx, ly, lz = self.light_dir
        return replace(self, offset=(-self.offset[0], self.offset[1]), light_dir=(-lx, ly, lz), mirror=not self.mirror)


def sample_scene(rng: np.random.Generator, scale_range: tuple[float, float], center_jitter: float) -> Scene:
    """Draw framing (scale, offset), a directional + ambient light, a background and clothes."""
    az = rng.uniform(-1.2, 1.2)
    el = rng.uniform(-0.15, 1.0)
    light = (math.sin(az) * math.cos(el), math.sin(el), math.cos(az) * math.cos(el))
    warm = rng.uniform(-1.0, 1.0)
    tint = np.array([1.0 + 0.12 * warm, 1.0, 1.0 - 0.15 * warm])
    intensity = rng.uniform(0.75, 1.15)
    amb = rng.uniform(0.18, 0.38) * np.array([1.0 - 0.05 * warm, 1.0, 1.0 + 0.08 * warm])
    c1 = rng.uniform(0.05, 0.95, 3)
    c2 = np.clip(c1 + rng.normal(0, 0.25, 3), 0.0, 1.0)
    cloth = rng.uniform(0.05, 0.85, 3)
    return Scene(
        scale=float(rng.uniform(*scale_range)),
        offset=(float(rng.uniform(-center_jitter, center_jitter)), float(rng.uniform(-center_jitter, center_jitter))),
        light_dir=tuple(float(x) for x in light),
        light_rgb=tuple(float(x) for x in tint * intensity),
        ambient_rgb=tuple(float(x) for x in amb),
        bg_kind=int(rng.integers(3)),
        bg_rgb=(tuple(float(x) for x in c1), tuple(float(x) for x in c2)),
        bg_angle=float(rng.uniform(0, 2 * math.pi)),
        bg_seed=int(rng.integers(2**31)),
        cloth_rgb=tuple(float(x) for x in cloth),
        noise_std=float(rng.uniform(0.0, 3.0)),
        noise_seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------------------------------
# Geometry: the head surface r(u, v) and its (u, v) grid
# --------------------------------------------------------------------------------------------------


def _ray_dirs(u, v):
    cv = np.cos(v)
    return np.stack([cv * np.sin(u), np.sin(v), cv * np.cos(u)], axis=-1)  # (..., 3)


def _face_xy(u, v):
    """Face-plane coordinates (fx, fy): the frontal position on the unit sphere around the ray centre.

    Facial features are laid out in (fx, fy) so that they look as designed in a frontal view; fy only
    depends on v, so the lip seam (constant fy) is a grid row.
    """
    return np.cos(v) * np.sin(u), _ORIGIN[1] + np.sin(v)


def _ellipsoid_sdf(p, c, r):
    """Approximate signed distance to an axis-aligned ellipsoid (Quilez's bound)."""
    q = (p - c) / r
    k0 = np.sqrt(np.einsum("...i,...i->...", q, q))
    q = q / r
    k1 = np.sqrt(np.einsum("...i,...i->...", q, q))
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def _smin(a, b, k):
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _head_sdf(p, idt: Identity):
    cw, ch, cd = idt.cranium
    d = _ellipsoid_sdf(p, np.array([0.0, 0.25, -0.12]), np.array([cw, ch, cd]))
    d = _smin(d, _ellipsoid_sdf(p, np.array([0.0, -0.22, 0.10]), np.array([idt.face_w, 0.62, 0.84])), 0.15)
    jaw_c = np.array([0.0, idt.chin_y + idt.jaw_h + 0.08, 0.02])
    d = _smin(d, _ellipsoid_sdf(p, jaw_c, np.array([idt.jaw_w, idt.jaw_h + 0.06, 0.78])), 0.15)
    chin_c = np.array([0.0, idt.chin_y + 0.16, idt.chin_z])
    d = _smin(d, _ellipsoid_sdf(p, chin_c, np.array([idt.chin_w, 0.17, 0.30])), 0.18)
    return d


def _base_radius(u, v, idt: Identity, iters: int = 12):
    """Distance from the ray centre to the head volume along each (u, v) ray.

    Bisection on [0.05, 2] (the ray centre is inside, 2 units is outside every head) and a final
    secant step between the bracketing values.
    """
    d = _ray_dirs(u, v)
    lo = np.full(np.shape(u), 0.05)
    hi = np.full(np.shape(u), 2.0)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        inside = _head_sdf(_ORIGIN + d * mid[..., None], idt) < 0
        lo = np.where(inside, mid, lo)
        hi = np.where(inside, hi, mid)
    f_lo = _head_sdf(_ORIGIN + d * lo[..., None], idt)
    f_hi = _head_sdf(_ORIGIN + d * hi[..., None], idt)
    return lo + (hi - lo) * np.clip(f_lo / np.minimum(f_lo - f_hi, -1e-12), 0.0, 1.0)


def _hair_boundary(au, idt: Identity):
    """fy of the lower edge of the scalp hair as a function of |u| (hairline, temples, nape)."""
    hl = idt.hairline
    if idt.hair_style == "short":
        xs = [0.0, 0.45, 0.95, 1.22, 1.30, 1.38, 1.45, 1.9, 2.3, math.pi]
        ys = [hl, hl + 0.04, hl - 0.22, 0.20, -0.12, -0.12, 0.22, 0.05, -0.45, -0.62]
    elif idt.hair_style in ("medium", "long"):
        xs = [0.0, 0.45, 0.9, 1.15, 1.45, 2.0, math.pi]
        ys = [hl - 0.05, hl - 0.02, hl - 0.22, 0.05, -0.35, -0.55, -0.72]
    else:  # bald: a horseshoe of short hair on the sides and back
        xs = [0.0, 1.0, 1.22, 1.30, 1.38, 1.45, 1.9, 2.3, math.pi]
        ys = [2.0, 2.0, 0.25, -0.05, -0.05, 0.25, 0.05, -0.4, -0.55]
    return np.interp(au, xs, ys)


def _hair_mask(u, v, idt: Identity, soft: float):
    au = np.abs(u)
    _, fy = _face_xy(u, v)
    edge = _hair_boundary(au, idt)
    if idt.hair_style in ("medium", "long"):
        edge = edge + 0.03 * np.sin(19.0 * au) * _ss(1.0, 0.6, au)  # locks along the fringe
    m = _ss(-soft, soft, fy - edge)
    if idt.hair_style == "bald":
        m = m * (1.0 - _ss(0.35, 0.55, fy + 0.25 * np.cos(au)))  # no hair on the crown
    if idt.hair_style in ("short", "bald"):
        m = m * (1.0 - _ear_mask(u, v, 0.05))
    return m


def _ear_mask(u, v, grow: float = 0.0):
    au = np.abs(u)
    _, fy = _face_xy(u, v)
    q = ((au - 1.62) / (0.16 + grow)) ** 2 + ((fy + 0.18) / (0.30 + grow)) ** 2
    return _ss(1.0, 0.6, q)


def _static_relief(u, v, idt: Identity):
    """Identity relief added to the base radius (nose, brow ridge, sockets, eyes, cheeks, lips, ears)."""
    fx, fy = _face_xy(u, v)
    ax = np.abs(fx)
    front = _ss(0.1, 0.5, np.cos(u))
    r = np.zeros(np.shape(u))
    # nose: a ridge from the nasion to the tip, a round tip, nostril wings, and a steep underside
    fy_n = idt.eye_y + 0.04
    t = (fy_n - fy) / (fy_n - idt.nose_tip_y)  # 0 at the nasion, 1 at the tip
    prof = idt.nose_prot * (0.18 + 0.82 * np.clip(t, 0, 1) ** 1.6)
    prof = prof * _ss(-0.35, 0.05, t) * _ss(1.22, 1.0, t)
    w = idt.nose_bridge_w + (idt.nose_tip_w - idt.nose_bridge_w) * np.clip(t, 0, 1.2) ** 2
    r += prof * np.exp(-1.6 * (fx / w) ** 2)
    r += 0.05 * idt.nose_prot * _g(fx, fy, 0.0, idt.nose_tip_y + 0.01, 0.05, 0.04)
    r += 0.32 * idt.nose_prot * _g2(fx, fy, idt.ala_w * 0.62, idt.nose_tip_y + 0.005, 0.045, 0.045)
    # brow ridge and eye sockets, eyeballs
    r += 0.8 * idt.brow_ridge * _g2(fx, fy, 0.24, idt.eye_y + idt.brow_gap - 0.02, 0.16, 0.055)
    r -= 0.07 * _g2(fx, fy, idt.eye_x, idt.eye_y, 0.14, 0.075)
    ex = (ax - idt.eye_x) / idt.eye_w
    ey = (fy - idt.eye_y) / (0.5 * (idt.eye_up + idt.eye_lo) + 0.02)
    r += 0.045 * np.sqrt(np.clip(1.0 - ex**2 - ey**2, 0.0, 1.0))
    # cheekbones, philtrum, lips, chin
    r += idt.cheek * _g2(fx, fy, 0.40, idt.eye_y - 0.2, 0.14, 0.10)
    my = idt.mouth_y
    lat = np.clip(1.0 - (fx / (idt.mouth_w * 1.1)) ** 2, 0.0, 1.0) ** 0.5
    r += 0.04 * lat * _g(0, fy, 0, my + 0.035, 1, 0.03)
    r += 0.05 * lat * _g(0, fy, 0, my - 0.045, 1, 0.035)
    r -= 0.012 * _g(fx, fy, 0.0, 0.5 * (my + idt.nose_tip_y) - 0.02, 0.025, 0.06)
    r -= 0.018 * _g(fx, fy, 0.0, my - 0.15, 0.16, 0.04)
    r += 0.02 * _g(fx, fy, 0.0, idt.chin_y + 0.17, 0.14, 0.08)
    return r * front


def _grid_axes(idt: Identity, n_face: int):
    """Symmetric u samples (``n_face`` on the face, |u| <= 1.12) and v samples with the lip seam rows."""
    du = 1.12 / (n_face - 1)
    up = np.concatenate([
        np.linspace(0.0, 1.12, n_face), np.linspace(1.12, 2.0, 16)[1:], np.linspace(2.0, math.pi, 9)[1:],
    ])
    u = np.concatenate([-up[::-1], up[1:-1]])  # [-pi, ..., 0, ..., last < pi]; wraps to -pi
    n_v = int(round(1.95 / du)) + 1
    v = np.concatenate([
        np.linspace(-1.50, -1.0, 9), np.linspace(-1.0, 0.95, n_v)[1:], np.linspace(0.95, math.pi / 2, 9)[1:],
    ])
    v_top, v_bot = idt.band
    v = v[(np.abs(v - v_top) > 0.4 * du) & (np.abs(v - v_bot) > 0.4 * du)]
    v = np.sort(np.concatenate([v, [v_top, v_bot]]))
    return u, v


def _grid_triangles(nu: int, nv: int, u: np.ndarray) -> np.ndarray:
    """Quads of the (v, u) grid (u wraps) split along mirror-symmetric diagonals -> (T, 3)."""
    i = np.arange(nu)
    j = np.arange(nv - 1)
    jj, ii = np.meshgrid(j, i, indexing="ij")
    i1 = (ii + 1) % nu
    a = jj * nu + ii
    b = jj * nu + i1
    c = (jj + 1) * nu + i1
    d = (jj + 1) * nu + ii
    u_next = np.where(i1 == 0, u[0] + 2 * math.pi, u[i1])
    right = (0.5 * (u[ii] + u_next)) > 0
    t1 = np.where(right[..., None], np.stack([a, b, c], -1), np.stack([a, b, d], -1))
    t2 = np.where(right[..., None], np.stack([a, c, d], -1), np.stack([b, c, d], -1))
    return np.concatenate([t1.reshape(-1, 3), t2.reshape(-1, 3)])


#: Mesh densities (u samples over the face); a render picks the coarsest giving <= ~1.3 px triangles.
_DENSITIES = (24, 32, 40, 48, 64)


@dataclass
class _StaticHead:
    u: np.ndarray        # (Nv, Nu)
    v: np.ndarray        # (Nv, Nu)
    r: np.ndarray        # (Nv, Nu) radius incl. relief, ears and hair volume
    r_skin: np.ndarray   # (Nv, Nu) the same without hair: landmarks live on the skin
    tris: np.ndarray     # (T, 3)


@functools.lru_cache(maxsize=48)
def _static_head(idt: Identity, n_face: int) -> _StaticHead:
    u1, v1 = _grid_axes(idt, n_face)
    v, u = np.meshgrid(v1, u1, indexing="ij")  # (Nv, Nu)
    r_skin = _base_radius(u, v, idt) + _static_relief(u, v, idt) + _ear_relief(u, v, idt)
    r = r_skin + idt.hair_thick * _hair_mask(u, v, idt, soft=0.07)
    return _StaticHead(u=u, v=v, r=r, r_skin=r_skin, tris=_grid_triangles(len(u1), len(v1), u1))


def _density(pixels: int) -> int:
    """Mesh density for a render of ``pixels`` (size x supersample): triangles of <= ~1.6 px at the
    largest usual face scale (0.6); one density per image size keeps one cached mesh per identity."""
    need = 1.12 * (0.6 * pixels / _FACE_HEIGHT) / 1.6 + 1
    return next((d for d in _DENSITIES if d >= need), _DENSITIES[-1])


def _interp_grid(st: _StaticHead, field: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a (Nv, Nu) grid field at (u, v) (|u| < pi, v inside the grid)."""
    ua, va = st.u[0], st.v[:, 0]
    i = np.clip(np.searchsorted(ua, u) - 1, 0, len(ua) - 2)
    j = np.clip(np.searchsorted(va, v) - 1, 0, len(va) - 2)
    tu = (u - ua[i]) / (ua[i + 1] - ua[i])
    tv = (v - va[j]) / (va[j + 1] - va[j])
    return ((1 - tv) * ((1 - tu) * field[j, i] + tu * field[j, i + 1])
            + tv * ((1 - tu) * field[j + 1, i] + tu * field[j + 1, i + 1]))


@functools.lru_cache(maxsize=48)
def _jaw_uv(idt: Identity) -> np.ndarray:
    """Landmarks 0-16 as surface parameters (17, 2), traced on a fixed fine grid of the lower face."""
    u1 = np.linspace(0.0, 1.75, 72)
    v1 = np.linspace(-1.45, math.asin(idt.eye_y - _ORIGIN[1]), 72)
    v, u = np.meshgrid(v1, u1, indexing="ij")
    return _jaw_landmarks(u, v, _base_radius(u, v, idt) + _static_relief(u, v, idt), idt)


@functools.lru_cache(maxsize=48)
def _body_meshes(idt: Identity):
    """Static meshes other than the head: long-hair sheet, neck, torso (positions, normals, uv, tris, material, cull)."""
    out = []
    if idt.hair_style == "long":
        sp, suv, stri = _long_hair_shell(idt)
        out.append((sp, np.zeros_like(sp), suv, stri, 1, False))
    npos, nnrm, nuv, ntri = _cylinder(idt.neck_w, idt.neck_w * 1.1, -0.25, -0.45, -2.3, 24, 8)
    out.append((npos, nnrm, nuv, ntri, 2, True))
    tpos, tnrm, tuv, ttri = _TORSO
    out.append((tpos, tnrm, tuv, ttri, 3, True))
    return out


def _ear_relief(u, v, idt):
    _, fy = _face_xy(u, v)
    return idt.ear * _g(np.abs(u), fy, 1.62, -0.18, 0.10, 0.22) * (1.0 + 0.3 * _ss(-0.3, 0.0, fy + 0.18))


def _jaw_landmarks(u, v, r_skin, idt: Identity) -> np.ndarray:
    """Landmarks 0-16 as surface parameters: the frontal outline of the lower face.

    The outline of the neutral, frontal, hair-free head is traced in polar bins around the nose tip
    (the furthest surface point per angle), then resampled at equal arc length from the chin up to a
    point below the eye line; the left half is the mirror image.
    """
    p = _ORIGIN + _ray_dirs(u, v) * r_skin[..., None]  # (Nv, Nu, 3)
    sel = p[..., 2] > -0.3
    X, Y, U, V = p[..., 0][sel], p[..., 1][sel], u[sel], v[sel]
    cy = idt.nose_tip_y
    y_start = idt.eye_y - 0.12
    phi = np.arctan2(Y - cy, X)
    rho = np.hypot(X, Y - cy)
    keep = (Y <= y_start) & (phi <= 0.05)
    X, Y, U, V, phi, rho = X[keep], Y[keep], U[keep], V[keep], phi[keep], rho[keep]
    bins = np.linspace(-math.pi / 2, 0.05, 80)
    b = np.clip(np.digitize(phi, bins), 1, len(bins) - 1)
    order = np.lexsort((-rho, b))
    first = np.r_[True, b[order][1:] != b[order][:-1]]
    idx = order[first]  # the outermost point of each angular bin, bins in increasing angle (chin first)
    ox, oy, ou, ov = X[idx], Y[idx], U[idx], V[idx]
    # start exactly at the chin (u = 0) and stop where the outline reaches y_start
    ox = np.concatenate([[0.0], ox])
    oy = np.concatenate([[oy[0]], oy])
    ou = np.concatenate([[0.0], ou])
    ov = np.concatenate([[ov[0]], ov])
    seg = np.hypot(np.diff(ox), np.diff(oy))
    s = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.linspace(0.0, s[-1], 9)
    uu = np.interp(targets, s, ou)
    vv = np.interp(targets, s, ov)
    uu[0] = 0.0
    right = np.stack([uu, vv], -1)            # (9, 2): chin (8) .. top (16)
    left = np.stack([-uu[::-1], vv[::-1]], -1)[:-1]  # (8, 2): 0 .. 7
    return np.concatenate([left, right])      # (17, 2)


def _long_hair_shell(idt: Identity):
    """A double-sided hair sheet behind the head and neck, from the temples down to ``hair_len``."""
    th = np.linspace(1.2, 2 * math.pi - 1.2, 33)
    ys = np.linspace(0.15, idt.hair_len, 14)
    Y, TH = np.meshgrid(ys, th, indexing="ij")
    drop = np.clip(0.15 - Y, 0, None)
    rx = idt.cranium[0] + idt.hair_thick + 0.01 + 0.10 * drop
    rz = idt.cranium[2] + idt.hair_thick + 0.01 + 0.05 * drop
    pos = np.stack([rx * np.sin(TH), Y, -0.12 + rz * np.cos(TH) * (0.75 + 0.25 * _ss(0.15, -0.6, Y))], -1)
    nv, nu = Y.shape
    tri = []
    for j in range(nv - 1):
        for i in range(nu - 1):
            a, b, c, d = j * nu + i, j * nu + i + 1, (j + 1) * nu + i + 1, (j + 1) * nu + i
            right = TH[0, i] + TH[0, i + 1] > 2 * math.pi  # mirror-symmetric diagonals about th = pi
            tri += [(a, b, c), (a, c, d)] if right else [(a, b, d), (b, c, d)]
    uv = np.stack([TH - math.pi, Y], -1).reshape(-1, 2)
    return pos.reshape(-1, 3), uv, np.array(tri, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# Action units: 3D displacement fields and texture parameters
# --------------------------------------------------------------------------------------------------


def _au_vector(aus: dict[str, float]) -> dict[str, float]:
    """Validate an AU dict and return intensities / 5 (0..1) for every rendered AU."""
    out = {k: 0.0 for k in AU_NAMES}
    for k, val in aus.items():
        if k not in out:
            raise ValueError(f"unknown action unit {k!r}; rendered AUs: {', '.join(AU_NAMES)}")
        val = float(val)
        if not (0.0 <= val <= 5.0):
            raise ValueError(f"{k} intensity {val} is outside the FACS range 0..5")
        out[k] = val / 5.0
    return out


def _mouth_open_profile(fx, idt: Identity):
    """Fraction of the mouth opening at face-x (1 in the middle, 0 at the corners)."""
    return np.clip(1.0 - (fx / idt.mouth_w) ** 2, 0.0, 1.0) ** 0.7


def _jaw_lateral(u):
    return 1.0 - _ss(0.5, 1.6, np.abs(u))


def _au_displacement(u, v, idt: Identity, a: dict[str, float]):
    """Sum of the AU displacement fields at surface parameters (u, v) -> (..., 3) head-frame offsets."""
    fx, fy = _face_xy(u, v)
    front = _ss(0.0, 0.4, np.cos(u))
    d = np.zeros(np.shape(u) + (3,))
    by = idt.eye_y + idt.brow_gap
    my = idt.mouth_y
    mw = idt.mouth_w

    def add(amount, vec, field):
        if amount > 0:
            for k in range(3):
                if vec[k] != 0:
                    d[..., k] += amount * vec[k] * field

    # brows: AU1 inner raiser, AU2 outer raiser, AU4 lowerer (down and together)
    add(a["AU1"], (0, 0.075, 0), _g2(fx, fy, 0.11, by + 0.02, 0.10, 0.14))
    add(a["AU2"], (0, 0.075, 0), _g2(fx, fy, 0.38, by + 0.02, 0.11, 0.14))
    if a["AU4"] > 0:
        add(a["AU4"], (0, -0.06, 0.01), _g2(fx, fy, 0.15, by, 0.12, 0.09))
        add(a["AU4"], (-0.035, 0, 0), _g2odd(fx, fy, 0.17, by, 0.11, 0.09))
    # AU6 cheek raiser: cheeks up and forward (its lid part is in the texture)
    add(a["AU6"], (0, 0.045, 0.025), _g2(fx, fy, 0.36, idt.eye_y - 0.22, 0.13, 0.09))
    # AU9 nose wrinkler: nose sides and upper lip up, inner brows down
    if a["AU9"] > 0:
        add(a["AU9"], (0, 0.035, 0.01), _g2(fx, fy, 0.10, idt.nose_tip_y + 0.05, 0.09, 0.10))
        add(a["AU9"], (0, 0.02, 0), _g(fx, fy, 0, my + 0.05, 0.22, 0.06))
        add(a["AU9"], (0, -0.025, 0), _g2(fx, fy, 0.12, by, 0.1, 0.08))
    # lip corners: AU12 up/out/back, AU15 down, AU20 stretched sideways, AU23 tightened inwards
    corner = _g2(fx, fy, mw, my, 0.11, 0.09)
    corner_x = _g2odd(fx, fy, mw, my, 0.11, 0.09)
    if a["AU12"] > 0:
        add(a["AU12"], (0, 0.09, -0.03), corner)
        add(a["AU12"], (0.055, 0, 0), corner_x)
        add(a["AU12"], (0, 0.02, 0.02), _g2(fx, fy, 0.34, my + 0.2, 0.1, 0.1))
    if a["AU15"] > 0:
        add(a["AU15"], (0, -0.07, 0), corner)
        add(a["AU15"], (0.015, 0, 0), corner_x)
    if a["AU20"] > 0:
        add(a["AU20"], (0, -0.015, -0.01), corner)
        add(a["AU20"], (0.07, 0, 0), corner_x)
    add(a["AU23"], (-0.025, 0, 0), corner_x)
    # AU17 chin raiser pushes the chin and lower lip up
    add(a["AU17"], (0, 0.04, 0.015), _g(fx, fy, 0, my - 0.19, 0.2, 0.12))
    # lips part (AU25) and jaw drop (AU26): the lower face below the lip seam moves down; inside the
    # mouth the whole step happens across the seam rows (which open into the mouth), towards the
    # corners it is spread over the cheeks so the surface stays continuous.
    if a["AU25"] > 0 or a["AU26"] > 0:
        v_top, v_bot = idt.band
        band = np.clip((v_top - v) / (v_top - v_bot), 0.0, 1.0)
        prof = _mouth_open_profile(fx, idt) * front
        wide = _ss(my + 0.06, my - 0.12, fy)
        lower = prof * band + (1.0 - prof) * wide
        lat = _jaw_lateral(u)
        jaw = _JAW_DROP * a["AU26"] * lower * lat
        d[..., 1] -= jaw
        d[..., 2] -= 0.2 * jaw
        lip = a["AU25"] * prof
        d[..., 1] -= _LIPS_PART * lip * band * _ss(my - 0.3, my - 0.12, fy)
        d[..., 1] += _UPPER_LIP_UP * lip * (1.0 - band) * _ss(my + 0.2, my + 0.04, fy)
        # the opened seam is the mouth cavity: push it back
        opening = prof * (_JAW_DROP * a["AU26"] * lat + (_LIPS_PART + _UPPER_LIP_UP) * a["AU25"])
        d[..., 2] -= 1.2 * opening * 4.0 * band * (1.0 - band)
    return d


def _eye_lids(idt: Identity, a: dict[str, float]):
    """Upper and lower lid heights (above / below the eye centre) after AU5, AU6, AU7, AU4."""
    up = idt.eye_up * (1.0 + 0.75 * a["AU5"] - 0.25 * a["AU7"] - 0.12 * a["AU6"] - 0.12 * a["AU4"] - 0.1 * a["AU9"])
    lo = idt.eye_lo * (1.0 - 0.45 * a["AU6"] - 0.5 * a["AU7"] - 0.2 * a["AU9"] + 0.1 * a["AU5"])
    return max(up, 0.008), max(lo, 0.006)


def _lid_curves(s, up, lo):
    """Upper / lower lid offsets at normalised eye-x s (-1 inner corner .. 1 outer corner)."""
    q = np.clip(1.0 - s**2, 0.0, 1.0)
    upper = up * q**0.75 * (1.0 - 0.12 * s)
    lower = -lo * q**0.9 * (1.0 + 0.1 * s)
    return upper, lower


def _lip_heights(fx, idt: Identity, a: dict[str, float]):
    """Upper and lower vermilion heights at face-x (AU23 thins the lips)."""
    thin = 1.0 - 0.55 * a["AU23"] - 0.15 * a["AU20"]
    x = np.clip(np.abs(fx) / idt.mouth_w, 0.0, 1.0)
    bow = 1.0 + 0.22 * np.exp(-(((x - 0.3) / 0.13) ** 2)) - 0.12 * np.exp(-((x / 0.08) ** 2))
    upper = idt.lip_up * thin * np.clip(1.0 - x**2, 0.0, 1.0) ** 0.55 * bow
    lower = idt.lip_lo * thin * np.clip(1.0 - x**2, 0.0, 1.0) ** 0.7
    return upper, lower


def _uv_from_face(fx, fy):
    v = np.arcsin(np.clip(fy - _ORIGIN[1], -1.0, 1.0))
    u = np.arcsin(np.clip(fx / np.cos(v), -1.0, 1.0))
    return u, v


def _landmark_uv(idt: Identity, a: dict[str, float], jaw_uv: np.ndarray) -> np.ndarray:
    """The 68 iBUG landmarks as surface parameters (u, v) -> (68, 2)."""
    fx = np.zeros(68)
    fy = np.zeros(68)
    by = idt.eye_y + idt.brow_gap
    # brows 17-21 (image left, outer -> inner) and 22-26 (inner -> outer), on the upper brow edge
    s = np.array([1.0, 0.75, 0.5, 0.25, 0.0])
    bx, byy = _brow_curve(s, idt)
    fx[17:22], fy[17:22] = -bx, byy + 0.3 * idt.brow_th
    fx[22:27], fy[22:27] = bx[::-1], (byy + 0.3 * idt.brow_th)[::-1]
    # nose bridge 27-30 (nasion -> tip) and base 31-35
    fy_n = idt.eye_y + 0.04
    fy[27:31] = np.linspace(fy_n, idt.nose_tip_y, 4)
    fy_sub = idt.nose_tip_y - 0.085
    fx[31:36] = np.array([-0.75, -0.4, 0.0, 0.4, 0.75]) * idt.ala_w
    fy[31:36] = fy_sub + np.array([0.03, 0.008, 0.0, 0.008, 0.03])
    # eyes: 36-41 (image-left eye: outer, 2 upper, inner, 2 lower), 42-47 (inner, 2 upper, outer, 2 lower)
    up, lo = _eye_lids(idt, a)
    se = np.array([1.0, 1 / 3, -1 / 3, -1.0, -1 / 3, 1 / 3])  # 36..41 in normalised eye-x
    upper, lower = _lid_curves(se, up, lo)
    off = np.where(np.arange(6) < 3, upper, lower)
    off[[0, 3]] = 0.0
    ex = idt.eye_x + se * idt.eye_w
    ey = idt.eye_y + off + idt.eye_tilt * se * idt.eye_w
    fx[36:42], fy[36:42] = -ex, ey
    mirror = [3, 2, 1, 0, 5, 4]  # 42..47 are the mirror of 39, 38, 37, 36, 41, 40
    fx[42:48], fy[42:48] = ex[mirror], ey[mirror]
    # outer lips 48-59, inner lips 60-67; the seam rows are the inner lip lines
    mw = idt.mouth_w
    my = idt.mouth_y
    xo = np.array([-1.0, -0.6, -0.3, 0.0, 0.3, 0.6, 1.0, 0.6, 0.3, 0.0, -0.3, -0.6]) * mw
    hu, hl = _lip_heights(xo, idt, a)
    fx[48:60] = xo
    fy[48:60] = my + np.concatenate([[0.0], hu[1:6], [0.0], -hl[7:]])
    xi = np.array([-0.9, -0.35, 0.0, 0.35, 0.9, 0.35, 0.0, -0.35]) * mw
    fx[60:68] = xi
    u, v = _uv_from_face(fx, fy)
    v_top, v_bot = idt.band
    v[60:65] = v_top
    v[65:68] = v_bot
    v[[60, 64]] = 0.5 * (v_top + v_bot)
    uv = np.stack([u, v], -1)
    uv[0:17] = jaw_uv
    return uv


def _brow_curve(s, idt: Identity):
    """Brow centre line at s (0 inner end .. 1 outer end) -> (|fx|, fy)."""
    x0, x1 = 0.09, idt.eye_x + idt.eye_w + 0.05
    x = x0 + (x1 - x0) * s
    y = idt.eye_y + idt.brow_gap + idt.brow_arch * np.sin(math.pi * np.clip(s * 0.85 + 0.1, 0, 1)) - 0.03 * s**2
    return x, y


# --------------------------------------------------------------------------------------------------
# Texture: albedo (sRGB), specular strength and a cavity (ambient occlusion) term per head pixel
# --------------------------------------------------------------------------------------------------


def _mix(base, colour, alpha):
    alpha = np.clip(alpha, 0.0, 1.0)[..., None]
    return base * (1.0 - alpha) + np.asarray(colour) * alpha


def _head_texture(u, v, idt: Identity, a: dict[str, float]):
    """Procedural albedo (M, 3) sRGB, specular (M,), cavity (M,) at head-surface parameters."""
    fx, fy = _face_xy(u, v)
    ax = np.abs(fx)
    au = np.abs(u)
    front = _ss(0.1, 0.45, np.cos(u))
    skin = np.asarray(idt.skin_rgb)
    col = np.broadcast_to(skin, fx.shape + (3,)).copy()
    spec = np.full(fx.shape, 0.06)
    cav = np.ones(fx.shape)
    # low-frequency skin variation (symmetric), cheek and nose redness
    mott = 0.03 * np.sin(11 * ax + 3.1) * np.sin(9 * fy + 1.3)
    col *= (1.0 + mott)[..., None]
    red = 0.12 * _g2(fx, fy, 0.38, idt.eye_y - 0.28, 0.12, 0.1) * front + 0.06 * _g(fx, fy, 0, idt.nose_tip_y, 0.06, 0.06)
    col = _mix(col, skin * np.array([1.05, 0.78, 0.76]), red)
    # eye sockets and creases darker (cavity)
    cav *= 1.0 - 0.16 * _g2(fx, fy, idt.eye_x - 0.02, idt.eye_y + 0.01, 0.12, 0.06) * front
    # nasolabial folds, deepened by AU12 / AU9
    t = np.clip((idt.nose_tip_y - 0.02 - fy) / (idt.nose_tip_y + 0.02 - idt.mouth_y + 0.06), 0, 1)
    fold_x = idt.ala_w + 0.02 + t * (idt.mouth_w + 0.05 - idt.ala_w)
    fold = np.exp(-(((ax - fold_x) / 0.018) ** 2)) * _ss(-0.05, 0.1, t) * _ss(1.15, 0.9, t) * front
    cav *= 1.0 - fold * (0.12 + 0.3 * a["AU12"] + 0.15 * a["AU9"] + 0.1 * a["AU6"])
    # expression wrinkles
    by = idt.eye_y + idt.brow_gap
    if a["AU1"] + a["AU2"] > 0:
        amt = 0.22 * max(a["AU1"], a["AU2"])
        lines = (0.5 + 0.5 * np.cos(2 * math.pi * (fy - by - 0.02 * np.cos(4 * fx)) / 0.055)) ** 6
        zone = _ss(by + 0.07, by + 0.12, fy) * _ss(idt.hairline - 0.05, idt.hairline - 0.18, fy) * _ss(0.45, 0.3, ax)
        cav *= 1.0 - amt * lines * zone
    if a["AU4"] > 0:
        glab = np.exp(-(((ax - 0.035) / 0.01) ** 2)) * _g(0, fy, 0, by + 0.0, 1, 0.05)
        cav *= 1.0 - 0.45 * a["AU4"] * glab
    if a["AU9"] > 0:
        nl = (0.5 + 0.5 * np.cos(2 * math.pi * fy / 0.03)) ** 4 * _g(fx, fy, 0, idt.eye_y - 0.08, 0.08, 0.06)
        cav *= 1.0 - 0.5 * a["AU9"] * nl
    if a["AU6"] > 0:
        ang = np.arctan2(fy - idt.eye_y, ax - idt.eye_x - idt.eye_w)
        crow = (0.5 + 0.5 * np.cos(ang * 14)) ** 4 * _g(ax, fy, idt.eye_x + idt.eye_w + 0.05, idt.eye_y, 0.04, 0.05)
        cav *= 1.0 - 0.4 * a["AU6"] * crow
    if a["AU17"] > 0:
        dimple = 0.5 + 0.5 * np.sin(90 * ax + 1) * np.sin(80 * fy)
        cav *= 1.0 - 0.12 * a["AU17"] * dimple * _g(fx, fy, 0, idt.mouth_y - 0.2, 0.1, 0.06)
    # beard (texture only: stubble to full)
    if idt.beard > 0:
        # jaw and chin below a line that climbs from the mouth corners to the sideburns, plus a moustache
        top = np.interp(au, [0.0, 0.3, 0.75, 1.15, 1.35], [idt.mouth_y - 0.08, idt.mouth_y - 0.02,
                                                           idt.mouth_y + 0.22, -0.12, 0.0])
        zone = _ss(top + 0.03, top - 0.04, fy) * _ss(1.5, 1.35, au)
        mous = _ss(idt.nose_tip_y - 0.09, idt.nose_tip_y - 0.13, fy) * _ss(idt.mouth_y + 0.02, idt.mouth_y + 0.05, fy)
        zone = np.clip(zone + mous * _ss(idt.mouth_w + 0.06, idt.mouth_w - 0.02, ax), 0, 1) * front
        col = _mix(col, np.asarray(idt.hair_rgb) * 0.9 + skin * 0.1, 0.85 * idt.beard * zone)
    # brows
    lo_x, hi_x = 0.09, idt.eye_x + idt.eye_w + 0.05
    s = (ax - lo_x) / (hi_x - lo_x)
    bx, bcy = _brow_curve(np.clip(s, 0, 1), idt)
    th = idt.brow_th * (1.0 - 0.45 * np.clip(s, 0, 1))
    inside = _ss(0.5 * th + 0.008, 0.5 * th - 0.004, np.abs(fy - bcy)) * _ss(-0.06, 0.04, s) * _ss(1.08, 0.95, s)
    strands = 0.85 + 0.15 * np.sin(70 * ax + 25 * fy)
    col = _mix(col, idt.brow_rgb, 0.9 * inside * strands * front)
    # eyes
    up, lo = _eye_lids(idt, a)
    ex = ax - idt.eye_x
    s_e = ex / idt.eye_w
    ey = fy - idt.eye_y - idt.eye_tilt * ex
    upper, lower = _lid_curves(s_e, up, lo)
    rest_upper, _ = _lid_curves(s_e, idt.eye_up, idt.eye_lo)
    in_x = _ss(1.02, 0.96, np.abs(s_e))
    eps = 0.004
    opening = _ss(upper + eps, upper - eps, ey) * _ss(lower - eps, lower + eps, ey) * in_x
    sclera = np.array([0.93, 0.91, 0.88]) * (1.0 - 0.25 * _ss(0.5, 1.0, np.abs(s_e)))[..., None]
    sclera = _mix(sclera, np.array([0.85, 0.55, 0.55]), _ss(-0.75, -0.98, s_e) * 0.8)
    ir = np.hypot(ex, fy - idt.eye_y)
    ir_n = ir / idt.iris_r
    iris = np.asarray(idt.iris_rgb) * (0.55 + 0.6 * _ss(1.0, 0.45, ir_n) * (0.8 + 0.2 * np.sin(np.arctan2(fy - idt.eye_y, ex) * 19)))[..., None]
    eye_col = _mix(sclera, iris, _ss(1.03, 0.93, ir_n))
    eye_col = _mix(eye_col, np.array([0.02, 0.02, 0.02]), _ss(0.42, 0.34, ir_n))
    # the upper lid shadows the top of the eyeball
    eye_col = eye_col * (1.0 - 0.45 * _ss(upper - 0.03, upper, ey))[..., None]
    col = _mix(col, eye_col, opening * front)
    spec = np.where(opening > 0.5, 0.8, spec)
    lash = _ss(upper + 0.006 + 0.012 * _ss(-0.5, 1, s_e), upper, ey) * _ss(upper - eps, upper + eps * 0.2, ey) * _ss(1.12, 1.0, np.abs(s_e))
    col = _mix(col, np.array([0.03, 0.025, 0.02]), 0.95 * lash * front)
    low_line = np.exp(-(((ey - lower + 0.003) / 0.004) ** 2)) * in_x * (1 - opening)
    col = _mix(col, skin * 0.55, 0.5 * low_line * front)
    crease = np.exp(-(((ey - rest_upper - 0.035) / 0.006) ** 2)) * _ss(1.0, 0.6, np.abs(s_e))
    cav *= 1.0 - 0.25 * crease * front
    # nostrils
    fy_sub = idt.nose_tip_y - 0.085
    nos = _ss(1.0, 0.6, ((ax - 0.045) / 0.032) ** 2 + ((fy - fy_sub - 0.02) / 0.016) ** 2)
    col = _mix(col, skin * 0.18, 0.9 * nos * front)
    ala = np.exp(-((np.hypot((ax - idt.ala_w * 0.62) / 0.05, (fy - idt.nose_tip_y) / 0.045) - 1.0) / 0.18) ** 2)
    cav *= 1.0 - 0.22 * ala * _ss(idt.nose_tip_y + 0.05, idt.nose_tip_y - 0.01, fy) * front
    # lips and mouth interior
    my, mw = idt.mouth_y, idt.mouth_w
    hu, hl = _lip_heights(fx, idt, a)
    v_top, v_bot = idt.band
    in_mouth_x = _ss(1.0, 0.97, ax / mw)
    lip_up = _ss(my + hu + 0.006, my + hu - 0.006, fy) * (v >= v_top)
    lip_lo = _ss(my - hl - 0.006, my - hl + 0.006, fy) * (v <= v_bot)
    lip = np.clip(lip_up + lip_lo, 0, 1) * in_mouth_x * front
    col = _mix(col, idt.lip_rgb, lip)
    spec = spec + 0.15 * lip
    corner = _g2(fx, fy, mw, my, 0.015, 0.012)
    cav *= 1.0 - 0.45 * corner * front
    seam = (v < v_top) & (v > v_bot) & (ax < mw)
    if np.any(seam):
        lat = _jaw_lateral(u[seam])
        prof = _mouth_open_profile(fx[seam], idt)
        opening_h = prof * (_JAW_DROP * a["AU26"] * lat + (_LIPS_PART + _UPPER_LIP_UP) * a["AU25"])
        sb = (v_top - v[seam]) / (v_top - v_bot)
        from_top = sb * opening_h
        from_bot = (1.0 - sb) * opening_h
        inner = np.broadcast_to(np.array([0.16, 0.05, 0.05]), from_top.shape + (3,)).copy()
        inner = _mix(inner, np.array([0.45, 0.16, 0.17]), _ss(0.3, 0.0, from_bot / np.maximum(opening_h, 1e-6)) * (opening_h > 0.05))
        teeth_x = _ss(0.78, 0.62, np.abs(fx[seam]) / mw)
        inner = _mix(inner, np.array([0.92, 0.9, 0.84]), _ss(0.062, 0.055, from_top) * teeth_x)
        inner = _mix(inner, np.array([0.86, 0.84, 0.78]), _ss(0.035, 0.03, from_bot) * teeth_x * 0.9)
        inner = _mix(inner, np.asarray(idt.lip_rgb) * 0.7, _ss(0.012, 0.004, np.minimum(from_top, from_bot)))
        col[seam] = inner
        cav[seam] *= 0.85
        spec[seam] = 0.25
    # ears: a darker bowl
    ear_in = np.exp(-(((au - 1.64) / 0.06) ** 2 + ((fy + 0.2) / 0.12) ** 2))
    cav *= 1.0 - 0.35 * ear_in * (idt.ear / 0.16)
    # scalp hair
    hm = _hair_mask(u, v, idt, soft=0.012)
    if np.any(hm > 0):
        hcol, hspec = _hair_albedo(u, v, idt)
        dens = 0.5 if idt.hair_style == "bald" else 1.0
        col = _mix(col, hcol, hm * dens)
        spec = spec * (1 - hm) + hspec * hm
    return np.clip(col, 0.0, 1.0), spec, cav


def _hair_albedo(u, v, idt: Identity):
    au = np.abs(u)
    strands = 0.85 + 0.1 * np.sin(24 * au + 2 * np.sin(5 * v)) + 0.05 * np.sin(9 * au - 4 * v)
    col = np.asarray(idt.hair_rgb) * strands[..., None]
    return col, np.full(np.shape(u), 0.12)


# --------------------------------------------------------------------------------------------------
# Rasteriser
# --------------------------------------------------------------------------------------------------

_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048, 4096)


def rasterize(xy: np.ndarray, depth: np.ndarray, tris: np.ndarray, cull: np.ndarray, h: int, w: int):
    """Z-buffer triangles -> per pixel (triangle index or -1, barycentric weights).

    ``xy`` (N, 2) pixel coordinates (pixel centres at integers), ``depth`` (N,) distance (smaller is
    nearer), ``tris`` (T, 3), ``cull`` (T,) bool: drop back-facing triangles. Triangles are grouped
    by bounding-box size, so every group is one vectorised inside test over (triangle, k*k pixel)
    candidates; the nearest fragment per pixel comes from one sort of ``pixel + normalised depth``.
    (``np.take`` rather than fancy indexing: several times faster on these 1-D gathers.)
    Returns ``tri`` (h*w,) int64 (-1: background) and ``bary`` (h*w, 3) float64.
    """
    X = np.ascontiguousarray(xy[:, 0])
    Y = np.ascontiguousarray(xy[:, 1])
    i0, i1, i2 = (np.ascontiguousarray(tris[:, k]) for k in range(3))
    x0, x1, x2 = X.take(i0), X.take(i1), X.take(i2)
    y0, y1, y2 = Y.take(i0), Y.take(i1), Y.take(i2)
    area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
    # counter-clockwise in the y-up world is clockwise in y-down pixels: front faces have area < 0
    lox = np.maximum(np.ceil(np.minimum(np.minimum(x0, x1), x2)), 0.0)
    loy = np.maximum(np.ceil(np.minimum(np.minimum(y0, y1), y2)), 0.0)
    ex = np.minimum(np.floor(np.maximum(np.maximum(x0, x1), x2)), w - 1.0) - lox
    ey = np.minimum(np.floor(np.maximum(np.maximum(y0, y1), y2)), h - 1.0) - loy
    keep = (np.abs(area) > 1e-12) & ~(cull & (area > 0)) & (ex >= 0) & (ey >= 0)
    sel = np.flatnonzero(keep)
    tri_out = np.full(h * w, -1, dtype=np.int64)
    bary = np.zeros((h * w, 3))
    if sel.size == 0:
        return tri_out, bary
    x0, y0, x1, y1, x2, y2 = (a.take(sel) for a in (x0, y0, x1, y1, x2, y2))
    inv = 1.0 / area.take(sel)
    lox, loy, ex, ey = lox.take(sel), loy.take(sel), ex.take(sel), ey.take(sel)
    d0, d1, d2 = depth.take(i0.take(sel)), depth.take(i1.take(sel)), depth.take(i2.take(sel))
    dmin = min(d0.min(), d1.min(), d2.min())
    dscale = 0.999 / (max(d0.max(), d1.max(), d2.max()) - dmin + 1e-9)
    size = np.maximum(ex, ey) + 1
    bucket = np.searchsorted(np.asarray(_BUCKETS, dtype=np.float64), size)
    order = np.argsort(bucket, kind="stable")
    bs_sorted = bucket.take(order)
    bounds = np.flatnonzero(np.r_[True, bs_sorted[1:] != bs_sorted[:-1], True])
    keys, tids, W0, W1 = [], [], [], []
    for a_, b_ in zip(bounds[:-1], bounds[1:]):
        s = order[a_:b_]
        k = _BUCKETS[bs_sorted[a_]]
        kk = k * k
        if k == 1:
            px, py = lox.take(s), loy.take(s)
            sx0, sy0, sx1, sy1, sx2, sy2, iv = (a.take(s) for a in (x0, y0, x1, y1, x2, y2, inv))
        else:
            oy, ox = np.divmod(np.arange(kk, dtype=np.float64), k)
            px = (lox.take(s)[:, None] + ox).ravel()
            py = (loy.take(s)[:, None] + oy).ravel()
            rep = np.repeat(s, kk)
            sx0, sy0, sx1, sy1, sx2, sy2, iv = (a.take(rep) for a in (x0, y0, x1, y1, x2, y2, inv))
        w0 = ((sx2 - sx1) * (py - sy1) - (sy2 - sy1) * (px - sx1)) * iv
        w1 = ((sx0 - sx2) * (py - sy2) - (sy0 - sy2) * (px - sx2)) * iv
        inside = (w0 >= -1e-7) & (w1 >= -1e-7) & (w0 + w1 <= 1.0 + 1e-7)
        if k > 1:
            inside &= (np.tile(ox, len(s)) <= ex.take(rep)) & (np.tile(oy, len(s)) <= ey.take(rep))
            t_idx = rep
        else:
            t_idx = s
        f = np.flatnonzero(inside)
        w0, w1, t_idx = w0.take(f), w1.take(f), t_idx.take(f)
        dd = w0 * d0.take(t_idx) + w1 * d1.take(t_idx) + (1.0 - w0 - w1) * d2.take(t_idx)
        keys.append(py.take(f) * w + px.take(f) + (dd - dmin) * dscale)
        tids.append(t_idx)
        W0.append(w0)
        W1.append(w1)
    key = np.concatenate(keys)
    o = np.argsort(key)
    pix = key.take(o).astype(np.int64)
    nearest = np.r_[True, pix[1:] != pix[:-1]]
    first = o[nearest]
    pix = pix[nearest]
    tri_out[pix] = sel.take(np.concatenate(tids).take(first))
    w0 = np.concatenate(W0).take(first)
    w1 = np.concatenate(W1).take(first)
    bary[pix] = np.stack([w0, w1, 1.0 - w0 - w1], -1)
    return tri_out, bary


# --------------------------------------------------------------------------------------------------
# Camera and rendering
# --------------------------------------------------------------------------------------------------


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head-to-camera rotation ``Rz(roll) @ Ry(-yaw) @ Rx(-pitch)`` (degrees; see the module doc)."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    cy, sy = math.cos(-y), math.sin(-y)
    cp, sp = math.cos(-p), math.sin(-p)
    cr, sr = math.cos(r), math.sin(r)
    rz = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return rz @ ry @ rx


class _Camera:
    """Perspective camera: the anchor at distance D, ``scale`` px per unit at the anchor."""

    def __init__(self, R, scene: Scene, size: int, ss: int):
        self.R = R
        self.f = scene.scale * size / _FACE_HEIGHT  # px per unit at the anchor, output resolution
        self.cx = (size - 1) / 2 + scene.offset[0] * size
        self.cy = (size - 1) / 2 + scene.offset[1] * size
        self.ss = ss

    def to_cam(self, p):
        return (p - _ANCHOR) @ self.R.T  # (N, 3)

    def project(self, pc, ss: int | None = None):
        """Camera-frame points -> pixel (x, y) at resolution ``ss`` x output, and depth."""
        ss = self.ss if ss is None else ss
        depth = _CAMERA_DISTANCE - pc[:, 2]
        k = self.f * _CAMERA_DISTANCE / depth
        x = self.cx + k * pc[:, 0]
        y = self.cy - k * pc[:, 1]
        xy = np.stack([(x + 0.5) * ss - 0.5, (y + 0.5) * ss - 0.5], -1)
        return xy, depth


def _vertex_normals_grid(p):
    """Normals of a (Nv, Nu, 3) grid surface (u wraps), outward for a y-up, u-to-the-right layout."""
    du = np.roll(p, -1, axis=1) - np.roll(p, 1, axis=1)
    dv = np.empty_like(p)
    dv[1:-1] = p[2:] - p[:-2]
    dv[0] = p[1] - p[0]
    dv[-1] = p[-1] - p[-2]
    n = np.stack([
        du[..., 1] * dv[..., 2] - du[..., 2] * dv[..., 1],
        du[..., 2] * dv[..., 0] - du[..., 0] * dv[..., 2],
        du[..., 0] * dv[..., 1] - du[..., 1] * dv[..., 0],
    ], -1)
    ln = np.sqrt(np.einsum("...i,...i->...", n, n))[..., None]
    radial = p - _ORIGIN
    radial = radial / np.maximum(np.linalg.norm(radial, axis=-1, keepdims=True), 1e-9)
    return np.where(ln > 1e-10, n / np.maximum(ln, 1e-12), radial)


def _cylinder(rx, rz, z0, y_top, y_bot, nu, nv):
    th = np.linspace(-math.pi, math.pi, nu + 1)[:-1]
    ys = np.linspace(y_bot, y_top, nv)
    Y, TH = np.meshgrid(ys, th, indexing="ij")
    pos = np.stack([rx * np.sin(TH), Y, z0 + rz * np.cos(TH)], -1)
    nrm = np.stack([np.sin(TH) / rx, np.zeros_like(TH), np.cos(TH) / rz], -1)
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
    tris = _grid_triangles(nu, nv, th)
    return pos.reshape(-1, 3), nrm.reshape(-1, 3), np.stack([TH, Y], -1).reshape(-1, 2), tris


def _torso():
    th = np.linspace(-math.pi, math.pi, 33)[:-1]
    ph = np.linspace(-0.2, math.pi / 2, 12)
    PH, TH = np.meshgrid(ph, th, indexing="ij")
    e = 0.6  # superellipsoid exponent: square shoulders
    c, s = np.cos(PH), np.sin(PH)
    sg = lambda x: np.sign(x) * np.abs(x) ** e  # noqa: E731
    pos = np.stack([1.6 * sg(c) * sg(np.sin(TH)), -2.55 + 0.85 * s, -0.2 + 0.7 * sg(c) * sg(np.cos(TH))], -1)
    nv, nu = PH.shape
    p = pos
    du = np.roll(p, -1, axis=1) - np.roll(p, 1, axis=1)
    dv = np.empty_like(p)
    dv[1:-1] = p[2:] - p[:-2]
    dv[0] = p[1] - p[0]
    dv[-1] = p[-1] - p[-2]
    n = np.cross(du, dv)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-9)
    tris = _grid_triangles(nu, nv, th)
    return pos.reshape(-1, 3), n.reshape(-1, 3), np.stack([TH, PH], -1).reshape(-1, 2), tris


_TORSO = _torso()


def _background(scene: Scene, h: int, w: int) -> np.ndarray:
    """(h, w, 3) sRGB background: gradient, value noise or soft blobs between two colours."""
    rng = np.random.default_rng(scene.bg_seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    xn, yn = xx / max(w - 1, 1) - 0.5, yy / max(h - 1, 1) - 0.5
    if scene.mirror:
        xn = -xn  # the whole texture is a function of xn, so this mirrors it exactly
    t = 0.5 + np.cos(scene.bg_angle) * xn + np.sin(scene.bg_angle) * yn
    if scene.bg_kind == 1:
        t = 0.5 * t + 0.5 * _value_noise(rng, xn, yn, 5) + 0.25 * (_value_noise(rng, xn, yn, 13) - 0.5)
    elif scene.bg_kind == 2:
        blobs = np.zeros_like(xn)
        for _ in range(6):
            cx, cy, r, amp = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0.08, 0.3), rng.uniform(-0.6, 0.6)
            blobs += amp * np.exp(-((xn - cx) ** 2 + (yn - cy) ** 2) / (2 * r * r))
        t = 0.6 * t + blobs
    t = np.clip(t, 0.0, 1.0)[..., None]
    c1, c2 = (np.asarray(c) for c in scene.bg_rgb)
    return c1 * (1 - t) + c2 * t


def _value_noise(rng, xn, yn, n):
    """Bilinear value noise on an n x n lattice over the frame (xn, yn in [-0.5, 0.5])."""
    g = rng.uniform(0, 1, (n + 1, n + 1))
    gx = (xn + 0.5) * n
    gy = (yn + 0.5) * n
    ix = np.clip(np.floor(gx).astype(int), 0, n - 1)
    iy = np.clip(np.floor(gy).astype(int), 0, n - 1)
    fx = _ss(0, 1, gx - ix)
    fy = _ss(0, 1, gy - iy)
    top = g[iy, ix] * (1 - fx) + g[iy, ix + 1] * fx
    bot = g[iy + 1, ix] * (1 - fx) + g[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bot * fy


def head_points(identity: Identity, aus: dict[str, float], uv: np.ndarray, n_face: int = 32) -> np.ndarray:
    """3D head-frame skin points (N, 3) at parameters ``uv`` (N, 2), with the AUs applied.

    The radius is interpolated on the cached mesh grid of density ``n_face``, so the points lie on
    the rendered (piecewise-linear) surface.
    """
    a = _au_vector(aus)
    u, v = uv[:, 0], uv[:, 1]
    st = _static_head(identity, n_face)
    r = _interp_grid(st, st.r_skin, u, v)
    return _ORIGIN + _ray_dirs(u, v) * r[:, None] + _au_displacement(u, v, identity, a)


def landmarks_3d(identity: Identity, aus: dict[str, float], n_face: int = 32) -> np.ndarray:
    """The 68 iBUG landmarks as head-frame 3D points (68, 3)."""
    a = _au_vector(aus)
    uv = _landmark_uv(identity, a, _jaw_uv(identity))
    return head_points(identity, aus, uv, n_face)


def render_face(identity: Identity, aus: dict[str, float], yaw: float, pitch: float, roll: float,
                scene: Scene, size: int, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Render one face -> ((size, size, 3) uint8 RGB, (68, 2) float32 landmarks (x, y) in pixels).

    ``aus`` maps AU names (:data:`AU_NAMES`) to FACS intensities 0..5 (missing ones are 0).
    ``supersample`` renders at that multiple of ``size`` and box-filters down (anti-aliasing).
    """
    image, lm, _ = render_face_visibility(identity, aus, yaw, pitch, roll, scene, size, supersample)
    return image, lm


def render_face_visibility(identity: Identity, aus: dict[str, float], yaw: float, pitch: float, roll: float,
                           scene: Scene, size: int, supersample: int = 1):
    """:func:`render_face` plus a (68,) bool array: is each landmark unoccluded (z-buffer test)?"""
    if size < 16:
        raise ValueError(f"image size {size} is too small (needs >= 16)")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    a = _au_vector(aus)
    R = rotation(yaw, pitch, roll)
    cam = _Camera(R, scene, size, supersample)
    H = W = size * supersample
    n_face = _density(size * supersample)
    st = _static_head(identity, n_face)

    # --- head mesh: static radius + AU displacement, then the static body meshes
    p = _ORIGIN + _ray_dirs(st.u, st.v) * st.r[..., None] + _au_displacement(st.u, st.v, identity, a)  # (Nv, Nu, 3)
    n = _vertex_normals_grid(p)
    meshes = [(p.reshape(-1, 3), n.reshape(-1, 3), np.stack([st.u, st.v], -1).reshape(-1, 2), st.tris, 0, True)]
    meshes += _body_meshes(identity)
    verts, norms, uvs, tris, mats, culls = [], [], [], [], [], []
    base = 0
    for pos, nrm, uv, tri, mat, cull in meshes:
        verts.append(pos)
        norms.append(nrm)
        uvs.append(uv)
        tris.append(tri + base)
        mats.append(np.full(len(tri), mat))
        culls.append(np.full(len(tri), cull))
        base += len(pos)
    verts = np.concatenate(verts)
    norms = np.concatenate(norms)
    uvs = np.concatenate(uvs)
    tris = np.concatenate(tris)
    mats = np.concatenate(mats)
    culls = np.concatenate(culls)

    pc = cam.to_cam(verts)
    xy, depth = cam.project(pc)
    tri_id, bary = rasterize(xy, depth, tris, culls, H, W)

    # --- shading in linear RGB
    img = _background(scene, H, W).reshape(-1, 3) ** _GAMMA
    hit = np.flatnonzero(tri_id >= 0)
    t = tri_id.take(hit)
    b = bary.take(hit, axis=0)  # (M, 3)
    corner = [tris[:, k].take(t) for k in range(3)]

    def interp(attr):  # barycentric interpolation of a per-vertex attribute (N, C) -> (M, C)
        return sum(attr.take(c, axis=0) * b[:, k:k + 1] for k, c in enumerate(corner))

    nc = interp(norms) @ R.T
    uv = interp(uvs)
    mat = mats.take(t)
    albedo = np.zeros((len(hit), 3))
    spec = np.zeros(len(hit))
    cav = np.ones(len(hit))
    m0 = mat == 0
    if np.any(m0):
        albedo[m0], spec[m0], cav[m0] = _head_texture(uv[m0, 0], uv[m0, 1], identity, a)
    m1 = mat == 1
    if np.any(m1):
        # the hair sheet is double-sided: its normal is the horizontal radial direction, facing the camera
        pw = interp(verts)[m1]
        nn = np.stack([pw[:, 0], np.zeros(len(pw)), pw[:, 2] + 0.12], -1)
        nn /= np.maximum(np.linalg.norm(nn, axis=-1, keepdims=True), 1e-9)
        nn = nn @ R.T
        nn = np.where(nn[:, 2:3] < 0, -nn, nn)
        nc[m1] = nn
        hc, hs = _hair_albedo(uv[m1, 0], uv[m1, 1], identity)
        albedo[m1], spec[m1] = hc, hs
        cav[m1] = 0.8
    m2 = mat == 2
    if np.any(m2):
        albedo[m2] = np.asarray(identity.skin_rgb) * 0.97
        spec[m2] = 0.04
        cav[m2] = 1.0 - 0.45 * _ss(-1.0, -0.5, uv[m2, 1])
    m3 = mat == 3
    if np.any(m3):
        albedo[m3] = np.asarray(scene.cloth_rgb) * (0.9 + 0.1 * np.cos(6 * uv[m3, 0]))[:, None]  # even in u: mirror-symmetric
        spec[m3] = 0.02
    nc /= np.maximum(np.linalg.norm(nc, axis=-1, keepdims=True), 1e-9)
    L = np.asarray(scene.light_dir)
    lam = np.clip(nc @ L, 0.0, None)
    hv = L + np.array([0.0, 0.0, 1.0])
    hv /= np.linalg.norm(hv)
    sp = spec * np.clip(nc @ hv, 0.0, None) ** 24 * (lam > 0)
    light = np.asarray(scene.light_rgb)
    amb = np.asarray(scene.ambient_rgb)
    lin = _to_lin(albedo) * (cav[:, None] * amb + lam[:, None] * light * (0.6 + 0.4 * cav[:, None])) + sp[:, None] * light
    img[hit] = lin
    img = img.reshape(H, W, 3)
    if supersample > 1:
        img = img.reshape(size, supersample, size, supersample, 3).mean(axis=(1, 3))
    out = np.clip(img, 0.0, 1.0) ** (1.0 / _GAMMA) * 255.0
    if scene.noise_std > 0:
        noise = np.random.default_rng(scene.noise_seed).normal(0.0, scene.noise_std, out.shape)
        out = out + (noise[:, ::-1] if scene.mirror else noise)
    image = np.clip(np.rint(out), 0, 255).astype(np.uint8)

    lm3 = landmarks_3d(identity, aus, n_face)
    lxy, _ = cam.project(cam.to_cam(lm3), ss=1)
    # visibility: the landmark is no further than the nearest surface at its (render-resolution) pixel
    sxy, sdepth = cam.project(cam.to_cam(lm3))
    px = np.clip(np.rint(sxy).astype(np.int64), 0, W - 1)
    pix = px[:, 1] * W + px[:, 0]
    t_l = tri_id[pix]
    zbuf = np.where(t_l >= 0, (bary[pix] * depth[tris[np.maximum(t_l, 0)]]).sum(1), np.inf)
    visible = sdepth <= zbuf + 0.03
    return image, lxy.astype(np.float32), visible

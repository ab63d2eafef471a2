"""The authors' PCL checkpoints (``best.pth``, ``<epoch>.pth``): their layout and the key mapping to ours.

docs/method.md §1.8 and 2.9: the authors' ``main.py`` saves ``torch.save({'epoch': int, 'state_dict': ...})``
where ``state_dict`` comes from an ``nn.DataParallel``-wrapped ExpPose model, so every key starts with
``module.``, followed by ``encoder.`` (the FaceCycleBackbone, 1.1-1.3), ``exp_fc.`` / ``pose_fc.``
(projection MLPs, 1.4) or ``decoder.`` (the Generator, 1.5).

What is stated and what is inferred
-----------------------------------
Stated by docs/method.md (1.1-1.4): the stage names (conv1, layer1, layer2_1, resblock1, resblock2,
layer2_2, layer3_1, layer3_2_exp, layer3_2_pose), every conv's kernel size, channels and bias, the
order of the layers inside each stage, the attention conv names ``g``/``theta``/``phi`` (1x1, C -> C),
that there is no normalisation layer in the encoder, and the projection MLP structure
Linear-ReLU-Linear-BatchNorm1d.

Inferred (not written in the doc): that each stage is one ``nn.Sequential`` holding exactly the
listed modules in order, activations included, so that parameter-holding modules sit at the indices
the doc's layer order implies (conv1 = [conv, LReLU, conv, LReLU] -> ``conv1.0``, ``conv1.2``; layer1 =
[conv, LReLU, SelfAttention, conv, LReLU] -> ``layer1.0``, ``layer1.2.{g,theta,phi}``, ``layer1.3``;
heads -> ``.0``, ``.2``); that the residual block names its convs ``conv1`` / ``conv2`` and holds no
other parameters (no downsample); and that exp_fc / pose_fc are ``nn.Sequential`` with the Linears at
``.0`` and ``.2`` and the BatchNorm1d at ``.3``. We cross-checked these names against the public
source of DreamMr/PCL (``Models/networks.py``, commit 6150db4); the import is still strict, so if a
real file disagrees, it fails with the list of unmatched keys instead of loading wrong weights.

Our :class:`~pclbench.models.FaceCycleEncoder` uses the same inner layout on purpose, so the mapping
is a rename of the two head stages (``layer3_2_exp`` -> ``face_head``, ``layer3_2_pose`` ->
``pose_head``). It is still written out key by key below (:data:`AUTHORS_ENCODER_LAYOUT`), so that a
change on our side cannot silently change what an authors' key loads into.

This module only knows the authors' layout (it imports no other pclbench checkpoint code):
:func:`pclbench.pretrain.checkpoint.load_encoder` reads an authors' encoder through it, and
:mod:`pclbench.pretrain.import_official` (``pclbench import-official``) converts a whole file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

# Channel expressions: "3" is the RGB input, "w"/"2w"/"4w" are multiples of the encoder width
# (64 in the paper; inferred from conv1's weight, :func:`infer_width`).
# stage -> ordered list of (authors' conv key prefix, our conv key prefix, (out, in, kernel)).
# Each conv has a weight (out, in, k, k) and a bias (out,) (1.1: every conv has a bias).
AUTHORS_ENCODER_LAYOUT: dict[str, list[tuple[str, str, tuple[str, str, int]]]] = {
    "conv1": [("conv1.0", "conv1.0", ("w", "3", 7)),
              ("conv1.2", "conv1.2", ("w", "w", 3))],
    "layer1": [("layer1.0", "layer1.0", ("w", "w", 3)),
               ("layer1.2.g", "layer1.2.g", ("w", "w", 1)),
               ("layer1.2.theta", "layer1.2.theta", ("w", "w", 1)),
               ("layer1.2.phi", "layer1.2.phi", ("w", "w", 1)),
               ("layer1.3", "layer1.3", ("w", "w", 3))],
    "layer2_1": [("layer2_1.0", "layer2_1.0", ("2w", "w", 3)),
                 ("layer2_1.2.g", "layer2_1.2.g", ("2w", "2w", 1)),
                 ("layer2_1.2.theta", "layer2_1.2.theta", ("2w", "2w", 1)),
                 ("layer2_1.2.phi", "layer2_1.2.phi", ("2w", "2w", 1)),
                 ("layer2_1.3", "layer2_1.3", ("2w", "2w", 3))],
    "resblock1": [("resblock1.conv1", "resblock1.conv1", ("2w", "2w", 3)),
                  ("resblock1.conv2", "resblock1.conv2", ("2w", "2w", 3))],
    "resblock2": [("resblock2.conv1", "resblock2.conv1", ("2w", "2w", 3)),
                  ("resblock2.conv2", "resblock2.conv2", ("2w", "2w", 3))],
    "layer2_2": [("layer2_2.0", "layer2_2.0", ("2w", "2w", 3)),
                 ("layer2_2.2", "layer2_2.2", ("2w", "2w", 3))],
    "layer3_1": [("layer3_1.0", "layer3_1.0", ("4w", "2w", 3)),
                 ("layer3_1.2", "layer3_1.2", ("2w", "4w", 3))],
    "layer3_2_exp": [("layer3_2_exp.0", "face_head.0", ("2w", "2w", 3)),
                     ("layer3_2_exp.2", "face_head.2", ("2w", "2w", 3))],
    "layer3_2_pose": [("layer3_2_pose.0", "pose_head.0", ("2w", "2w", 3)),
                      ("layer3_2_pose.2", "pose_head.2", ("2w", "2w", 3))],
}

# exp_fc / pose_fc (1.4): authors' nn.Sequential(Linear, ReLU, Linear, BatchNorm1d) -> our
# ProjectionMLP.net with the same indices. (authors' key suffix, our key suffix)
AUTHORS_PROJECTION_KEYS: list[tuple[str, str]] = [
    ("0.weight", "net.0.weight"), ("0.bias", "net.0.bias"),
    ("2.weight", "net.2.weight"), ("2.bias", "net.2.bias"),
    ("3.weight", "net.3.weight"), ("3.bias", "net.3.bias"),
    ("3.running_mean", "net.3.running_mean"), ("3.running_var", "net.3.running_var"),
    ("3.num_batches_tracked", "net.3.num_batches_tracked"),
]

TOP_MODULES = ("encoder", "exp_fc", "pose_fc", "decoder")  # ExpPoseModel's children (1.4-1.5)


def _channels(expr: str, width: int) -> int:
    if expr == "3":
        return 3
    mult = expr[:-1] or "1"
    return int(mult) * width


def encoder_key_map(width: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """authors' key (under ``encoder.``) -> (our FaceCycleEncoder key, expected shape), in layout order."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for convs in AUTHORS_ENCODER_LAYOUT.values():
        for theirs, ours, (c_out, c_in, k) in convs:
            o, i = _channels(c_out, width), _channels(c_in, width)
            out[f"{theirs}.weight"] = (f"{ours}.weight", (o, i, k, k))
            out[f"{theirs}.bias"] = (f"{ours}.bias", (o,))
    return out


@dataclass
class AuthorsCheckpoint:
    """An authors' file split by top-level module; ``epoch`` is None when the file had no wrapper."""

    epoch: int | None
    encoder: dict[str, Tensor]
    exp_fc: dict[str, Tensor]
    pose_fc: dict[str, Tensor]
    decoder: dict[str, Tensor]
    data_parallel: bool


def is_authors_checkpoint(obj: Any) -> bool:
    """True for ``{'epoch', 'state_dict'}`` dicts and bare state_dicts of the authors' model."""
    if not isinstance(obj, Mapping) or "format" in obj:
        return False
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, Mapping) or not sd:
        return False
    keys = [k.removeprefix("module.") for k in sd if isinstance(k, str)]
    return any(k.startswith("encoder.") or k.startswith("conv1.") for k in keys)


def split_authors_state(obj: Mapping[str, Any], source: str = "checkpoint") -> AuthorsCheckpoint:
    """Strip ``module.`` (DataParallel, 2.9) and split keys by the ExpPose child they belong to.

    Accepts the saved dict ``{'epoch', 'state_dict'}``, or a bare state_dict of the ExpPose model
    (``encoder.*`` ...) or of the bare FaceCycleBackbone (``conv1.*`` ..., what ``eval: True`` builds, 1.8).
    """
    epoch = None
    sd: Any = obj
    if "state_dict" in obj:
        sd = obj["state_dict"]
        epoch = obj.get("epoch")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
            raise ValueError(f"{source}: 'epoch' must be an int, got {epoch!r}")
    if not isinstance(sd, Mapping) or not sd:
        raise ValueError(f"{source}: 'state_dict' must be a non-empty dict of tensors")
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{source}: state_dict entries that are not str -> tensor: {', '.join(bad[:10])}")
    keys = list(sd)
    dp = all(k.startswith("module.") for k in keys)
    if not dp and any(k.startswith("module.") for k in keys):
        mixed = [k for k in keys if not k.startswith("module.")]
        raise ValueError(f"{source}: some keys have the DataParallel prefix 'module.' and some do not "
                         f"(without: {', '.join(mixed[:10])})")
    plain = {k.removeprefix("module."): v for k, v in sd.items()}
    parts: dict[str, dict[str, Tensor]] = {m: {} for m in TOP_MODULES}
    if not any(k.split(".", 1)[0] in TOP_MODULES for k in plain):
        parts["encoder"] = dict(plain)  # a bare FaceCycleBackbone state_dict (1.8)
    else:
        unknown = []
        for k, v in plain.items():
            top, _, rest = k.partition(".")
            if top in parts and rest:
                parts[top][rest] = v
            else:
                unknown.append(("module." if dp else "") + k)
        if unknown:
            raise ValueError(f"{source}: keys outside the authors' ExpPose modules "
                             f"({', '.join(TOP_MODULES)}): {', '.join(unknown[:20])}")
    if not parts["encoder"]:
        raise ValueError(f"{source}: no encoder keys ('module.encoder.*') in the state_dict")
    return AuthorsCheckpoint(epoch, parts["encoder"], parts["exp_fc"], parts["pose_fc"], parts["decoder"], dp)


def infer_width(encoder_state: Mapping[str, Tensor], source: str = "checkpoint") -> int:
    """Encoder width from conv1's first weight, ``(w, 3, 7, 7)`` (1.1: 64 in the paper)."""
    w = encoder_state.get("conv1.0.weight")
    if w is None:
        raise ValueError(f"{source}: no encoder key 'conv1.0.weight' (the 7x7 stem conv, docs/method.md §1.1); "
                         f"cannot infer the width. Encoder keys start with: "
                         f"{', '.join(sorted(encoder_state)[:8])}")
    if w.dim() != 4 or tuple(w.shape[1:]) != (3, 7, 7):
        raise ValueError(f"{source}: conv1.0.weight has shape {tuple(w.shape)}, expected (w, 3, 7, 7)")
    return int(w.shape[0])


def map_encoder_state(encoder_state: Mapping[str, Tensor], source: str = "checkpoint"
                      ) -> tuple[int, dict[str, Tensor]]:
    """Strict mapping of the authors' encoder keys to a FaceCycleEncoder state_dict.

    Every authors' encoder key must be consumed and every expected key present with its exact shape;
    otherwise ValueError naming the missing, unexpected and mis-shaped keys. Returns (width, state).
    """
    width = infer_width(encoder_state, source)
    key_map = encoder_key_map(width)
    missing = [f"encoder.{k}" for k in key_map if k not in encoder_state]
    extra = [f"encoder.{k}" for k in encoder_state if k not in key_map]
    shapes = [f"encoder.{k} {tuple(encoder_state[k].shape)} (expected {shape})"
              for k, (_, shape) in key_map.items()
              if k in encoder_state and tuple(encoder_state[k].shape) != shape]
    if missing or extra or shapes:
        lines = [f"{source}: the encoder does not match the authors' FaceCycleBackbone layout "
                 f"(width {width}, pclbench.pretrain.official.AUTHORS_ENCODER_LAYOUT):"]
        if missing:
            lines.append(f"  missing keys: {', '.join(missing)}")
        if extra:
            lines.append(f"  unexpected keys: {', '.join(extra)}")
        if shapes:
            lines.append(f"  wrong shapes: {'; '.join(shapes)}")
        raise ValueError("\n".join(lines))
    # fp32 copies: AMP training keeps fp32 master weights, but a half-precision export must not
    # change our encoder's dtype (load_state_dict would copy-cast anyway; this makes it explicit).
    return width, {ours: encoder_state[k].to(torch.float32).clone() for k, (ours, _) in key_map.items()}


def map_projection_state(part: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """authors' exp_fc / pose_fc keys -> our ProjectionMLP keys, or None if the key set differs."""
    theirs = dict(AUTHORS_PROJECTION_KEYS)
    if set(part) != set(theirs):
        return None
    return {theirs[k]: v.clone() for k, v in part.items()}


def encoder_from_authors(ck: AuthorsCheckpoint, source: str = "checkpoint"):
    """Our FaceCycleEncoder holding the authors' encoder weights (strict, see :func:`map_encoder_state`)."""
    from pclbench.models import build_encoder

    width, state = map_encoder_state(ck.encoder, source)
    encoder = build_encoder("facecycle", width=width)
    encoder.load_state_dict(state, strict=True)
    return encoder

"""pclbench checkpoints: the full pretraining state in one file, loadable with ``weights_only=True``.

Stage 3 of docs/architecture.md. A checkpoint holds only tensors and plain containers of
strings/numbers/bools (RNG states are stored as tensors, the config as a plain dict), so
``torch.load(weights_only=True)`` reads it without unpickling arbitrary objects.

Keys (format ``pclbench-checkpoint/1``)::

    format          "pclbench-checkpoint/1"
    method          registered method name ("pcl", "random", ...)
    encoder         encoder.spec = {"name": ..., "kwargs": {...}}: enough to rebuild it
    encoder_state   encoder.state_dict()
    model           the whole method's state_dict (encoder + projections + decoder ...)
    optimizer       optimizer.state_dict() or None (methods that do not train)
    scheduler       lr scheduler state_dict or None
    scaler          GradScaler state_dict or None
    extra           method extra state (e.g. the DWA loss history, docs/method.md §2.8)
    rng             {"torch", "numpy", "python", "cuda", + trainer generators}: tensors
    epoch           last completed epoch (1-based; 0 = nothing trained)
    iteration       iterations completed in total
    finished        True when the run reached its last epoch
    config          the config sections the run used (plain dict)

Writes go to a temporary file in the same folder and are renamed over the target
(:func:`pclbench.core.io.atomic_file`), so a crash never leaves a half-written checkpoint.

The authors' DataParallel checkpoints (``{'epoch', 'state_dict': {'module.encoder.*', ...}}``,
docs/method.md §1.8, 2.9) are not a pclbench format: :func:`load_checkpoint` rejects them with a ValueError
that says so, :func:`load_encoder` reads their encoder (via :mod:`pclbench.pretrain.official`), and
``pclbench import-official`` (:mod:`pclbench.pretrain.import_official`) converts them into this
format (key ``imported_from`` added).
"""
from __future__ import annotations

import errno
import inspect
import os
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from pclbench.core.io import atomic_file
from pclbench.pretrain.official import encoder_from_authors, is_authors_checkpoint, split_authors_state

FORMAT = "pclbench-checkpoint/1"
REQUIRED_KEYS = ("format", "method", "encoder", "encoder_state", "model", "optimizer", "scheduler",
                 "scaler", "extra", "rng", "epoch", "iteration", "finished", "config")


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the one-line message names the file and the reason.

    ``pclbench`` prints it without a traceback and exits 1 (cli.main). A ValueError, so callers that
    caught the earlier ValueErrors still do.
    """


# torch's weights_only unpickler names what it refused in one of two forms (torch 2.x,
# torch/_weights_only_unpickler.py): "Unsupported global: GLOBAL {full_path} was not an allowed global
# by default." (any module outside the allow-list, e.g. fractions.Fraction) and "Trying to load
# unsupported GLOBAL {full_path} whose module {module} is blocked." (os/posix, subprocess, ...).
# torch/serialization.py _get_wo_message wraps either in a multi-line text whose first line never
# names it and which advises weights_only=False; only the name is kept here.
_BLOCKED_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# torch's boilerplate lines around the unpickler's own message (same file, _get_wo_message / UNSAFE_MESSAGE)
_BOILERPLATE = ("Weights only load failed", "In PyTorch 2.6", "(1)", "(2)", "Check the documentation",
                "Please file an issue")


def describe_load_error(e: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` failed, keeping the blocked global's name.

    Only the global's dotted name (``posix.system``) is kept from torch's text, not its advice to
    allow-list it or to load with ``weights_only=False``, which would run the file's code.
    """
    text = _ANSI.sub("", str(e))
    m = _BLOCKED_GLOBAL.search(text)
    if m:
        return (f"refused by torch.load(weights_only=True): it references the global {m.group(1)!r}, "
                f"which a checkpoint of plain tensors never needs (the file may run code when unpickled; "
                f"it was not)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(_BOILERPLATE)]
    first = (useful or lines or [""])[0].removeprefix("WeightsUnpickler error: ")
    return f"torch.load(weights_only=True) failed: {type(e).__name__}" + (f": {first}" if first else "")


def safe_torch_load(path: Path | str, map_location: Any = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)``; any failure -> :class:`CheckpointError` (one line)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError (a blocked global), or anything from a non-torch file
        raise CheckpointError(f"{path}: {describe_load_error(e)}") from e


class DiskFullError(OSError):
    """Writing a checkpoint failed with ENOSPC; the message says so and names the file and folder."""


def save_checkpoint(path: Path | str, state: Mapping[str, Any], previous: Path | str | None = None) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`pclbench.core.io.atomic_file`: a temporary file in
    the same folder, fsync, then rename).

    If writing fails, the temporary file is removed and the previous ``path`` (if any) is untouched.
    ``previous``: where the file ``path`` held so far is kept (renamed there, after the new one is on
    disk and before it takes ``path``), so a reader always finds a complete ``path`` or ``previous``.
    A full disk (``OSError`` ENOSPC) raises :class:`DiskFullError` naming the file and folder.
    """
    path = Path(path)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"save_checkpoint({path}): state lacks key(s) {', '.join(missing)}")
    if state["format"] != FORMAT:
        raise ValueError(f"save_checkpoint({path}): format must be {FORMAT!r}, got {state['format']!r}")
    try:
        with atomic_file(path) as tmp:  # removes its temporary on any error
            with open(tmp, "wb") as f:
                torch.save(dict(state), f)
                f.flush()
                os.fsync(f.fileno())  # the data is on disk before any rename makes it the current file
            if previous is not None and path.is_file():
                os.replace(path, previous)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(errno.ENOSPC, f"disk full: writing {path} failed, no space left on the file "
                                f"system of {path.parent} (the partial file was removed; {path} is "
                                "unchanged); free space there and rerun") from e
        raise
    return path


def _torch_load(path: Path, map_location: Any) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a non-torch file fails anywhere inside the unpickler (IndexError, ...)
        raise CheckpointError(f"{path} is not a pclbench checkpoint: {describe_load_error(e)}") from e


def _check_state(path: Path, state: Any) -> dict:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a pclbench checkpoint: it holds a {type(state).__name__}, "
                         f"expected a dict with format {FORMAT!r}")
    fmt = state.get("format")
    if fmt != FORMAT:
        keys = ", ".join(sorted(map(str, state))[:8])
        hint = ""
        if "state_dict" in state:
            hint = (" It looks like a checkpoint of the authors' code ({'epoch', 'state_dict'}); "
                    "convert it with `pclbench import-official SRC DST` (pclbench.pretrain.import_official), "
                    "or read its encoder directly with load_encoder.")
        raise CheckpointError(f"{path} is not a pclbench checkpoint: format is {fmt!r}, expected {FORMAT!r} "
                         f"(top-level keys: {keys}).{hint}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: pclbench checkpoint lacks key(s) {', '.join(missing)}")
    return state


def load_checkpoint(path: Path | str, map_location: Any = "cpu") -> dict:
    """Read a pclbench checkpoint with ``weights_only=True``; ValueError naming what is wrong."""
    path = Path(path)
    return _check_state(path, _torch_load(path, map_location))


def load_encoder(path: Path | str, map_location: Any = "cpu") -> nn.Module:
    """The encoder of a pclbench checkpoint or of an authors' checkpoint; frozen, eval mode.

    pclbench checkpoints: rebuilt from the stored spec, weights loaded strictly. Authors' files
    (``{'epoch', 'state_dict': {'module.encoder.*', ...}}``, docs/method.md §1.8, 2.9; also without the
    DataParallel ``module.`` prefix): mapped strictly by :mod:`pclbench.pretrain.official` into a
    ``facecycle`` encoder of the width conv1 implies; any unmatched key raises a ValueError naming it.
    """
    from pclbench.models import build_encoder

    path = Path(path)
    obj = _torch_load(path, map_location)
    if is_authors_checkpoint(obj):
        encoder = encoder_from_authors(split_authors_state(obj, str(path)), str(path))
    else:
        state = _check_state(path, obj)
        spec = check_encoder_spec(path, state["encoder"])
        encoder = build_encoder(spec["name"], **spec["kwargs"])
        encoder.load_state_dict(state["encoder_state"], strict=True)
    encoder.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


def check_encoder_spec(path: Path | str, spec: Any) -> dict:
    """The checkpoint's ``encoder`` spec, checked before anything is built (it is untrusted data).

    A registered name, keyword arguments the encoder's constructor takes, and a size below
    :data:`pclbench.models.encoders.MAX_ENCODER_PARAM_BYTES` computed in closed form from the spec
    (:func:`pclbench.models.encoders.facecycle_param_count`): a spec asking for width 100000 fails
    here instead of allocating terabytes. CheckpointError naming the file and the spec value.
    """
    from pclbench.models import ENCODERS
    from pclbench.models.encoders import RESNET_WIDTH, ResNetEncoder, check_encoder_size

    if not isinstance(spec, dict) or "name" not in spec or not isinstance(spec.get("kwargs"), dict):
        raise CheckpointError(f"{path}: 'encoder' must be a spec {{'name': str, 'kwargs': dict}}, got {spec!r:.200}")
    name, kwargs = spec["name"], spec["kwargs"]
    if not isinstance(name, str) or name not in ENCODERS:
        raise CheckpointError(f"{path}: encoder spec names {name!r:.80}, not a registered encoder "
                              f"({', '.join(ENCODERS.names())})")
    cls = ENCODERS.get(name)
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(map(str, set(kwargs) - accepted))
    if unknown:
        raise CheckpointError(f"{path}: encoder spec {name!r} has argument(s) {', '.join(unknown)} that the "
                              f"encoder does not take (it takes {', '.join(sorted(accepted))})")
    width = kwargs.get("width")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise CheckpointError(f"{path}: encoder spec width must be a positive integer, got {width!r:.80}")
    if isinstance(cls, type) and issubclass(cls, ResNetEncoder) and width != RESNET_WIDTH:
        raise CheckpointError(f"{path}: encoder spec {name!r} has width {width}; torchvision's ResNets have the "
                              f"fixed base width {RESNET_WIDTH}")
    try:
        check_encoder_size(name, width, f"{path}: encoder spec")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return spec


# --- RNG states as tensors (weights_only-safe) -------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    """Global RNG states of python, numpy, torch (CPU) and CUDA, as tensors and ints."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    out: dict[str, Any] = {
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return out


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])

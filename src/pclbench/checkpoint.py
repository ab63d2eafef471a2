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
(:func:`os.replace`), so a crash never leaves a half-written checkpoint.

The authors' DataParallel checkpoints (``{'epoch', 'state_dict': {'module.encoder.*', ...}}``,
docs/method.md §1.8, 2.9) are not a pclbench format: :func:`load_checkpoint` rejects them with a ValueError
that says so, :func:`load_encoder` reads their encoder (via :mod:`pclbench.official`), and
``pclbench import-official`` converts them into this format (key ``imported_from`` added).
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

FORMAT = "pclbench-checkpoint/1"
REQUIRED_KEYS = ("format", "method", "encoder", "encoder_state", "model", "optimizer", "scheduler",
                 "scaler", "extra", "rng", "epoch", "iteration", "finished", "config")


def save_checkpoint(path: Path | str, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then rename).

    If writing fails, the temporary file is removed and the previous ``path`` (if any) is untouched.
    """
    path = Path(path)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"save_checkpoint({path}): state lacks key(s) {', '.join(missing)}")
    if state["format"] != FORMAT:
        raise ValueError(f"save_checkpoint({path}): format must be {FORMAT!r}, got {state['format']!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(dict(state), tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _torch_load(path: Path, map_location: Any) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a non-torch file fails anywhere inside the unpickler (IndexError, ...)
        raise ValueError(f"{path} is not a pclbench checkpoint (torch.load with weights_only=True "
                         f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__})") from e


def _check_state(path: Path, state: Any) -> dict:
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a pclbench checkpoint: it holds a {type(state).__name__}, "
                         f"expected a dict with format {FORMAT!r}")
    fmt = state.get("format")
    if fmt != FORMAT:
        keys = ", ".join(sorted(map(str, state))[:8])
        hint = ""
        if "state_dict" in state:
            hint = (" It looks like a checkpoint of the authors' code ({'epoch', 'state_dict'}); "
                    "convert it with `pclbench import-official SRC DST` (pclbench.official), "
                    "or read its encoder directly with load_encoder.")
        raise ValueError(f"{path} is not a pclbench checkpoint: format is {fmt!r}, expected {FORMAT!r} "
                         f"(top-level keys: {keys}).{hint}")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path}: pclbench checkpoint lacks key(s) {', '.join(missing)}")
    return state


def load_checkpoint(path: Path | str, map_location: Any = "cpu") -> dict:
    """Read a pclbench checkpoint with ``weights_only=True``; ValueError naming what is wrong."""
    path = Path(path)
    return _check_state(path, _torch_load(path, map_location))


def load_encoder(path: Path | str, map_location: Any = "cpu") -> nn.Module:
    """The encoder of a pclbench checkpoint or of an authors' checkpoint; frozen, eval mode.

    pclbench checkpoints: rebuilt from the stored spec, weights loaded strictly. Authors' files
    (``{'epoch', 'state_dict': {'module.encoder.*', ...}}``, docs/method.md §1.8, 2.9; also without the
    DataParallel ``module.`` prefix): mapped strictly by :mod:`pclbench.official` into a
    ``facecycle`` encoder of the width conv1 implies; any unmatched key raises a ValueError naming it.
    """
    from .models import build_encoder
    from .official import encoder_from_authors, is_authors_checkpoint, split_authors_state

    path = Path(path)
    obj = _torch_load(path, map_location)
    if is_authors_checkpoint(obj):
        encoder = encoder_from_authors(split_authors_state(obj, str(path)), str(path))
    else:
        state = _check_state(path, obj)
        spec = state["encoder"]
        if not isinstance(spec, dict) or "name" not in spec or "kwargs" not in spec:
            raise ValueError(f"{path}: 'encoder' must be a spec {{'name', 'kwargs'}}, got {spec!r}")
        encoder = build_encoder(spec["name"], **spec["kwargs"])
        encoder.load_state_dict(state["encoder_state"], strict=True)
    encoder.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


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

"""Checkpoints that survive a crash: each is a folder `step_XXXXXXXX/` holding the weights as
safetensors, the rest of the training state as a torch file, and a JSON description. It is written
under a temporary name and renamed into place only when whole, so a folder with a final name is
always complete; older ones are deleted only after the new one exists."""
from __future__ import annotations

import json
import pickle
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError

PATTERN = re.compile(r"^step_(\d{8})$")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(root: Path, step: int, weights: dict[str, dict[str, torch.Tensor]], state: dict,
                    meta: dict, keep: int = 2) -> Path:
    """Write weights (name → state_dict, e.g. {"model": ..., "ema": ...}), state (optimiser, sampler,
    counters) and meta (config, shapes) to root/step_XXXXXXXX atomically; keep the newest `keep`."""
    root = Path(root)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, tensors in weights.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / f"{name}.safetensors")
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2))
        for f in tmp.iterdir():
            _fsync(f)
        if final.exists():  # the same step written again (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(root)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write checkpoint {final} ({e.strerror or e}); earlier checkpoints are untouched") from None
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and PATTERN.match(p.name))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: Path, map_location="cpu") -> tuple[dict, dict, dict]:
    """(weights, state, meta) from a checkpoint folder. A missing, truncated or corrupted file is a
    UserError naming it; earlier checkpoints in the same folder stay usable."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint {str(path)!r} does not exist; expected a folder like runs/x/checkpoints/step_00001000")
    current = path / "meta.json"
    try:
        meta = json.loads(current.read_text())
        weights = {}
        for f in sorted(path.glob("*.safetensors")):
            current = f
            weights[f.stem] = load_file(f, device=str(map_location))
        current = path / "state.pt"
        state = torch.load(current, map_location=map_location, weights_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError, EOFError, pickle.UnpicklingError) as e:
        others = [str(p) for p in list_checkpoints(path.parent) if p != path]
        hint = f"; an earlier checkpoint may still be usable: {others[-1]}" if others else ""
        raise UserError(f"checkpoint file {current} is unreadable or corrupted ({type(e).__name__}){hint}") from None
    if not weights:
        raise UserError(f"checkpoint {path} holds no .safetensors weights")
    return weights, state, meta

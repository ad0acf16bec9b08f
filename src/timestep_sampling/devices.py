"""Turn a device name from a user into a torch.device, or a UserError that says what is available."""
from __future__ import annotations

import torch

from .errors import UserError


def available_devices() -> list[str]:
    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def check_device(device) -> torch.device | None:
    """None stays None (the caller's default: CPU); anything else must name a device this machine has."""
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; valid here: {', '.join(available_devices())}") from None
    present = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (resolved.index or 0) < torch.cuda.device_count(),
        "mps": "mps" in available_devices(),
    }.get(resolved.type, False)
    if not present:
        raise UserError(f"device {str(device)!r} is not available on this machine; "
                        f"valid here: {', '.join(available_devices())}")
    return resolved

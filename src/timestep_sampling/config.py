"""One run = one TrainConfig: built from defaults, an optional JSON/TOML file, then command-line flags.
The effective config is saved beside the results so that a run can be read, resumed or repeated."""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import UserError, require, unknown_choice
from .methods import method_label

PRECISIONS = ("fp32", "bf16")  # of the training forward pass; see TrainConfig.precision


@dataclass
class TrainConfig:
    # data and output
    data: str = "digits"
    out: str = "runs/digits"
    # diffusion
    schedule: str = "linear"
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    variance: str = "fixed-large"
    # "ddpm" (ε-prediction on the schedule above) or "flow" (rectified flow with a flow-... method;
    # options as a spec, e.g. "flow:sample_steps=20"; objectives.py)
    objective: str = "ddpm"
    # which timesteps and how to weight them: a method preset, optionally overridden part by part
    method: str = "uniform"
    sampler: str | None = None
    weighting: str | None = None
    # model and optimiser
    model: str = "tiny"
    dropout: float = 0.1
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # EMA warm-up: the update after n earlier ones uses min(ema_decay, (1 + n) / (10 + n)), so the average
    # starts from the trained weights, not the random initial ones (train.ema_decay_at says why this rule).
    # False: a constant ema_decay, the trainer's rule before the warm-up existed.
    ema_warmup: bool = True
    seed: int = 0
    device: str = "auto"
    # speed: bf16 autocast around the training step's forward pass (the weights, the optimiser, the loss,
    # the adaptive sampler's probes and every evaluation stay float32/64), the channels-last memory format,
    # and torch.compile of the training forward pass (opt-in: it compiles for minutes before the first step)
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    # faults: non-finite steps are skipped; this many in a row stop the run
    max_bad_steps: int = 20
    # evaluation, samples, checkpoints, logs
    eval_every: int = 500
    eval_exact_below: int = 20  # the estimate during training: every t below this exactly, then one t from
    eval_strata: int = 80       # each of this many log-spaced strata above (bound.estimate_bpd)
    final_exact: bool = True
    # the test images every bits/dim of the run is scored on: the first this many of the test split (None: all
    # of it). A whole split can cost more than the training (Fashion-MNIST's 10,000 images: docs/benchmark.md)
    eval_images: int | None = None
    num_samples: int = 64
    sample_every: int = 0
    checkpoint_every: int | None = None  # None: follow the run's length (checkpoint_interval); 0: only at the end
    keep_checkpoints: int = 2
    log_every: int = 50

    def validate(self) -> "TrainConfig":
        if self.T <= 1:  # before the generic check, so that T = 0 and T = 1 get the same message
            raise UserError(f"T must be > 1, got {self.T}")
        positive = ["T", "steps", "batch_size", "log_every", "keep_checkpoints", "max_bad_steps", "eval_strata"]
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ["lr", "warmup", "grad_clip", "eval_every", "checkpoint_every", "sample_every", "num_samples",
                     "eval_exact_below"]:
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):  # NaN passes a plain `< 0`
                raise UserError(f"{name} must be a finite number >= 0, got {value}")
        if self.eval_images is not None and (isinstance(self.eval_images, bool) or not isinstance(self.eval_images, int)
                                             or self.eval_images < 1):
            raise UserError(f"eval_images must be an integer >= 1 (the first N test images) or unset (all of them), "
                            f"got {self.eval_images!r}")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.precision not in PRECISIONS:
            raise unknown_choice("precision", self.precision, PRECISIONS)
        return self

    @property
    def checkpoint_interval(self) -> int:
        """Steps between checkpoints. By default a tenth of the run, at most 500 and at least 1: a fixed 500
        left a shorter run (the bench's 400 steps) with no checkpoint before its end, so a run killed
        late could not resume; 500 bounds the checkpoints of a long run (a few MB each, two kept)."""
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        return min(500, max(1, self.steps // 10))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        # Written whole and renamed into place: other ranks read it on --resume while rank 0 rewrites it.
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def read_config_file(path: str | Path) -> dict:
    """Keys and values from a .json or .toml file, unchecked."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {str(path)!r} is a folder; expected a .json or .toml file")
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text()
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {str(path)!r} ({e}); expected JSON or TOML") from None
    require(isinstance(values, dict),
            f"config file {str(path)!r} holds a {type(values).__name__}; expected an object of option: value")
    return values


def make_config(file: str | Path | None = None, **overrides) -> TrainConfig:
    """Defaults ← file ← overrides (None values in overrides are ignored). Unknown keys are rejected
    with the closest valid name."""
    values = read_config_file(file) if file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = field_names()
    for key in values:
        if key not in names:
            raise unknown_choice("config key", key, names)
    types = {f.name: f.type for f in fields(TrainConfig)}
    for key, value in values.items():
        values[key] = _coerce(key, value, types[key])
    cfg = TrainConfig(**values).validate()
    # `method` names what is trained: a preset overridden by --sampler / --weighting becomes the name of
    # the pair actually used (idempotent, so a saved config.json read back names the same run).
    cfg.method = method_label(cfg.method, cfg.sampler, cfg.weighting)
    return cfg


def _coerce(key, value, type_name: str):
    """Check a value from a file against the field's declared type (files can hold anything)."""
    base = type_name.replace(" | None", "")
    expected = {"int": int, "float": (int, float), "bool": bool, "str": str}[base]
    if value is None and "None" in type_name:
        return None
    if isinstance(value, bool) and base != "bool" or not isinstance(value, expected):
        raise UserError(f"config key {key!r} must be of type {base}, got {value!r}")
    return float(value) if base == "float" else value

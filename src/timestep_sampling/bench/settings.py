"""What a benchmark grid is: its methods, schedules, seeds and evaluation settings (`BenchSettings`), the
presets (full and --quick), the checks every setting passes, and what a method name trains (its
fingerprint). Every other module of the bench takes its settings from here."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, require, unknown_choice
from ..methods import is_flow_method, make_method, method_specs
from ..objectives import OBJECTIVES, objective_name
from ..schedule import SCHEDULES, NoiseSchedule

# The paper's Table 1 (its heuristics; Min-SNR its strongest), the learned sampler in its forms, and its controls.
DEFAULT_METHODS = ("uniform", "p2", "min-snr", "logit-normal", "lognormal-edm", "speed", "loss-second-moment",
                   "adaptive", "adaptive-mix", "adaptive-min-snr", "adaptive-unbiased", "adaptive-frozen",
                   "adaptive-paper")
DEFAULT_SCHEDULES = ("linear", "cosine", "quad")
# --objective flow: rectified flow has no noise schedule; its runs are filed under this one name instead.
FLOW_TIME = "flow"
FLOW_METHODS = ("flow-uniform", "flow-logit-normal", "flow-mode", "flow-cosmap", "flow-beta-0.95", "flow-adaptive",
                "flow-adaptive-min-snr", "flow-adaptive-frozen", "flow-adaptive-final")
FLOW_QUICK_METHODS = ("flow-uniform", "flow-adaptive", "flow-adaptive-frozen")
# --quick, sized by measurement (docs/benchmark.md): 3 methods x 1 schedule x 2 seeds in about 3 min on 2 idle
# cores (8 min on one busy core); the learned sampler beside its frozen control, so a newcomer sees what learning adds. Its FD is
# DDIM's alone: the ancestral FD (1000 model calls an image) would more than double the job (BenchSettings).
QUICK = dict(methods=("uniform", "adaptive", "adaptive-frozen"), schedules=("linear",), seeds=2, steps=400, eval_every=200,
             final_exact=False, eval_strata=20, fd_samples=256, ddim_steps=20, warmup=50, ema_decay=0.99,
             fd_samplers=("ddim",))
FULL = dict(methods=DEFAULT_METHODS, schedules=DEFAULT_SCHEDULES, seeds=3, steps=3000, eval_every=500,
            final_exact=True, eval_strata=80, fd_samples=1000, ddim_steps=50, warmup=200, ema_decay=0.999,
            fd_samplers=("ddim", "ddpm"))

# The samplers whose images the FD scores: DDIM in `ddim_steps` steps (η = 0) and DDPM's ancestral sampling
# through all T steps (the paper's FIDs) for a DDPM; Euler's and Heun's method in `ddim_steps` steps for a
# rectified flow (both cheap: --quick keeps both). The first of each is the one an FD named without a sampler
# (`fd`, `fid`: records and run folders made when it was the only one) was computed with.
FD_SAMPLERS = {"ddpm": ("ddim", "ddpm"), "flow": ("euler", "heun")}


# A method name the bench resolves itself: the learned sampler at its final state, fixed from step 0 (does
# adapting over time matter, or only the shape it ends at?). It needs that seed's learned run first; the
# sampler says how it is frozen (its `frozen_method`, tracks.py).
FINAL_SUFFIX = "-final"


@dataclass
class BenchSettings:
    """One grid and how it is measured. The presets: the full grid (`FULL`) and `--quick` (`QUICK`: 3 methods,
    the linear schedule, 2 seeds, 400 steps, checkpoints at 200 and 400, 256 images per FD, DDIM-20, no exact
    bound; its FD is DDIM's only: ancestral sampling of 256 images took 74 s a checkpoint on one core and 50 s
    on two (DDIM-20: 2 s), 5 to 15 minutes more for its 6 runs even at their last checkpoints alone, where the
    whole job takes about 8 minutes on one core; a flow's --quick scores Euler and Heun, both cheap).

    `fd_samplers` names the samplers whose images are scored (`FD_SAMPLERS`; records and tables carry one FD per
    sampler: fd_ddim, fd_ddpm, fd_euler, fd_heun, and fid_... with --inception). DDIM, Euler and Heun are
    scored at every checkpoint; DDPM's ancestral sampling (T model calls an image) at the steps `fd_steps`
    gives: every `fd_ddpm_every` steps and the last, by default about three checkpoints (`fd_ddpm_every` =
    steps / 3 rounded to a multiple of eval_every), or the checkpoints `fd_ddpm_at` names and the last (⅓ and ½
    of a run with one ancestral FD each, where every multiple of steps / 6 would cost six)."""

    out: str
    methods: tuple[str, ...] = DEFAULT_METHODS
    schedules: tuple[str, ...] = DEFAULT_SCHEDULES
    seeds: int = 3
    only_seeds: tuple[int, ...] | None = None  # run just these seeds (to split one method's seeds across processes)
    steps: int = 3000
    eval_every: int = 500
    data: str = "digits"
    model: str = "tiny"
    batch_size: int = 128
    T: int = 1000
    warmup: int = 200
    ema_decay: float = 0.999
    device: str = "auto"
    final_exact: bool = True
    eval_exact_below: int = 20  # the stratified estimate: every t below this exactly,
    eval_strata: int = 80       # then one t from each of this many log-spaced strata
    eval_images: int | None = None  # bits/dim on the first N test images (None: all); FD/KID keep all of them
    fd_samples: int = 1000
    ddim_steps: int = 50
    sample_seed: int = 0
    inception: str | None = None
    keep_checkpoints: bool = False
    quick: bool = False
    progress: bool = True
    records: str | None = None  # a folder of per-run records (records.py): skip what is there, report all
    report_only: bool = False   # with records: train nothing, report what is recorded
    objective: str = "ddpm"     # or "flow": rectified flow with flow-... methods, filed under the schedule "flow"
    fd_samplers: tuple[str, ...] | None = None  # None: the objective's own (FD_SAMPLERS)
    fd_ddpm_every: int | None = None            # None: about three checkpoints (fd_steps)
    fd_ddpm_at: tuple[int, ...] | None = None   # or exactly these checkpoint steps (and the last)
    step_cost: str | None = None  # a step-cost file (benchmarks/step_cost.py): the speed-up in compute
    extra: dict = field(default_factory=dict)  # other TrainConfig overrides, e.g. {"lr": 2e-4}

    @property
    def flow(self) -> bool:
        """Whether the grid trains rectified flow (`objective` may carry options: "flow:final_steps=8")."""
        return objective_name(self.objective) == "flow"

    @property
    def seed_list(self) -> list[int]:
        return list(self.only_seeds) if self.only_seeds is not None else list(range(self.seeds))

    def grid(self) -> list[tuple[str, str, int]]:
        return [(m, s, seed) for s in self.schedules for m in self.methods for seed in self.seed_list]

    @property
    def samplers(self) -> tuple[str, ...]:
        """The FD's samplers, the objective's default where none were chosen."""
        return self.fd_samplers or FD_SAMPLERS["flow" if self.flow else "ddpm"]

    def fd_due(self, sampler: str, step: int) -> bool:
        """Whether `sampler`'s FD is computed at the checkpoint of `step` (> 0) of a run of these settings."""
        if sampler != "ddpm":
            return step > 0
        if self.fd_ddpm_at is not None:
            return step > 0 and (step in self.fd_ddpm_at or step == self.steps)
        every = self.fd_ddpm_every or max(1, round(self.steps / 3 / self.eval_every)) * self.eval_every
        return step > 0 and (step % every == 0 or step == self.steps)

    def fd_steps(self, sampler: str) -> list[int]:
        """The checkpoint steps (multiples of eval_every and the last step) at which `sampler`'s FD is computed."""
        checkpoints = sorted({*range(self.eval_every, self.steps + 1, self.eval_every), self.steps})
        return [s for s in checkpoints if self.fd_due(sampler, s)]


def _split_names(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    return tuple(dict.fromkeys(names))  # drop repeats, keep order


def _step_list(value) -> tuple[int, ...]:
    """--fd-ddpm-at's steps from "1000,1500" or a sequence, sorted, repeats dropped."""
    names = _split_names(str(value)) if isinstance(value, (str, int)) else _split_names([str(v) for v in value])
    try:
        return tuple(sorted({int(v) for v in names}))
    except ValueError:
        raise UserError(f"--fd-ddpm-at takes comma-separated checkpoint steps, e.g. 1000,1500; got {value!r}") from None


def make_settings(out: str, *, quick: bool = False, methods=None, schedules=None, seeds: int | None = None,
                  steps: int | None = None, eval_every: int | None = None, **options) -> BenchSettings:
    """Settings from the preset (full or --quick), then the caller's choices; every name is checked."""
    base = dict(QUICK if quick else FULL)
    if objective_name(str(options.get("objective") or "")) == "flow":
        require(schedules is None, "rectified flow has no noise schedule: drop --schedules with --objective flow")
        base.update(methods=FLOW_QUICK_METHODS if quick else FLOW_METHODS, schedules=(FLOW_TIME,))
    if "fd_samplers" in options:
        options["fd_samplers"] = _split_names(options["fd_samplers"])
    if options.get("fd_ddpm_at") is not None:
        options["fd_ddpm_at"] = _step_list(options["fd_ddpm_at"])
    if objective_name(str(options.get("objective") or "")) == "flow":
        base.pop("fd_samplers")  # the flow's own (FD_SAMPLERS)
    chosen = dict(methods=_split_names(methods), schedules=_split_names(schedules), seeds=seeds, steps=steps,
                  eval_every=eval_every, **options)
    base.update({k: v for k, v in chosen.items() if v is not None})
    if steps is not None and eval_every is None:  # keep the preset's number of checkpoints
        checkpoints = FULL["steps"] // FULL["eval_every"] if not quick else QUICK["steps"] // QUICK["eval_every"]
        base["eval_every"] = max(1, steps // checkpoints)
    settings = BenchSettings(out=str(out), quick=quick, **base)
    validate(settings)
    return settings


def validate(settings: BenchSettings) -> None:
    require(len(settings.methods) > 0, "--methods is empty; valid choices: " + ", ".join(DEFAULT_METHODS))
    require(len(settings.schedules) > 0, "--schedules is empty; valid choices: " + ", ".join(SCHEDULES))
    if objective_name(settings.objective) not in OBJECTIVES.names():
        raise unknown_choice("objective", settings.objective, OBJECTIVES.names())
    flow = settings.flow
    for name in settings.schedules:
        if not (flow and name == FLOW_TIME) and name not in SCHEDULES:
            raise unknown_choice("noise schedule", name, SCHEDULES)
    probe = NoiseSchedule("linear", T=max(settings.T, 2))
    for name in settings.methods:
        make_method(name.removesuffix(FINAL_SUFFIX), probe)  # a bad name or option: a UserError listing the valid ones
        if is_flow_method(name.removesuffix(FINAL_SUFFIX)) != flow:
            raise UserError(f"method {name!r} is for " + ("DDPM; --objective flow takes flow-... methods, e.g. "
                                                          + ", ".join(FLOW_METHODS[:4]) if flow else
                                                          "rectified flow: add --objective flow"))
    # Records, tables and plots name each run by its method, so a sampler or weighting may not override it.
    overrides = sorted({"sampler", "weighting", "method"} & set(settings.extra))
    require(not overrides, f"bench settings cannot override {', '.join(overrides)}; name the pair as a method "
                           f"instead, e.g. 'speed+min-snr:gamma=5'")
    if settings.only_seeds is not None:
        require(len(settings.only_seeds) > 0 and all(isinstance(s, int) and s >= 0 for s in settings.only_seeds),
                f"--only-seeds takes seeds >= 0, e.g. 2 or 0,2; got {settings.only_seeds!r}")
    for name in ("seeds", "steps", "eval_every", "fd_samples", "ddim_steps", "batch_size", "T", "eval_strata"):
        require(getattr(settings, name) >= 1, f"--{name.replace('_', '-')} must be >= 1, got {getattr(settings, name)}")
    require(settings.fd_samples >= 2, f"--fd-samples must be >= 2, got {settings.fd_samples}")
    require(settings.eval_images is None or (isinstance(settings.eval_images, int)
                                             and not isinstance(settings.eval_images, bool) and settings.eval_images >= 1),
            f"--eval-images must be an integer >= 1 (the first N test images), got {settings.eval_images!r}")
    require(settings.eval_every <= settings.steps,
            f"--eval-every ({settings.eval_every}) must not exceed --steps ({settings.steps})")
    kind = "flow" if flow else "ddpm"
    if settings.fd_samplers is not None:
        require(len(settings.fd_samplers) > 0, "--fd-samplers is empty; valid choices: " + ", ".join(FD_SAMPLERS[kind]))
        for name in settings.fd_samplers:
            if name not in FD_SAMPLERS[kind]:
                raise unknown_choice(f"FD sampler for {'rectified flow' if flow else 'DDPM'}", name, FD_SAMPLERS[kind])
    if settings.fd_ddpm_every is not None:
        require(isinstance(settings.fd_ddpm_every, int) and settings.fd_ddpm_every >= 1,
                f"--fd-ddpm-every must be an integer >= 1, got {settings.fd_ddpm_every!r}")
        require("ddpm" in settings.samplers, "--fd-ddpm-every sets when the ancestral FD is computed: add ddpm to "
                                             "--fd-samplers (a DDPM grid's)")
    if settings.fd_ddpm_at is not None:
        require(settings.fd_ddpm_every is None, "give --fd-ddpm-every or --fd-ddpm-at, not both")
        require("ddpm" in settings.samplers, "--fd-ddpm-at sets when the ancestral FD is computed: add ddpm to "
                                             "--fd-samplers (a DDPM grid's)")
        checkpoints = {*range(settings.eval_every, settings.steps + 1, settings.eval_every), settings.steps}
        wrong = [s for s in settings.fd_ddpm_at if s not in checkpoints]
        require(len(settings.fd_ddpm_at) > 0, "--fd-ddpm-at is empty; give checkpoint steps, e.g. 1000,1500")
        require(not wrong, f"--fd-ddpm-at takes checkpoint steps (multiples of --eval-every {settings.eval_every} up "
                           f"to --steps {settings.steps}); {', '.join(map(str, wrong))} "
                           f"{'is' if len(wrong) == 1 else 'are'} not one")
    require(not settings.report_only or settings.records,
            "--report-only reports what a --records folder holds: add --records FOLDER")
    if settings.step_cost is not None:
        require(Path(settings.step_cost).is_file(),
                f"--step-cost {settings.step_cost!r} is not a file; benchmarks/step_cost.py writes one")
    if settings.inception is not None:
        require(Path(settings.inception).is_file(),
                f"--inception {settings.inception!r} is not a file; expected a TorchScript feature network "
                f"such as inception-2015-12-05.pt (nothing is downloaded)")


def noise_schedule(schedule: str) -> str:
    """The trainer's schedule for a grid column: a flow run ignores it, so it keeps the default."""
    return "linear" if schedule == FLOW_TIME else schedule


def method_fingerprint(method: str, schedule: str, T: int) -> str | None:
    """What a method name trains, as its sampler's repr and its weighting's spec (None for a -final cell,
    which is fixed by its learned run's record)."""
    if method.endswith(FINAL_SUFFIX):
        return None
    sampler, _ = make_method(method, NoiseSchedule(noise_schedule(schedule), T=T))
    return f"{sampler!r} + {method_specs(method)[1]}"


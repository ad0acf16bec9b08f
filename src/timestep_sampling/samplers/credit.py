"""First-order credit: how much ONE sample's gradient step lowers the variational bound (METHOD.md §7).

Eq. 14 of the paper rewards sample b with the drop of its own image's bound terms after an update on the
whole batch. That drop is the batch's common effect; b's own timestep causes about 1/B of it, so the
reward carries almost no information about t_b. Credit assignment asks instead what b's own share of
the update does. One optimiser step on b alone moves θ by −η·P·g_b (g_b = ∇_θ loss_b, P the optimiser's
preconditioner), which changes a bound estimate L̂ by, to first order,

    −η · ∇L̂ · P g_b = −η · c_b,        c_b = g_b · (P ∇L̂) = d/dδ loss_b(θ + δ·P∇L̂) at δ = 0.

So c_b > 0 means "training on (x0_b, t_b) lowers the bound". It costs one backward pass of L̂ on a small
probe batch and one forward pass of the training batch carrying tangents along d = P∇L̂ (forward-mode
autodiff: exact), or two plain forward passes for a central difference at θ ± δ·d (d scaled to unit RMS),
all in eval mode (no dropout) and without touching the user's .grad. The difference was the default until
2026-12-02: at δ = 1e-3 it was a third off at initialisation and had the wrong sign at t < 20 on a trained
digits model, where one Adam-sized step is already outside the loss's linear range
(studies/credit_exactness.py); δ = 1e-4 is close to exact.

What it assumes, and where it breaks:
- Linearity over one step: the credit is the derivative, so it ranks samples by what an infinitesimal step
  does; real steps are small (Adam moves each weight by ~lr) but at the smallest t not infinitesimal.
- P is the preconditioner of the step about to be taken, read from the optimiser's state before the step
  (Adam/AdamW/NAdam/RAdam: 1/(√v̂ + ε); RMSprop: 1/(√avg + ε); SGD or no optimiser: the identity). Adam's
  momentum spreads b's gradient over later steps in the same direction, which scales every c_b alike.
  Before an Adam-family optimiser's first step there is no v̂, and P = I.
- Gradient clipping and the learning rate scale all c_b alike: they do not change which t is credited.
- The loss is the plain ε-MSE, unless the target is the loop's objective (credit_target="objective" or a
  weighting): then each sample's loss carries its weight w_{t_b}, as in the loop. With the bound as target,
  a loss weighting in the user's loop multiplies b's true credit by w_{t_b}, which the credit ignores.
- The model: an nn.Module (DDP included: its inner module is used, so the credit's passes make no
  all-reduce) is run in eval mode, by forward mode. A plain callable model(x_t, t) (a lambda around a
  diffusers UNet, or around DDP) is run as it is, in whatever mode its modules are in; its weights are the
  optimiser's. The exact credit goes by forward mode through the module found behind the callable (its
  closure, a functools.partial, a bound method: owning_module), which swaps that module's weights for one
  call; only where none holds the weights is it taken by two reverse passes (about twice the cost), which
  only take gradients and so fire no DDP hook either.
- The bound is estimated on the batch's own images unless held-out images are given (`probe_x0`). On
  images the model trains on, the credit also rewards memorising them: on one digits seed (linear, 3000
  steps) it ranked t in 3–20 last on the batch's images and first on test images, and 40 steps of extra
  training there lowered the test bound most (studies/credit_vs_lookahead.py). The evaluated model
  is often an EMA of θ, not θ itself.
"""
from __future__ import annotations

import contextlib
import functools
import math

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.parallel import DistributedDataParallel

from .. import distributed
from ..bound import stratified_timesteps
from ..diffusion import VARIANCES, mse_per_sample, predict_eps, q_sample, vlb_terms_from_eps
from ..errors import UserError, require
from ..schedule import NoiseSchedule

# The central difference's step before the exact credit became the default (2026-12-02). A sampler's repr
# leaves it out, so that bench records made with it keep their fingerprints under the presets that pin it.
LEGACY_DELTA = 1e-3

# Optimisers whose state holds a running second moment, and the key it is kept under.
_SECOND_MOMENT_KEYS = ("exp_avg_sq", "square_avg")


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode (no dropout); every submodule's own mode restored after."""
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    modes = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


@contextlib.contextmanager
def full_precision(model, params):
    """The credit's passes in the weights' own precision whatever autocast the loop runs under: autocast off on
    the weights' devices, and a forward that Accelerate's prepare(mixed_precision=...) wrapped in autocast
    (it keeps the original as `_original_forward`) put back for the while. So the credit's sign and ranking do
    not depend on the loop's precision, and the exact credit's forward mode, which fails under CPU autocast
    (a bf16 weight meets an fp32 input in conv), runs. Measured on the digits UNet (docs/learned-sampler.md,
    "Under mixed precision"): a bf16 credit would rank alike (Spearman >= 0.9995), so this costs no ranking;
    it costs fp32 passes. For a plain callable, the wrapped forward is looked for in the module found behind it
    (owning_module); a callable that enters autocast itself keeps it."""
    owner = model if isinstance(model, nn.Module) else owning_module(model, params)
    modules = [m for m in (owner.modules() if owner is not None else ())
               if "_original_forward" in vars(m) and "forward" in vars(m)]
    wrapped = [vars(m)["forward"] for m in modules]
    with contextlib.ExitStack() as stack:
        for device_type in sorted({p.device.type for p in params}):
            stack.enter_context(torch.autocast(device_type, enabled=False))
        try:
            for m in modules:
                m.forward = m._original_forward
            yield
        finally:
            for m, forward in zip(modules, wrapped):
                m.forward = forward


class BoundOptions:
    """For samplers that score the bound themselves: its t = 0 decoder's levels (`bins`) and the reverse
    variance, set at construction and again by the trainer from the data (`configure_bound`)."""

    def configure_bound(self, bins: int | None = None, variance: str | None = None) -> None:
        if bins is not None:
            require(isinstance(bins, int) and not isinstance(bins, bool) and bins >= 2,
                    f"bins must be an integer >= 2, got {bins!r}")
            self.bins = int(bins)
        if variance is not None:
            require(variance in VARIANCES, f"unknown variance {variance!r}; valid choices: {', '.join(VARIANCES)}")
            self.variance = variance


def check_credit_delta(value) -> float:
    """credit_delta as a float: 0 for the exact credit (forward mode), > 0 for a central difference."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    require(ok, f"option credit_delta must be 0 (the exact credit) or a small positive step, got {value!r}")
    return float(value)


def credit_repr(delta: float) -> str:
    """How a sampler's repr names its credit: "credit='exact'", "credit_delta=δ", or nothing for LEGACY_DELTA."""
    if delta == 0:
        return ", credit='exact'"
    return "" if delta == LEGACY_DELTA else f", credit_delta={delta}"


def unwrap(model):
    """The module inside DDP: the probes need no gradient hooks or collectives."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def preconditioner(optimizer: torch.optim.Optimizer | None, param: torch.Tensor) -> torch.Tensor | None:
    """diag(P) of `optimizer` for `param`, or None for the identity (SGD, no optimiser, no state yet)."""
    if optimizer is None:
        return None
    state = optimizer.state.get(param, {})
    key = next((k for k in _SECOND_MOMENT_KEYS if k in state), None)
    if key is None:
        return None
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    moment = state[key]
    if key == "exp_avg_sq":  # Adam family: bias-corrected v̂
        step = float(state["step"])
        if step == 0:
            return None
        moment = moment / (1 - group["betas"][1] ** step)
    return 1.0 / (moment.sqrt() + group["eps"])


def bound_probe(model, schedule: NoiseSchedule, x0: torch.Tensor, strata: int, generator: torch.Generator, *,
                bins: int, variance: str) -> torch.Tensor:
    """An unbiased estimate of Σ_t L_t (bits/dim) with autograd: one t from each of `strata` log-spaced
    strata of [0, T) (narrow at small t, where the bound lives), each on its own image of x0, weighted by
    its stratum's width and averaged over images."""
    seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    t, weights = stratified_timesteps(schedule.T, exact_below=0, strata=strata, seed=seed)
    images = x0[torch.arange(len(t)) % len(x0)]
    noise = torch.randn(images.shape, generator=generator).to(images)
    t, weights = t.to(x0.device), weights.to(x0.device)
    xt = q_sample(schedule, images, t, noise)
    terms = vlb_terms_from_eps(schedule, images.double(), xt.double(), t, predict_eps(model, xt, t).double(),
                               bins=bins, variance=variance)
    return (terms * weights).sum()


def loss_probe(model, schedule: NoiseSchedule, x0: torch.Tensor, strata: int, generator: torch.Generator,
               weighting=None) -> torch.Tensor:
    """An estimate of the simple loss E_t ‖ε − ε_θ(x_t, t)‖² under uniform t, with autograd: one t from each
    of `strata` equal strata of [0, T), each on its own image of x0. The loss a user trains with uniform t,
    and the one that sample quality follows more closely than the bound (which lives at small t).
    With a `weighting` (weighting.LossWeighting): the user's weighted objective (1/T) Σ_t w_t E‖ε − ε_θ‖²,
    unbiased, each stratum counted by its width."""
    edges = torch.linspace(0, schedule.T, strata + 1).round().long()
    v = torch.rand(strata, generator=generator, dtype=torch.float64)
    t = (edges[:-1] + (v * (edges[1:] - edges[:-1])).long()).clamp(max=schedule.T - 1).to(x0.device)
    images = x0[torch.arange(strata) % len(x0)]
    noise = torch.randn(images.shape, generator=generator).to(images)
    mse = mse_per_sample(model, schedule, images, t, noise).double()
    if weighting is None:
        return mse.mean()
    width = (edges[1:] - edges[:-1]).double().to(mse.device) / schedule.T
    return (width * weighting.weights(t).double() * mse).sum()


# What the credit is the derivative of. "objective": the weighted loss the loop trains, with the weighting
# it trains with (make_method pairs them; in a loop of one's own, pass the weighting itself as the target).
CREDIT_TARGETS = ("bound", "loss", "objective")


def check_credit_target(target, continuous: bool = False):
    """A credit target: one of CREDIT_TARGETS or a loss weighting of the right kind (its objective)."""
    if isinstance(target, str):
        require(target in CREDIT_TARGETS,
                f"unknown credit_target {target!r}; valid choices: {', '.join(CREDIT_TARGETS)}, or a loss weighting")
        return target
    ok = callable(getattr(target, "weights", None)) and getattr(target, "continuous", None) == continuous
    kind = "a flow weighting (flow-...)" if continuous else "a discrete-time weighting"
    require(ok, f"credit_target must be one of {', '.join(CREDIT_TARGETS)} or {kind} from make_weighting, "
                f"got {target!r}")
    return target


def target_weighting(target, paired):
    """The weighting whose objective the credit targets: the target itself, the loop's (`paired`) for
    "objective", None for the bound and the plain loss."""
    if not isinstance(target, str):
        return target
    if target != "objective":
        return None
    require(paired is not None, "credit_target='objective' needs the loss weighting the loop trains with: build "
                                "the pair with make_method(...), or pass the weighting itself as credit_target=")
    return paired


def loop_weights(target, paired, t: torch.Tensor, importance: torch.Tensor | None = None) -> torch.Tensor | None:
    """The weight the loop puts on each sample's loss, as far as the credit needs it: the objective's
    weighting w(t_b) when the target is the loop's objective, times the sampler's own importance weights
    (unbiased mode); None for ones."""
    objective = target_weighting(target, paired)
    weights = None if objective is None else objective.weights(t).double()
    if importance is not None:
        weights = importance.double() if weights is None else weights * importance.double().to(weights.device)
    return weights


def variance_rewards(losses: torch.Tensor, t: torch.Tensor, importance: torch.Tensor, weighting=None) -> torch.Tensor:
    """r_b = (w_b·λ_b·ℓ_b)², float64 on the CPU: each sample's share of the second moment of the loop's
    importance-weighted loss estimate, with w_b the importance weights, λ_b = weighting.weights(t_b) (ones for
    None) and ℓ_b the per-sample loss. The reward="variance" of the learned Beta samplers (adaptive.py,
    `_loss_spread`, says why)."""
    return (loop_weights(weighting, None, t, importance).cpu() * losses.double().cpu()) ** 2


def gradient_rewards(model, losses, optimizer: torch.optim.Optimizer | None, generator: torch.Generator) -> torch.Tensor:
    """r_b = (d·∇_θ losses_b)², d = P·z with z a Rademacher vector over the weights the step trains (P the
    optimiser's preconditioner): E_z[r_b] = ‖P ∇_θ losses_b‖², each sample's share of the trace of the
    step's covariance (Hutchinson's estimator, one probe). One forward pass carrying tangents (two reverse
    passes for a plain callable), in eval mode; float64 on the CPU. The reward="grad-variance" of the
    learned Beta sampler (adaptive.py, `_gradient_spread`, says why)."""
    net = unwrap(model)
    params = trainable_parameters(net, optimizer)
    direction = []
    for p in params:
        z = (2 * torch.randint(0, 2, p.shape, generator=generator) - 1).to(p)
        scale = preconditioner(optimizer, p)
        direction.append(z if scale is None else z * scale)
    with eval_mode(net), full_precision(net, params):
        tangent = _tangent(net, params, direction, losses)
    return tangent.double().cpu() ** 2


def _tangent(net, params, direction, losses) -> torch.Tensor:
    """The per-sample losses' derivative along `direction`: forward mode through a module, or through the
    module found behind a plain callable; two reverse passes through a callable whose module is not found."""
    if isinstance(net, nn.Module):
        return _forward_mode(net, params, direction, losses)
    owner = owning_module(net, params)
    if owner is not None:
        return _forward_mode(_CallableWithWeights(net, owner), params, direction, losses)
    return _reverse_mode(net, params, direction, losses)


def target_name(target) -> str:
    """How a repr names a target: its string, or its weighting's repr."""
    return target if isinstance(target, str) else f"objective:{target!r}"


def directional_credit(net, probe, losses, optimizer: torch.optim.Optimizer | None = None, *,
                       delta: float = 0.0, stale: "StaleGradient | None" = None) -> torch.Tensor:
    """c_b = d/dδ losses(θ + δ·d)_b at δ = 0 with d = P∇probe(θ) scaled to unit RMS.

    `probe()` returns a scalar estimate of the target (the bound) with autograd; `losses(model)` the per-sample losses
    of `model(x_t, t)` (called with fixed noise inside). delta > 0: a central difference at θ ± δ·d, two
    forward passes. delta = 0: the exact directional derivative by forward-mode autodiff (torch.func.jvp),
    one forward pass carrying tangents. Both run in eval mode; the weights are restored bit for bit and
    neither .grad nor the optimiser is touched. float64 on the CPU; None if the direction is not finite or
    is zero (the caller's policy then skips the update). `stale` (StaleGradient): ∇probe is taken from it,
    and the probe's backward pass run only when it is due for a refresh.

    A plain callable (a lambda around a module) is differentiated in forward mode too when the module that
    holds its weights can be found from it (owning_module); otherwise by two reverse passes."""
    params = trainable_parameters(net, optimizer)
    with eval_mode(net), full_precision(net, params):
        direction, rms = _descent_direction(probe, params, optimizer, stale)
        if direction is None:
            return None
        if delta == 0:
            unit = [d / rms.to(d.dtype) for d in direction]
            return _tangent(net, params, unit, losses).double().cpu()
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            try:
                for p, d in zip(params, direction):
                    p.add_(d, alpha=float(delta / rms))
                plus = losses(net).double()
                for p, d in zip(params, direction):
                    p.add_(d, alpha=float(-2 * delta / rms))
                minus = losses(net).double()
            finally:
                for p, s in zip(params, saved):
                    p.copy_(s)
    return ((plus - minus) / (2 * delta)).cpu()


def trainable_parameters(model, optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    """The weights a step trains: the module's, or, for a plain callable model(x_t, t), the optimiser's (a
    callable has no .parameters(); the optimiser holds exactly the tensors the step will move)."""
    if isinstance(model, nn.Module):
        return [p for p in model.parameters() if p.requires_grad]
    require(callable(model), f"observe() needs the model as an nn.Module or a callable model(x_t, t), "
                             f"got {type(model).__name__}")
    require(optimizer is not None, "observe() got a plain callable as the model: pass optimizer=... too, so the "
                                   "credit knows which weights the step trains (or pass the nn.Module itself)")
    params, seen = [], set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    require(params, "observe(): the optimiser holds no trainable parameters")
    return params


def _probe_gradient(probe, params) -> list[torch.Tensor]:
    """∇probe(θ) for every weight in `params` (zeros where the probe does not reach)."""
    grads = torch.autograd.grad(probe(), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]


class StaleGradient:
    """The bound probe's raw gradient ∇L̂, kept for `every` sampler updates.

    Why: the probe's backward pass is a third of a credit update's cost, and the probe is a 64-image estimate
    whose own noise is larger than what θ changes in a few updates; reusing it for `every` updates pays that
    pass once per `every`. The preconditioner is applied afresh at each use, so the direction P∇L̂ follows
    the optimiser's current scaling. every = 1 keeps nothing (a fresh probe each update, as before)."""

    def __init__(self, every: int = 1):
        self.every = every
        self.grads: list[torch.Tensor] | None = None
        self.age = 0  # updates since the kept gradient was probed

    def take(self, probe, params) -> list[torch.Tensor]:
        if self.every == 1:
            return _probe_gradient(probe, params)
        if self.grads is None or self.age >= self.every or len(self.grads) != len(params):
            # Averaged over ranks: the kept gradient is sampler state, which every rank must hold alike (a
            # checkpoint is rank 0's), and the mean of the ranks' probes is the better estimate anyway.
            self.grads, self.age = [distributed.all_reduce_mean_(g) for g in _probe_gradient(probe, params)], 0
        self.age += 1
        return [g.to(p) for g, p in zip(self.grads, params)]

    def state_dict(self) -> dict:
        return {"age": self.age, "grads": None if self.grads is None else [g.cpu() for g in self.grads]}

    def load_state_dict(self, state: dict) -> None:
        self.age = int(state["age"])
        self.grads = None if state["grads"] is None else [g.clone() for g in state["grads"]]


def _descent_direction(probe, params, optimizer, stale: StaleGradient | None = None):
    """(P∇probe(θ), its RMS per weight), or (None, None) if the RMS is not finite or is zero. The credit
    is taken along the direction scaled to unit RMS, so that δ is a step of the size Adam takes (~lr
    per weight)."""
    grads = stale.take(probe, params) if stale is not None else _probe_gradient(probe, params)
    direction = []
    for p, g in zip(params, grads):
        scale = preconditioner(optimizer, p)
        direction.append(g if scale is None else g * scale)
    rms = torch.sqrt(sum((d.double() ** 2).sum() for d in direction) / sum(d.numel() for d in direction))
    if not torch.isfinite(rms) or rms == 0:
        return None, None
    return direction, rms


@contextlib.contextmanager
def _contiguous_inputs(net, kind):
    """Every `kind` submodule of net sees a contiguous input while the context lasts."""
    hooks = [m.register_forward_pre_hook(lambda _, args: tuple(a.contiguous() for a in args))
             for m in net.modules() if isinstance(m, kind)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def owning_module(fn, params, depth: int = 3) -> nn.Module | None:
    """The nn.Module that holds every tensor of `params`, found from a plain callable: the callable itself,
    its bound `self`, a functools.partial's function and arguments, the variables its closure captures and
    the globals its code names (a lambda around `unet`, DDP, or a partial), searched `depth` levels deep.
    None if there is none: the caller then differentiates the callable as a black box."""
    wanted = {id(p) for p in params}
    seen, level = set(), [fn]
    for _ in range(depth):
        nxt = []
        for obj in level:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, nn.Module):
                if wanted <= {id(p) for p in obj.parameters()}:
                    return obj
                continue
            nxt.extend(_referenced(obj))
        level = nxt
    return None


def _referenced(obj) -> list:
    """What a callable refers to, for owning_module: no code runs, only attributes are read."""
    refs = []
    if isinstance(obj, functools.partial):
        refs += [obj.func, *obj.args, *obj.keywords.values()]
    refs.append(getattr(obj, "__self__", None))
    code = getattr(obj, "__code__", None)
    if code is not None:
        refs += [cell.cell_contents for cell in (obj.__closure__ or ()) if _filled(cell)]
        names = getattr(obj, "__globals__", {})
        refs += [names[n] for n in code.co_names if n in names]
    return [r for r in refs if r is not None and not isinstance(r, (str, bytes, int, float, bool, torch.Tensor))]


def _filled(cell) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return False
    return True


class _CallableWithWeights(nn.Module):
    """A plain callable seen as a module whose only submodule is the module that holds its weights, so that
    torch.func.functional_call can swap those weights for the duration of one call: the callable then runs
    on the same module object, its weights replaced, whatever it does around it."""

    def __init__(self, fn, owner: nn.Module):
        super().__init__()
        self.owner = owner
        self._fn = (fn,)  # a tuple, so that a callable that is itself a module is not registered twice

    def forward(self, *args):
        return self._fn[0](*args)


def _forward_mode(net, params, direction, losses) -> torch.Tensor:
    """The per-sample losses' derivative along `direction`, exact: torch.func.jvp through the model called
    with its parameters as explicit inputs (the module itself is not modified)."""
    by_id = {id(p): name for name, p in net.named_parameters()}
    names = [by_id[id(p)] for p in params]

    def losses_of(*weights):
        values = dict(zip(names, weights))
        return losses(lambda *args: torch.func.functional_call(net, values, args))

    # The fused attention kernels have no forward-mode formula; the math kernel is made of ops that do.
    # GroupNorm's forward-mode formula views its input, which attention's output is not laid out for.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), _contiguous_inputs(net, nn.GroupNorm):
        try:
            _, tangent = torch.func.jvp(losses_of, tuple(p.detach() for p in params), tuple(direction))
        except NotImplementedError as error:
            raise UserError(f"the exact credit (credit_delta=0) needs forward-mode autodiff through the model, "
                            f"which one of its ops lacks ({str(error).splitlines()[0]}); use a central "
                            f"difference instead, e.g. credit_delta=1e-4") from None
    return tangent


def _reverse_mode(model, params, direction, losses) -> torch.Tensor:
    """The same derivative as _forward_mode for a model that is only a callable over `params` (a lambda
    around a module, DDP included): J·d = ∇_v[(Jᵀv)·d] by two reverse passes, since forward mode would need
    the parameters as explicit inputs. The gradients are taken, never accumulated: no .grad is written and
    no DDP gradient hook (so no all-reduce) fires. Attention runs on its math kernel, which has double
    backward."""
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        values = losses(model)
        probe = torch.zeros_like(values, requires_grad=True)
        grads = torch.autograd.grad(values, params, grad_outputs=probe, create_graph=True, allow_unused=True)
        dot = sum((g * d).sum() for g, d in zip(grads, direction) if g is not None)
        if not isinstance(dot, torch.Tensor) or not dot.requires_grad:  # no weight reaches the losses
            return torch.zeros_like(values).detach()
        (tangent,) = torch.autograd.grad(dot, probe)
    return tangent.detach()


def first_order_credit(model, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor,
                       optimizer: torch.optim.Optimizer | None = None, *, generator: torch.Generator,
                       strata: int = 64, delta: float = 0.0, bins: int = 256,
                       variance: str = "fixed-large", probe_x0: torch.Tensor | None = None,
                       target="bound", weighting=None, loss_weights: torch.Tensor | None = None,
                       stale: StaleGradient | None = None) -> torch.Tensor:
    """c_b for every sample of the DDPM batch (x0, t), float64 on the CPU. Larger is better. The model's
    weights are restored bit for bit; its .grad and the optimiser are not touched. The target is probed on
    `probe_x0` (default: the batch itself); held-out images make the credit score what generalises.
    target "bound": the variational bound (bits/dim); "loss": the simple loss under uniform t (loss_probe);
    "objective" (with `weighting`) or a weighting itself: the weighted loss under uniform t that the loop
    trains. `loss_weights`: the weight the loop puts on each sample's loss (its true step is that multiple of
    the plain ε-MSE's), or None for ones. `stale`: the target's gradient kept across updates (StaleGradient)."""
    target = check_credit_target(target)
    objective = target_weighting(target, weighting)
    net, x0 = unwrap(model), x0.detach()
    probe_images = x0 if probe_x0 is None else probe_x0.detach().to(x0)

    def probe():
        if target == "loss" or objective is not None:
            return loss_probe(net, schedule, probe_images, strata, generator, objective)
        return bound_probe(net, schedule, probe_images, strata, generator, bins=bins, variance=variance)

    return _batch_credit(net, probe, lambda model, noise: mse_per_sample(model, schedule, x0, t, noise), x0,
                         generator, optimizer, delta, loss_weights, stale)


def _batch_credit(net, probe, loss_with_noise, x0, generator, optimizer, delta, loss_weights=None,
                  stale: StaleGradient | None = None) -> torch.Tensor:
    """directional_credit with the batch's noise drawn once, after the probe's draws (a fixed order of the
    stream), and used on both sides of the difference; NaN for every sample if there is no direction."""
    noise = []

    def losses(model):
        if not noise:
            noise.append(torch.randn(x0.shape, generator=generator).to(x0))
        values = loss_with_noise(model, noise[0])
        return values if loss_weights is None else values * loss_weights.to(values)

    credit = directional_credit(net, probe, losses, optimizer, delta=delta, stale=stale)
    return torch.full((len(x0),), float("nan"), dtype=torch.float64) if credit is None else credit


# ----------------------------------------------------------------------------------------------------
# Rectified flow: the same credit, against the flow's ELBO (flow.py) on continuous t


def flow_bound_probe(model, flow, x0: torch.Tensor, strata: int, generator: torch.Generator, *,
                     t_min: float = 1e-3) -> torch.Tensor:
    """An unbiased estimate of ∫_{t_min}^1 ((1 − t)/t)·‖v − v̂‖² dt in bits/dim (the flow's −ELBO up to a
    constant, flow.flow_elbo_terms) with autograd: one t from each of `strata` log-spaced strata of
    [t_min, 1), each on its own image of x0, weighted by its stratum's width. Below t_min the data's own
    quantisation dominates and the integrand grows like 1/t whatever the model, so it is left out."""
    edges = torch.logspace(math.log10(t_min), 0.0, strata + 1, dtype=torch.float64)
    v = torch.rand(strata, generator=generator, dtype=torch.float64)
    t = (edges[:-1] + v * (edges[1:] - edges[:-1])).clamp(max=1 - 2.0 ** -24)
    images = x0[torch.arange(strata) % len(x0)]
    noise = torch.randn(images.shape, generator=generator).to(images)
    terms = flow.elbo_terms(model, images, t.to(device=x0.device, dtype=x0.dtype), noise).double()
    return (terms * (edges[1:] - edges[:-1]).to(terms.device)).sum()


def flow_objective_probe(model, flow, x0: torch.Tensor, strata: int, generator: torch.Generator,
                         weighting=None) -> torch.Tensor:
    """An unbiased estimate of ∫_0^1 w(t)·‖v − v̂‖² dt, the weighted velocity loss under uniform t (w ≡ 1
    without a weighting), with autograd: one t from each of `strata` equal strata of (0, 1)."""
    v = torch.rand(strata, generator=generator, dtype=torch.float64)
    t = ((torch.arange(strata, dtype=torch.float64) + v) / strata).clamp(2.0 ** -24, 1 - 2.0 ** -24)
    images = x0[torch.arange(strata) % len(x0)]
    noise = torch.randn(images.shape, generator=generator).to(images)
    t = t.to(device=x0.device, dtype=x0.dtype)
    loss = flow.loss(model, images, t, noise).double()
    weights = torch.ones_like(loss) if weighting is None else weighting.weights(t).double()
    return (weights * loss).mean()


def flow_first_order_credit(model, flow, x0: torch.Tensor, t: torch.Tensor,
                            optimizer: torch.optim.Optimizer | None = None, *, generator: torch.Generator,
                            strata: int = 64, delta: float = 0.0, t_min: float = 1e-3, target="bound",
                            weighting=None, loss_weights: torch.Tensor | None = None,
                            stale: StaleGradient | None = None) -> torch.Tensor:
    """c_b for every sample of a rectified-flow batch (x0, t ∈ (0, 1)): the velocity loss of sample b along
    the preconditioned descent direction of the target: the flow's bound (flow_bound_probe), the plain
    velocity loss ("loss"), or the weighted one the loop trains ("objective" with `weighting`, or a flow
    weighting itself; flow_objective_probe). Larger is better."""
    target = check_credit_target(target, continuous=True)
    objective = target_weighting(target, weighting)
    net, x0 = unwrap(model), x0.detach()

    def probe():
        if target == "loss" or objective is not None:
            return flow_objective_probe(net, flow, x0, strata, generator, objective)
        return flow_bound_probe(net, flow, x0, strata, generator, t_min=t_min)

    return _batch_credit(net, probe, lambda model, noise: flow.loss(model, x0, t, noise), x0, generator, optimizer,
                         delta, loss_weights, stale)

"""Command line: argument parsing only; every subcommand calls one function elsewhere.

A user mistake (UserError) prints one line on stderr and exits with status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from .errors import UserError


def _train(args) -> None:
    from .config import make_config
    from .train import train

    overrides = {k: getattr(args, k) for k in ("data", "out", "steps", "schedule", "seed", "method", "sampler",
                 "weighting", "eval_every", "batch_size", "lr", "model", "device", "T", "checkpoint_every",
                 "num_samples", "warmup", "ema_decay")}
    cfg = make_config(args.config, **overrides)
    train(cfg, resume=args.resume, progress=not args.no_progress)


def _evaluate(args) -> None:
    from .evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, exact=not args.estimate, data=args.data, device=args.device,
                                 progress=not args.no_progress)
    kind = "exact" if result.exact else "stratified estimate"
    print(f"test bits/dim: {result.total:.4f} ({kind}; prior term {result.prior:.2e})")


def _sample(args) -> None:
    from .evaluate import sample_checkpoint

    path = sample_checkpoint(args.checkpoint, args.out, num=args.num, method=args.method, steps=args.steps,
                             seed=args.seed, device=args.device, progress=not args.no_progress)
    print(f"wrote {path}")


def _plot_samplers(args) -> None:
    from .plotting import plot_samplers
    from .schedule import NoiseSchedule

    from .data import load_data

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    x0 = load_data(args.data).train[:256]  # data-conditioned samplers (adaptive) are drawn averaged over it
    plot_samplers(NoiseSchedule(args.schedule, T=args.T), methods, args.out, x0=x0)
    print(f"wrote {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timestep-sampling", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a DDPM with a timestep sampler and loss weighting")
    p.add_argument("--config", help="a JSON or TOML file of TrainConfig keys; flags override it")
    p.add_argument("--data", help="digits (default, embedded), an image folder, a .npz, or a CIFAR-10 batches folder")
    p.add_argument("--out", help="output folder (default runs/digits)")
    p.add_argument("--steps", type=int)
    p.add_argument("--schedule", help="linear, quad, cosine (or scaled_linear, squaredcos_cap_v2)")
    p.add_argument("--T", type=int, help="number of diffusion timesteps (default 1000)")
    p.add_argument("--seed", type=int)
    p.add_argument("--method", help="a preset pairing a sampler and a weighting, e.g. uniform, min-snr, speed, adaptive")
    p.add_argument("--sampler", help="override the preset's sampler, e.g. 'logit-normal:mean=0,std=1'")
    p.add_argument("--weighting", help="override the preset's weighting, e.g. 'min-snr:gamma=5'")
    p.add_argument("--eval-every", type=int, help="estimate test bits/dim every N steps (0: only at the end)")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--ema-decay", type=float)
    p.add_argument("--model", help="UNet preset: tiny, small, cifar")
    p.add_argument("--num-samples", type=int, help="images in the final sample grid (0: none)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="test bits/dim of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a run folder or checkpoints/step_XXXXXXXX folder")
    p.add_argument("--data", help="score on this data's test split instead of the run's own")
    p.add_argument("--estimate", action="store_true", help="stratified estimate instead of the exact sum over T")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("sample", help="write a PNG grid of samples from a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.add_argument("--method", default="ddpm", help="ddpm (ancestral, all T steps) or ddim")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_sample)

    p = sub.add_parser("plot-samplers", help="plot each method's timestep density and effective weight")
    p.add_argument("--schedule", default="linear")
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--methods", default="uniform,p2,min-snr,logit-normal,lognormal-edm,speed,speed-2024,beta-0.95,"
                                        "adaptive")
    p.add_argument("--data", default="digits", help="images to average a data-conditioned sampler's pmf over")
    p.add_argument("--out", default="samplers.png")
    p.set_defaults(func=_plot_samplers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        from .train import TrainingDiverged
        if isinstance(e, TrainingDiverged):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

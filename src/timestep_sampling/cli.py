"""Command line: argument parsing only; every subcommand calls one function elsewhere.

A user mistake (UserError) prints one line on stderr and exits with status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from .errors import UserError
from .methods import available_methods


def _train(args) -> None:
    from .config import make_config
    from .train import train

    overrides = {k: getattr(args, k) for k in ("data", "out", "steps", "schedule", "seed", "method", "sampler",
                 "weighting", "eval_every", "batch_size", "lr", "model", "device", "T", "checkpoint_every",
                 "num_samples", "warmup", "ema_decay", "ema_warmup", "precision", "channels_last", "compile",
                 "objective", "eval_images")}
    cfg = make_config(args.config, **overrides)
    _refuse_to_overwrite(cfg.out, args.resume or args.overwrite)
    train(cfg, resume=args.resume, progress=not args.no_progress)


def _refuse_to_overwrite(out: str, allowed: bool) -> None:
    """A run's folder is not started again by accident: that would replace its config, metrics and
    checkpoints. (Checked before the process group forms, so every rank of a torchrun sees the same folder.)"""
    from pathlib import Path

    from .checkpoint import list_checkpoints

    folder = Path(out)
    if allowed or not folder.is_dir():
        return
    if (folder / "config.json").is_file() or list_checkpoints(folder / "checkpoints"):
        raise UserError(f"{out!r} already holds a training run: --resume continues it, --overwrite starts it again "
                        "from step 0 (replacing its checkpoints and metrics), or give another --out")


def _evaluate(args) -> None:
    from .evaluate import evaluate, write_record

    result = evaluate(args.checkpoint, exact=not args.estimate, data=args.data, device=args.device,
                      progress=not args.no_progress, images=args.images, seed=args.seed, trace=args.trace,
                      probes=args.probes, ode_steps=args.ode_steps, ode_solver=args.ode_solver)
    print(result.line())
    if args.json:
        print(f"wrote {write_record(result, args.json)}")


def _sample(args) -> None:
    from .evaluate import sample_checkpoint

    path = sample_checkpoint(args.checkpoint, args.out, num=args.num, method=args.method, steps=args.steps,
                             seed=args.seed, device=args.device, progress=not args.no_progress)
    print(f"wrote {path}")


def _plot_samplers(args) -> None:
    from pathlib import Path

    from .methods import is_flow_method
    from .plotting import plot_flow_samplers, plot_samplers
    from .schedule import NoiseSchedule

    from .data import load_data

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    flow = [m.strip() for m in args.flow_methods.split(",") if m.strip()]
    flow += [m for m in methods if is_flow_method(m) and m not in flow]  # a flow method in --methods moves over
    discrete = [m for m in methods if m not in flow]
    if not discrete and not flow:
        raise UserError("nothing to plot: name methods in --methods (or --flow-methods)")
    if discrete:
        x0 = load_data(args.data).train[:256]  # data-conditioned samplers (adaptive) are drawn averaged over it
        plot_samplers(NoiseSchedule(args.schedule, T=args.T), discrete, args.out, x0=x0)
        print(f"wrote {args.out}")
    if flow:
        out = Path(args.out)
        flow_out = args.flow_out or (out if not discrete else out.with_name(f"{out.stem}-flow{out.suffix}"))
        plot_flow_samplers(flow, flow_out)
        print(f"wrote {flow_out} (rectified flow: continuous t)")


def _analysis_out(args) -> str:
    return args.out or f"{args.run.rstrip('/')}/analysis"


def _analysis_args(args) -> dict:
    return {"out": _analysis_out(args), "seed": args.seed, "data": args.data,
            "device": args.device, "progress": not args.no_progress}


def _analyze_grad_variance(args) -> None:
    from .analysis import grad_variance

    r = grad_variance(args.run, steps=args.steps, bins=args.bins, samples=args.samples, weighting=args.weighting,
                      ema=args.ema, **_analysis_args(args))
    print(f"wrote {r['png']} and {r['json']}")


def _analyze_timestep_loss(args) -> None:
    from .analysis import timestep_loss

    r = timestep_loss(args.run, steps=args.steps, bins=args.bins, images=args.images, ema=args.ema,
                      **_analysis_args(args))
    print(f"wrote {r['png']} and {r['json']}")


def _analyze_interdependence(args) -> None:
    from .analysis import interdependence

    r = interdependence(args.run, step=args.step, bands=args.bands, train_steps=args.train_steps,
                        batch_size=args.batch_size, lr=args.lr, weighting=args.weighting, images=args.images,
                        **_analysis_args(args))
    print(f"wrote {r['png']} and {r['json']}")


def _analyze_sampler_density(args) -> None:
    from .analysis import sampler_density

    r = sampler_density(args.run, _analysis_out(args))
    print(f"wrote {r['png']} and {r['json']}")


def _analyze_reward_signal(args) -> None:
    from .reward_signal import reward_signal

    r = reward_signal(args.run, step=args.step, updates=args.updates, groups=args.groups, kept=args.kept,
                      **_analysis_args(args))
    for name, e in r["estimators"].items():
        print(f"{name:>7}: t explains {100 * e['explained']:.2f}% of the reward's variance, "
              f"F = {e['F']:.2f}, p = {e['p']:.2e} ({e['samples']} samples)")
    print(f"wrote {r['png']} and {r['json']}")


def _add_analyze_parser(sub) -> None:
    analyze = sub.add_parser("analyze", help="pictures of a training run: gradient variance, per-timestep loss, "
                                             "interdependence of timesteps, sampler density over training")
    kinds = analyze.add_subparsers(dest="analysis", required=True)
    steps_help = ("checkpoints to analyse, e.g. 1000,2000 (default: all present in RUN/checkpoints; the trainer keeps "
                  "only the newest keep_checkpoints, default 2: raise it in a --config file to keep more)")

    def common(p, what: str, checkpoints: bool = True):
        p.add_argument("--run", required=True, help="a training run's --out folder (config.json, checkpoints, logs)")
        p.add_argument("--out", help=f"folder for {what}.png and {what}.json (default RUN/analysis)")
        if checkpoints:
            p.add_argument("--seed", type=int, default=0, help="seeds the images, timesteps and noise measured")
            p.add_argument("--data", help="the run's data if it moved (default: the data in its config.json)")
            p.add_argument("--device", default="cpu")
            p.add_argument("--no-progress", action="store_true")

    def per_checkpoint(p):
        """The options of the analyses that measure every chosen checkpoint in timestep bins."""
        p.add_argument("--steps", help=steps_help)
        p.add_argument("--bins", type=int, default=20, help="equal-width timestep bins (default 20)")
        p.add_argument("--ema", action="store_true", help="use the EMA weights (default: the training weights)")

    p = kinds.add_parser("grad-variance", help="variance of the stochastic gradient per timestep bin, per "
                                               "checkpoint (Kim et al. Fig. 2, top)")
    common(p, "grad_variance")
    per_checkpoint(p)
    p.add_argument("--samples", type=int, default=64, help="per-sample gradients per bin (default 64)")
    p.add_argument("--weighting", default="none", help="loss weighting of the ε-MSE, e.g. vlb, min-snr (default none)")
    p.set_defaults(func=_analyze_grad_variance)

    p = kinds.add_parser("timestep-loss", help="ε-MSE per timestep bin on the test set, per checkpoint "
                                               "(Kim et al. Fig. 2, bottom)")
    common(p, "timestep_loss")
    per_checkpoint(p)
    p.add_argument("--images", type=int, default=512, help="test images measured (default up to 512)")
    p.set_defaults(func=_analyze_timestep_loss)

    p = kinds.add_parser("interdependence", help="train on one band of timesteps from a checkpoint and measure the "
                                                 "loss change on every band (Kim et al. Fig. 4)")
    common(p, "interdependence")
    p.add_argument("--step", type=int, help="the checkpoint to start from (default the latest)")
    p.add_argument("--bands", type=int, default=10, help="equal-width timestep bands (default 10)")
    p.add_argument("--train-steps", type=int, default=20, help="training steps on each band (default 20)")
    p.add_argument("--batch-size", type=int, help="default: the run's batch size")
    p.add_argument("--lr", type=float, help="default: the run's learning rate at the checkpoint")
    p.add_argument("--weighting", default="none", help="loss weighting while training on a band (default none)")
    p.add_argument("--images", type=int, default=512, help="test images measured (default up to 512)")
    p.set_defaults(func=_analyze_interdependence)

    p = kinds.add_parser("reward-signal", help="how much each reward estimator of the learned sampler depends on the "
                                               "sample's own timestep (per-decile means, ANOVA)")
    common(p, "reward_signal")
    p.add_argument("--step", type=int, help="the checkpoint to start from (default the latest)")
    p.add_argument("--updates", type=int, default=20, help="training steps scored, one batch each (default 20)")
    p.add_argument("--groups", type=int, default=10, help="quantile groups of t (default 10: deciles)")
    p.add_argument("--kept", type=int, default=0, help="also score the credit whose bound-probe gradient is kept "
                                                       "for this many steps (direction_every; default 0: not)")
    p.set_defaults(func=_analyze_reward_signal)

    p = kinds.add_parser("sampler-density", help="the sampler's timestep density over training, from "
                                                 "RUN/sampler_density.jsonl (Kim et al. Fig. 5, 6)")
    common(p, "sampler_density", checkpoints=False)
    p.set_defaults(func=_analyze_sampler_density)


def _seed_list(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(dict.fromkeys(int(v) for v in value.split(",") if v.strip()))
    except ValueError:
        raise UserError(f"--only-seeds takes comma-separated integers, e.g. 0,2; got {value!r}") from None


def _bench(args) -> None:
    from .bench import make_settings, run_bench

    settings = make_settings(args.out, quick=args.quick, methods=args.methods, schedules=args.schedules,
                             seeds=args.seeds, only_seeds=_seed_list(args.only_seeds), steps=args.steps, eval_every=args.eval_every, data=args.data,
                             model=args.model, batch_size=args.batch_size, T=args.T, device=args.device,
                             fd_samples=args.fd_samples, ddim_steps=args.ddim_steps, inception=args.inception,
                             eval_images=args.eval_images,
                             fd_samplers=args.fd_samplers, fd_ddpm_every=args.fd_ddpm_every,
                             fd_ddpm_at=args.fd_ddpm_at,
                             records=args.records, report_only=args.report_only or None, objective=args.objective,
                             step_cost=args.step_cost,
                             keep_checkpoints=args.keep_checkpoints or None, progress=not args.no_progress)
    result = run_bench(settings)
    print(result["headline"])
    print(f"wrote {result['report']} ({result['records']} records; {result['trained']} runs trained, "
          f"{result['resumed']} resumed, {result['skipped']} already finished, {result['recorded']} taken from "
          f"records" + (f", {result['missing']} not recorded and left out" if result["missing"] else "")
          + (f", {result['filled']} records given scores from their checkpoints" if result.get("filled") else "")
          + (f", {result['incomplete']} records lacking a score" if result.get("incomplete") else "")
          + f"; {result['total_seconds']:.0f} s)")


def _add_bench_parser(sub) -> None:
    # The default grids named from the bench's own lists: a hand copy here had drifted from them.
    from .bench.settings import DEFAULT_METHODS, FLOW_METHODS

    p = sub.add_parser("bench", help="train a grid of methods x schedules x seeds and compare them "
                                     "(bits/dim, FD, time-to-quality, plots)")
    p.add_argument("--out", required=True, help="folder for runs/, results.json, summary.csv, report.md, *.png")
    p.add_argument("--quick", action="store_true", help="uniform, adaptive, adaptive-frozen; linear; 2 seeds; 400 steps; "
                                                        "FD of DDIM samples only (a few minutes on 2 CPU cores)")
    p.add_argument("--methods", help="comma-separated method presets (default: the paper's table: "
                                     f"{', '.join(DEFAULT_METHODS)})")
    p.add_argument("--schedules", help="comma-separated noise schedules (default linear,cosine,quad)")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 per method and schedule (default 3)")
    p.add_argument("--only-seeds", help="just these seeds, e.g. 2 or 0,2 (to split a method's seeds across processes "
                                        "that share --records)")
    p.add_argument("--steps", type=int, help="training steps per run (default 3000)")
    p.add_argument("--eval-every", type=int, help="checkpoint, bits/dim and FD every N steps (default 500, --quick "
                                                  "200; with only --steps, as many checkpoints as the preset)")
    p.add_argument("--data", help="digits (default) or fashion-mnist, scored in their own classifier's features (FD "
                                  "and KID); other data need --inception for a sample-quality score")
    p.add_argument("--model", help="UNet preset (default tiny)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--T", type=int, help="diffusion timesteps (default 1000)")
    p.add_argument("--device", help="auto (default: the GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument("--fd-samples", type=int, help="generated images per FD (default 1000; --quick 256)")
    p.add_argument("--eval-images", type=int, help="bits/dim on the first N test images (default: the whole test "
                                                   "split); the FD's reference stays the whole split")
    p.add_argument("--ddim-steps", type=int, help="DDIM steps for those images (default 50; --quick 20); Euler's "
                                                  "and Heun's for a flow")
    p.add_argument("--fd-samplers", help="the samplers whose images the FD scores, one FD each (fd_ddim, fd_ddpm...): "
                                         "ddim (--ddim-steps steps) and ddpm (ancestral, all T steps, as the paper's "
                                         "FIDs); default ddim,ddpm, --quick ddim; for --objective flow euler,heun")
    p.add_argument("--fd-ddpm-every", type=int,
                   help="the ancestral FD at checkpoints whose step is a multiple of N, and the last (default: about "
                        "three checkpoints, N = steps/3 rounded to a multiple of --eval-every); DDIM's at every one")
    p.add_argument("--fd-ddpm-at", metavar="STEPS",
                   help="the ancestral FD at exactly these checkpoints, e.g. 1000,1500, and the last (instead of "
                        "--fd-ddpm-every)")
    p.add_argument("--inception", help="a TorchScript feature network on disk (e.g. inception-2015-12-05.pt) "
                                       "for FID; never downloaded")
    p.add_argument("--objective", choices=("ddpm", "flow"), default="ddpm",
                   help=f"ddpm (default) or flow: rectified flow with flow-... methods (default: "
                        f"{', '.join(FLOW_METHODS)}), scored by the ODE likelihood and FD of Euler and Heun samples "
                        "(--ddim-steps steps each)")
    p.add_argument("--records", help="a folder of per-run records (e.g. docs/bench/long): runs recorded there under "
                                     "the same settings are skipped, each finished run adds its record, and the "
                                     "report covers every record")
    p.add_argument("--report-only", action="store_true",
                   help="with --records: train nothing; report the recorded runs and name the cells that are not")
    p.add_argument("--step-cost", help="a step-cost file (benchmarks/step_cost.py: each method's seconds per step / "
                                       "uniform's, measured in one run) for the time-to-quality speed-up in compute")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every checkpoint (default: only each run's last, once scored)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="timestep-sampling", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a DDPM with a timestep sampler and loss weighting")
    p.add_argument("--config", help="a JSON or TOML file of TrainConfig keys; flags override it")
    p.add_argument("--data", help="digits (default, embedded), photos32 (32x32 RGB crops of scikit-image's bundled "
                                  "photographs), fashion-mnist (apt-get install dataset-fashion-mnist), an image "
                                  "folder, a .npz, a CIFAR-10 batches folder, or a folder of MNIST-style idx files")
    p.add_argument("--out", help="output folder (default runs/digits)")
    p.add_argument("--steps", type=int)
    p.add_argument("--schedule", help="linear, quad, cosine (or scaled_linear, squaredcos_cap_v2)")
    p.add_argument("--T", type=int, help="number of diffusion timesteps (default 1000)")
    p.add_argument("--seed", type=int)
    p.add_argument("--method", help="a preset pairing a sampler and a weighting: " + ", ".join(available_methods())
                   + "; or any 'sampler+weighting' (ablations kept for old records: available_methods(ablations=True))")
    p.add_argument("--sampler", help="override the preset's sampler, e.g. 'logit-normal:mean=0,std=1'")
    p.add_argument("--weighting", help="override the preset's weighting, e.g. 'min-snr:gamma=5'")
    p.add_argument("--objective", help="ddpm (default) or flow (rectified flow: use a flow-... method), "
                                       "e.g. 'flow:sample_steps=20'")
    p.add_argument("--eval-every", type=int, help="estimate test bits/dim every N steps (0: only at the end)")
    p.add_argument("--eval-images", type=int, help="score every bits/dim on the first N test images (default: the "
                                                   "whole test split)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps (default: a tenth of --steps, at "
                                                        "most 500, at least 1; 0: only at the end)")
    p.add_argument("--batch-size", type=int, help="global batch size (split across processes)")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup", type=int)
    p.add_argument("--ema-decay", type=float, help="the EMA's decay (default 0.999), reached after its warm-up")
    p.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="EMA warm-up: update n uses min(decay, (1+n)/(10+n)) (default on; off: constant decay)")
    p.add_argument("--model", help="UNet preset: tiny, small, cifar (DDPM's CIFAR-10 network, 35.7M parameters)")
    p.add_argument("--precision", help="fp32 (default) or bf16: autocast of the training forward pass; the weights, "
                                       "the bound and every evaluation stay float32")
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="channels-last memory format for the network and its batches (faster convolutions on GPUs)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the training forward pass (minutes of compiling before the first step)")
    p.add_argument("--num-samples", type=int, help="images in the final sample grid (0: none)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out (none yet: "
                                                         "start from step 0, unless --out is another run's)")
    p.add_argument("--overwrite", action="store_true", help="start again from step 0 in an --out that already holds a "
                                                            "run (without it, such an --out is refused)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="test bits/dim of a checkpoint (DDPM: the variational bound; rectified "
                                        "flow: the probability-flow ODE's likelihood)")
    p.add_argument("--checkpoint", required=True, help="a run folder or checkpoints/step_XXXXXXXX folder")
    p.add_argument("--data", help="score on this data's test split instead of the run's own")
    p.add_argument("--estimate", action="store_true",
                   help="DDPM: the stratified estimate instead of the exact sum over T; flow: the trainer's "
                        "in-training estimate (its eval_images test images, eval_steps ODE steps)")
    p.add_argument("--images", type=int, help="score only the first N test images (default: the run's own, its "
                                              "eval_images or all; flow with --estimate: its objective's "
                                              "eval_images, 64)")
    p.add_argument("--seed", type=int, default=0, help="seeds the bound's noise, or the flow's dequantisation "
                                                       "noise and trace probes (default 0, as the trainer)")
    p.add_argument("--trace", help="flow: hutchinson (default, as the trainer), exact (the Jacobian's diagonal by "
                                   "autograd: one model input per dimension) or auto (exact up to 64 dimensions)")
    p.add_argument("--probes", type=int, help="flow: Hutchinson's ±1 probes per image (default: the run's, 2)")
    p.add_argument("--ode-steps", type=int, help="flow: fixed ODE steps from t = 0 to 1 (default: the run's "
                                                 "final_steps, 32; with --estimate its eval_steps, 8)")
    p.add_argument("--ode-solver", help="flow: rk4 (default, as the trainer) or heun")
    p.add_argument("--json", help="also write the result, with how it was computed, to this JSON file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("sample", help="write a PNG grid of samples from a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.add_argument("--method", help="DDPM checkpoint: ddpm (ancestral, all T steps; the default) or ddim; "
                                    "rectified-flow checkpoint: euler or heun (default: the run's sample_solver, "
                                    "euler unless its --objective spec set it)")
    p.add_argument("--steps", type=int, help="DDIM steps (default 50), or Euler/Heun steps (default: the run's "
                                             "sample_steps, 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_sample)

    p = sub.add_parser("plot-samplers", help="plot each method's timestep density and effective weight")
    p.add_argument("--schedule", default="linear")
    p.add_argument("--T", type=int, default=1000)
    p.add_argument("--methods", default="uniform,p2,min-snr,logit-normal,lognormal-edm,speed,speed-2024,beta-0.95,"
                                        "adaptive")
    p.add_argument("--flow-methods", default="flow-uniform,flow-logit-normal,flow-mode,flow-cosmap,"
                                             "flow-logit-normal:shift=3+flow-none,flow-elbo,flow-min-snr,flow-sigma-sqrt,"
                                             "flow-adaptive",
                   help="rectified-flow methods (continuous t), drawn in a second figure; '' for none")
    p.add_argument("--data", default="digits", help="images to average a data-conditioned sampler's pmf over")
    p.add_argument("--out", default="samplers.png")
    p.add_argument("--flow-out", help="the flow figure (default: OUT with -flow before the suffix)")
    p.set_defaults(func=_plot_samplers)
    _add_analyze_parser(sub)
    _add_bench_parser(sub)
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

"""The paper's scale on one accelerator, in one command that writes one JSON file:

    python benchmarks/gpu_check.py --out gpu_check.json      # one H200: under 8 minutes (--budget-s 420)
    python benchmarks/gpu_check.py --tiny --out tiny.json    # any CPU, seconds: the same code, a tiny model

What it measures, on DDPM's CIFAR-10 network (`--model cifar`, 35.7M parameters) at batch 128 on the
32x32 photographs (`--data photos32`), T = 1000, linear schedule:

1. `device`: the torch build, the accelerator, its memory and the TF32 switches (left at PyTorch's
   defaults, as the trainer leaves them).
2. `timing`: for fp32, bf16 autocast, and bf16 with channels-last: training steps per second and peak
   memory (torch.cuda.max_memory_allocated) with the uniform sampler and with `make_sampler("adaptive",
   schedule)` at its defaults, whose update step (every K-th: bound probes before and after the
   optimiser step, a policy step) and plain step (the policy draws t) are timed one step at a time,
   with torch.cuda.synchronize() around each, and
       ratio_k40 = (39 plain + 1 update) / (40 uniform)
   against uniform steps timed the same way, and `ratio_at_update_every`, the same at the sampler's own
   update interval (its default K = 20 since the credit sampler; ratio_k40 is kept for comparison). Also
   the time of `sampler.sample()` alone (the adaptive sampler's policy runs on the device, its Beta
   inverse-CDF on the host: one synchronisation per step).
3. `ddp`: the same timings under torchrun with two processes (batch 128 each) when two GPUs are present;
   skipped with a note otherwise.
4. `short_run`: uniform and adaptive from the same initial weights for as many steps as the budget leaves
   (at most --run-steps), in the fastest configuration of part 2, trained in turns of 20 steps each (so
   both see the same machine, and the run stops at the budget rather than at a step count guessed from
   part 2's short timings, which the first H200 run found 30 % optimistic); test bits/dim by
   `estimate_bpd` on the first --eval-images test crops, before and after (float32, no EMA). A Fréchet
   distance needs a feature network for 32x32 RGB: frechet.py's own classifier scores only the 8x8 digits, so without
   `--inception FILE.pt` (a TorchScript feature network on disk, never downloaded) `fd` is null.

The training loop is the library's public API as a user writes it: sampler.sample(), the loss,
sampler.observe(model, x0) around the optimiser step, sampler.update(). Results are written after every
part, so a run stopped by a time limit still leaves what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from timestep_sampling import NoiseSchedule, UserError, estimate_bpd, make_sampler, mse_per_sample
from timestep_sampling.data import load_data
from timestep_sampling.models import count_parameters, make_unet

K = 40  # the update interval of the first ratio reported (the sampler's default before the credit sampler)
RUN_TURN = 20  # the short run's steps per turn of each sampler


@dataclass
class Settings:
    model: str = "cifar"
    batch_size: int = 128           # per process
    data: str = "photos32"
    T: int = 1000
    lr: float = 2e-4                # DDPM's CIFAR-10 learning rate
    configs: tuple = (("fp32", False), ("bf16", False), ("bf16", True))  # (precision, channels_last)
    uniform_warmup: int = 10
    uniform_steps: int = 40         # timed as one block, then again one step at a time
    adaptive_options: dict = field(default_factory=dict)  # {}: make_sampler("adaptive", schedule) as it is
    adaptive_warmup: int = K        # one whole cycle, its update step (which builds the policy) included
    adaptive_cycles: int = 3        # timed: 3 update steps and 117 plain steps
    sample_reps: int = 20
    run_steps: int = 3000           # the short run's ceiling; the budget usually decides
    eval_images: int = 1000
    eval_exact_below: int = 20      # estimate_bpd: t < 20 exactly, one t from each of 80 log-spaced strata
    eval_strata: int = 80
    eval_batch: int = 2000          # model inputs per forward pass of the bound
    fd_images: int = 1000
    ddim_steps: int = 50
    budget_s: float = 420.0


# --tiny: every code path, as few steps as cover it. Two configurations (fp32; bf16 with channels-last) cover
# both precisions and both layouts: bf16 convolutions on a CPU without bf16 instructions take seconds a step.
TINY = dict(model="tiny", batch_size=4, configs=(("fp32", False), ("bf16", True)), uniform_warmup=1,
            uniform_steps=2, adaptive_options={"update_every": 2}, adaptive_warmup=0, adaptive_cycles=1,
            sample_reps=2, run_steps=2, eval_images=8, eval_exact_below=1, eval_strata=2, eval_batch=64,
            fd_images=8, ddim_steps=2, budget_s=120.0)


# ----------------------------------------------------------------------------------------------------
# the device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    """Peak memory allocated by tensors on the accelerator since reset_peak (None on a CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def device_info(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gb=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count(),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                    matmul_fp32_precision=getattr(torch.backends.cuda.matmul, "fp32_precision", None),
                    cudnn_benchmark=torch.backends.cudnn.benchmark)
    return info


# ----------------------------------------------------------------------------------------------------
# the training loop, as a user of the library writes it


def observed(sampler, model, x0: torch.Tensor, optimizer):
    """sampler.observe() around one optimiser step. When observe() takes the optimiser (`optimizer=`),
    this is the one line to change."""
    return sampler.observe(model, x0)


class Loop:
    """Training steps of one network in one configuration (precision, memory format, DDP or not)."""

    def __init__(self, settings: Settings, data, schedule, device, precision: str, channels_last: bool,
                 seed: int = 0, ddp: bool = False):
        self.settings, self.schedule, self.device = settings, schedule, device
        self.precision, self.channels_last = precision, channels_last
        torch.manual_seed(0)  # the same initial weights in every configuration and on every rank
        net = make_unet(data.image_size, data.channels, settings.model).to(device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None) if ddp else net
        self.opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
        self.train_x = data.train.to(device)
        self.gen = torch.Generator().manual_seed(seed)  # batches and timesteps; another seed on each rank

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ε from the network, under bf16 autocast when asked; float32 out, so the loss is float32."""
        if self.precision == "fp32":
            return self.model(x, t)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.model(x, t).float()

    def batch(self) -> torch.Tensor:
        idx = torch.randint(len(self.train_x), (self.settings.batch_size,), generator=self.gen)
        x0 = self.train_x[idx.to(self.device)]
        return x0.contiguous(memory_format=torch.channels_last) if self.channels_last else x0

    def step(self, sampler) -> None:
        x0 = self.batch()
        t, w = sampler.sample(len(x0), self.device, generator=self.gen, x0=x0)
        noise = torch.randn_like(x0)
        self.model.train()
        with observed(sampler, self.model, x0, self.opt):
            mse = mse_per_sample(self.forward, self.schedule, x0, t, noise)
            loss = (w * mse).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)  # as DDPM; no host synchronisation
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        sampler.update(t, mse.detach())

    def timed_step(self, sampler) -> float:
        """Seconds of one step, the device synchronised before and after."""
        sync(self.device)
        start = time.perf_counter()
        self.step(sampler)
        sync(self.device)
        return time.perf_counter() - start

    def timed_block(self, sampler, steps: int) -> float:
        """Seconds per step over `steps` steps, synchronised only at the ends (throughput)."""
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.step(sampler)
        sync(self.device)
        return (time.perf_counter() - start) / steps

    def timed_sample(self, sampler, reps: int) -> float:
        """Median seconds of sampler.sample() alone, on a fixed batch."""
        x0 = self.batch()
        times = []
        for _ in range(reps):
            sync(self.device)
            start = time.perf_counter()
            t, _ = sampler.sample(len(x0), self.device, generator=self.gen, x0=x0)
            sync(self.device)
            times.append(time.perf_counter() - start)
        return statistics.median(times)


# ----------------------------------------------------------------------------------------------------
# part 2 (and 3): step times


def config_name(precision: str, channels_last: bool) -> str:
    return precision + ("+channels_last" if channels_last else "")


def time_config(settings: Settings, data, schedule, device, precision: str, channels_last: bool,
                rank: int = 0, ddp: bool = False) -> dict:
    loop = Loop(settings, data, schedule, device, precision, channels_last, seed=rank, ddp=ddp)
    uniform = make_sampler("uniform", schedule)
    for _ in range(settings.uniform_warmup):
        loop.step(uniform)
    reset_peak(device)
    block = loop.timed_block(uniform, settings.uniform_steps)
    single = statistics.median(loop.timed_step(uniform) for _ in range(settings.uniform_steps))
    uniform_peak = peak_mb(device)
    uniform_sample = loop.timed_sample(uniform, settings.sample_reps)

    adaptive = make_sampler("adaptive", schedule, **settings.adaptive_options)
    for _ in range(settings.adaptive_warmup):
        loop.step(adaptive)
    reset_peak(device)
    plain, update = [], []
    for _ in range(settings.adaptive_cycles * adaptive.update_every):
        is_update = adaptive.is_update_step
        (update if is_update else plain).append(loop.timed_step(adaptive))
    adaptive_peak = peak_mb(device)
    adaptive_sample = loop.timed_sample(adaptive, settings.sample_reps)
    plain_s, update_s = statistics.median(plain), statistics.median(update)
    k = adaptive.update_every
    result = {
        "config": config_name(precision, channels_last), "precision": precision, "channels_last": channels_last,
        "uniform": {"steps_per_s": 1 / block, "ms_per_step": 1e3 * block, "ms_per_step_synchronised": 1e3 * single,
                    "sample_ms": 1e3 * uniform_sample, "peak_memory_mb": uniform_peak,
                    "steps_timed": 2 * settings.uniform_steps},
        "adaptive": {"plain_ms": 1e3 * plain_s, "update_ms": 1e3 * update_s, "plain_steps": len(plain),
                     "update_steps": len(update), "update_every": adaptive.update_every,
                     "steps_per_s_at_k40": K / ((K - 1) * plain_s + update_s), "sample_ms": 1e3 * adaptive_sample,
                     "peak_memory_mb": adaptive_peak},
        "ratio_k40": ((K - 1) * plain_s + update_s) / (K * single),
        "ratio_at_update_every": ((k - 1) * plain_s + update_s) / (k * single),
    }
    del loop
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def timing(settings: Settings, data, schedule, device, save, rank: int = 0, ddp: bool = False) -> list[dict]:
    results = []
    for precision, channels_last in settings.configs:
        results.append(time_config(settings, data, schedule, device, precision, channels_last, rank, ddp))
        if rank == 0:
            r = results[-1]
            print(f"{r['config']}: uniform {r['uniform']['steps_per_s']:.2f} steps/s, adaptive plain "
                  f"{r['adaptive']['plain_ms']:.1f} ms / update {r['adaptive']['update_ms']:.0f} ms, ratio at "
                  f"K={r['adaptive']['update_every']} {r['ratio_at_update_every']:.3f}, at K={K} {r['ratio_k40']:.3f}",
                  flush=True)
            save(results)
    return results


# ----------------------------------------------------------------------------------------------------
# part 3: two processes


def ddp_part(args, settings: Settings, remaining_s: float) -> dict:
    gpus = torch.cuda.device_count()
    if gpus < 2 and not args.ddp_on_cpu:
        return {"skipped": f"{gpus} GPU(s) here; the two-process check needs two"}
    if remaining_s < 60:
        return {"skipped": f"only {remaining_s:.0f} s of the budget left"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
               "--ddp-worker", "--out", str(out), "--device", "cpu" if args.ddp_on_cpu else "cuda"]
        cmd += ["--tiny"] if args.tiny else []
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=remaining_s)
        except subprocess.TimeoutExpired:
            return {"skipped": f"torchrun did not finish in the {remaining_s:.0f} s left of the budget"}
        if proc.returncode != 0 or not out.exists():
            return {"error": f"torchrun exited with {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
        return json.loads(out.read_text())


def ddp_worker(args, settings: Settings) -> None:
    import torch.distributed as dist

    cuda = args.device != "cpu"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    try:
        data = load_data(settings.data)
        schedule = NoiseSchedule("linear", T=settings.T)
        results = timing(settings, data, schedule, device, save=lambda r: None, rank=rank, ddp=True)
        if rank == 0:
            Path(args.out).write_text(json.dumps({"world_size": world, "backend": dist.get_backend(),
                                                  "batch_per_process": settings.batch_size,
                                                  "timing": results}, indent=2))
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------
# part 4: a short run, scored


def bits_per_dim(settings: Settings, net, schedule, test_x: torch.Tensor) -> float:
    net.eval()
    result = estimate_bpd(net, schedule, test_x, bins=256, exact_below=settings.eval_exact_below,
                          strata=settings.eval_strata, batch_size=settings.eval_batch, seed=0)
    return result.total


def frechet(settings: Settings, net, schedule, test_x, features, device) -> float:
    from timestep_sampling.frechet import frechet_distance_features
    from timestep_sampling.sampling import ddim_sample

    n = min(settings.fd_images, len(test_x))
    images = ddim_sample(net.eval(), schedule, (n,) + tuple(test_x.shape[1:]), steps=settings.ddim_steps,
                         device=device, generator=torch.Generator().manual_seed(0))
    return frechet_distance_features(features(images.cpu()), features(test_x[:n].cpu()))


def short_run(args, settings: Settings, data, schedule, device, config: dict, deadline: float) -> dict:
    test_x = data.test[:settings.eval_images].to(device)
    features, fd_note = None, ("frechet.py's classifier scores only 1x8x8 digits; give --inception FILE.pt "
                               "(a TorchScript feature network on disk) for an FD of 32x32 RGB images")
    if args.inception:
        from timestep_sampling.frechet import TorchScriptFeatures
        features, fd_note = TorchScriptFeatures(args.inception, bins=256, device=device), f"features: {args.inception}"
    precision, channels_last = config["precision"], config["channels_last"]
    loops = {name: Loop(settings, data, schedule, device, precision, channels_last) for name in ("uniform", "adaptive")}
    start = time.perf_counter()
    bpd_start = bits_per_dim(settings, loops["uniform"].net, schedule, test_x)  # the same initial weights
    eval_s = time.perf_counter() - start
    # Train in turns until the budget, less the evaluations after, is spent: both runs see the same machine,
    # and the stop follows the clock rather than a step count extrapolated from part 2's short timings.
    stop_at = deadline - 2 * eval_s * (2 if features else 1)
    samplers = {name: make_sampler(name, schedule, **(settings.adaptive_options if name == "adaptive" else {}))
                for name in loops}
    seconds, steps = dict.fromkeys(loops, 0.0), 0
    while steps < settings.run_steps and (steps == 0 or time.perf_counter() < stop_at):
        turn = min(RUN_TURN, settings.run_steps - steps)
        for name, loop in loops.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(turn):
                loop.step(samplers[name])
            sync(device)
            seconds[name] += time.perf_counter() - t0
        steps += turn
    runs = {}
    for name, loop in loops.items():
        runs[name] = {"steps": steps, "train_seconds": seconds[name], "steps_per_s": steps / seconds[name],
                      "bpd": bits_per_dim(settings, loop.net, schedule, test_x),
                      "fd": frechet(settings, loop.net, schedule, test_x, features, device) if features else None}
        if name == "adaptive":
            runs[name]["sampler_updates"] = samplers[name].updates
        print(f"short run, {name}: {steps} steps in {seconds[name]:.0f} s, test bits/dim {bpd_start:.3f} -> "
              f"{runs[name]['bpd']:.3f}", flush=True)
    return {"config": config["config"], "steps": steps, "capped_by_budget": steps < settings.run_steps,
            "bpd_start": bpd_start, "eval_seconds": eval_s, "runs": runs,
            "bpd_settings": {"images": len(test_x), "exact_below": settings.eval_exact_below,
                             "strata": settings.eval_strata, "model": "training weights, float32 (no EMA)"},
            "fd_note": fd_note}


# ----------------------------------------------------------------------------------------------------


def device_slug(device: torch.device) -> str:
    """A file name for the accelerator, e.g. "nvidia-h200"; "gpu_check" when there is none."""
    if device.type == "cpu":
        return "gpu_check"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or device.type


def output_path(out: str, device: torch.device, tiny: bool) -> Path:
    """The JSON file that --out names: the path itself, or, for a folder (an existing one, or a path ending
    in '/', made if its parent exists), `<device-slug>.json` inside it (`-tiny` before .json with --tiny, so
    that a smoke test does not overwrite a real result). The folder to write in, or for a folder its parent,
    must exist: a mistyped path is one line before minutes of measuring, not a folder tree made for it."""
    path = Path(out)
    if out.endswith(("/", os.sep)) or path.is_dir():
        if not path.is_dir():
            if path.exists():
                raise UserError(f"--out {out!r} is a file, not a folder")
            if not path.parent.is_dir():
                raise UserError(f"--out {out!r}: its parent folder {str(path.parent)!r} does not exist")
            path.mkdir()
        return path / f"{device_slug(device)}{'-tiny' if tiny else ''}.json"
    if not path.parent.is_dir():
        raise UserError(f"--out {out!r}: the folder {str(path.parent)!r} does not exist")
    return path


def main(argv=None) -> int:
    try:
        return check(argv)
    except UserError as e:  # a mistake in the arguments: one line, status 2, as the command line does
        print(f"error: {e}", file=sys.stderr)
        return 2


def check(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSON file to write, or a folder (existing, or ending in "
                                                     "'/') to write <device>.json in, e.g. nvidia-h200.json "
                                                     "(gpu_check.json without an accelerator; -tiny.json with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny model, batch 4, a few steps: seconds on a CPU")
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda")
    parser.add_argument("--budget-s", type=float, help="seconds the whole check may take (default 420; --tiny 120)")
    parser.add_argument("--run-steps", type=int, help="the short run's most steps (default 3000; --tiny 2)")
    parser.add_argument("--inception", help="a TorchScript feature network on disk, for an FD of the short run")
    parser.add_argument("--ddp-on-cpu", action="store_true", help="run the two-process part on CPU (gloo), to test it")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)  # one torchrun rank
    args = parser.parse_args(argv)
    settings = Settings(**(TINY if args.tiny else {}))
    if args.budget_s:
        settings.budget_s = args.budget_s
    if args.run_steps:
        settings.run_steps = args.run_steps
    if args.ddp_worker:
        ddp_worker(args, settings)
        return 0
    if args.inception and not Path(args.inception).is_file():  # before minutes of measuring, not after
        raise UserError(f"--inception {args.inception!r} is not a file; expected a TorchScript feature network")

    began = time.perf_counter()
    deadline = began + settings.budget_s
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    out = output_path(args.out, device, args.tiny)
    result = {"tiny": args.tiny, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": device_info(device)}

    def save(**parts) -> None:
        result.update(parts, seconds=time.perf_counter() - began)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)

    data = load_data(settings.data)
    schedule = NoiseSchedule("linear", T=settings.T)
    params = count_parameters(make_unet(data.image_size, data.channels, settings.model))
    save(settings={**asdict(settings), "data_shape": list(data.shape), "train_images": len(data.train),
                   "test_images": len(data.test), "parameters": params, "K": K})
    print(f"{settings.model} preset, {params:,} parameters, batch {settings.batch_size}, {data!r}, "
          f"device {device}", flush=True)

    results = timing(settings, data, schedule, device, save=lambda r: save(timing=r))
    best = max(results, key=lambda r: r["uniform"]["steps_per_s"])
    save(timing=results, fastest=best["config"])

    reserve = 0.35 * (deadline - time.perf_counter())  # what the short run keeps for itself
    save(ddp=ddp_part(args, settings, deadline - time.perf_counter() - reserve))
    save(short_run=short_run(args, settings, data, schedule, device, best, deadline))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    save()
    print(f"wrote {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

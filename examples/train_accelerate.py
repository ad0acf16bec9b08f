"""A timestep sampler in a Hugging Face Accelerate loop: a small diffusers UNet on the 8x8 digits, in the shape of
diffusers' examples/unconditional_image_generation/train_unconditional.py. One flag, --method, picks the sampler
and the loss weighting (timestep_sampling.make_method: adaptive, uniform, min-snr, ...).

    python examples/train_accelerate.py --method adaptive --max_train_steps 200 --output_dir runs/acc
    torchrun --standalone --nproc-per-node=2 examples/train_accelerate.py --cpu ...   # 2 CPU processes
    accelerate launch --multi_gpu --num_processes 2 examples/train_accelerate.py ... # 2 GPUs
    python examples/train_accelerate.py ... --resume_from_checkpoint latest   # continues a run bit for bit

The lines that differ from a uniform-timestep loop are marked "# sampler". observe() runs on every
micro-step: the credit is a derivative at the current weights, and the micro-batch's gradient joins the next
optimiser step, so a micro-step that does not step is credited like one that does (docs/multi-process.md).
At the end the main process writes OUTPUT_DIR/summary.json: the sampler's state and every rank's fingerprints.
"""
import argparse
import hashlib
import json
import math
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, gather_object, set_seed
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from sklearn.datasets import load_digits

from timestep_sampling import NoiseSchedule, UserError, make_method
from timestep_sampling.errors import require


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="adaptive", help="sampler and weighting, e.g. adaptive, uniform, min-snr")
    parser.add_argument("--update_every", type=int, help="the learned sampler's K, in micro-steps (observe calls)")
    parser.add_argument("--output_dir", "--out", default="runs/accelerate")
    parser.add_argument("--max_train_steps", type=int, default=200, help="optimiser steps")
    parser.add_argument("--train_batch_size", type=int, default=32, help="per process and micro-step")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--ema_decay", type=float, default=0.999)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even where there is a GPU")
    parser.add_argument("--checkpointing_steps", type=int, default=0, help="save_state every N optimiser steps")
    parser.add_argument("--resume_from_checkpoint", help='a checkpoint folder, or "latest" in --output_dir')
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def fingerprint(*tensors) -> str:
    """sha256 of the tensors' bytes: equal on two ranks only if every weight is equal bit for bit."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def state_tensors(state) -> list:
    """Every tensor and number in a (nested) state dict, in a fixed order."""
    if isinstance(state, dict):
        return [x for key in sorted(state, key=str) for x in state_tensors(state[key])]
    if isinstance(state, (list, tuple)):
        return [x for item in state for x in state_tensors(item)]
    if isinstance(state, torch.Tensor):
        return [state]
    return [torch.tensor(float(state))] if isinstance(state, (int, float)) else []


def main(args):
    require(args.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be at least 1")
    require(args.mixed_precision != "fp16" or (torch.cuda.is_available() and not args.cpu),
            "--mixed_precision fp16 needs a GPU; on the CPU use bf16")
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision, cpu=args.cpu,
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    set_seed(args.seed)  # the same initial weights and data order on every process

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    options = {} if args.update_every is None else {"update_every": args.update_every}
    sampler, weighting = make_method(args.method, NoiseSchedule.from_diffusers(scheduler), **options)  # sampler
    require(not sampler.continuous, f"--method {args.method} is a rectified-flow method; this loop is DDPM")
    if hasattr(sampler, "configure_bound"):
        sampler.configure_bound(bins=17)  # the digits have 17 grey levels
    start_pmf = sampler.probabilities().clone() if sampler.has_pmf else None

    model = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64),
                        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                        layers_per_block=1, norm_num_groups=8)
    ema = EMAModel(model.parameters(), decay=args.ema_decay, model_cls=UNet2DModel, model_config=model.config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    digits = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1  # in [-1, 1]
    # its own generator: iterating then draws nothing from the global one, which the noise comes from, so a
    # resumed run draws the same noise as the run it continues
    dataloader = torch.utils.data.DataLoader(digits, batch_size=args.train_batch_size, shuffle=True, drop_last=True,
                                             generator=torch.Generator().manual_seed(args.seed))
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    accelerator.register_for_checkpointing(sampler)  # sampler: its state travels with save_state/load_state

    set_seed(args.seed, device_specific=True)  # each rank its own noise and timesteps
    steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    global_step = 0
    if args.resume_from_checkpoint:
        path = args.resume_from_checkpoint
        if path == "latest":
            saved = [d for d in os.listdir(args.output_dir) if d.startswith("checkpoint-")] \
                if os.path.isdir(args.output_dir) else []
            require(saved, f"--resume_from_checkpoint latest: no checkpoint-N folder in {args.output_dir}")
            path = os.path.join(args.output_dir, max(saved, key=lambda d: int(d.split("-")[1])))
        require(os.path.isdir(path), f"--resume_from_checkpoint: no checkpoint folder {path}")
        accelerator.load_state(path)  # weights, optimiser, EMA, sampler, and every rank's random state
        global_step = int(os.path.basename(os.path.normpath(path)).split("-")[1])

    loss = torch.zeros(())
    epoch = global_step // steps_per_epoch
    while global_step < args.max_train_steps:
        dataloader.set_epoch(epoch)
        skip = (global_step - epoch * steps_per_epoch) * args.gradient_accumulation_steps
        batches = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        for x0 in batches:
            t, w = sampler.sample(len(x0), x0.device, x0=x0)  # sampler
            noise = torch.randn_like(x0)
            x_t = scheduler.add_noise(x0, noise, t)
            with accelerator.accumulate(model), sampler.observe(model, x0, optimizer=optimizer):  # sampler
                mse = ((model(x_t, t).sample.float() - noise) ** 2).mean(dim=(1, 2, 3))
                loss = (w * weighting.weights(t) * mse).mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
            sampler.update(t, mse.detach())  # sampler: the loss-learning ones (variance, loss-second-moment)
            if accelerator.sync_gradients:
                ema.step(model.parameters())
                global_step += 1
                if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                    accelerator.save_state(os.path.join(args.output_dir, f"checkpoint-{global_step}"))
                if global_step >= args.max_train_steps:
                    break
        epoch += 1

    weights = fingerprint(*accelerator.unwrap_model(model).parameters())
    sampler_state = fingerprint(*state_tensors(sampler.state_dict()))
    ranks = gather_object([{"weights": weights, "sampler": sampler_state, "last_loss": loss.item()}])
    if accelerator.is_main_process:
        pmf = sampler.probabilities() if sampler.has_pmf else None
        summary = {
            "method": args.method, "sampler": repr(sampler), "processes": accelerator.num_processes,
            "optimizer_steps": global_step, "loss": loss.item(),
            "sampler_updates": getattr(sampler, "updates", None), "sampler_step": getattr(sampler, "step", None),
            "tv_from_start": None if pmf is None else 0.5 * float((pmf - start_pmf).abs().sum()),
            "mass_below_100": None if pmf is None else float(pmf[:100].sum()),
            "weights_sum": float(sum(p.detach().double().sum() for p in accelerator.unwrap_model(model).parameters())),
            "ema_weights": fingerprint(*ema.shadow_params), "ranks": ranks,
        }
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        print(json.dumps({k: summary[k] for k in ("method", "optimizer_steps", "loss", "sampler_updates",
                                                  "tv_from_start")}))
    accelerator.end_training()


if __name__ == "__main__":
    try:
        main(parse_args())
    except UserError as error:  # a mistake in the arguments: one line, status 2 (as argparse's own)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

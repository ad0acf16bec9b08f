"""The sample scores' floor: FD and KID of N random *training* images against the whole test split, in the
classifier features the bench scores samples in (the digits' or Fashion-MNIST's). Two disjoint sets of real
images: what a model that samples the data's own distribution scores with N samples, the number to read a
model's FD and KID against.

    python benchmarks/score_floor.py --data fashion-mnist --n 1000,5000
    python benchmarks/score_floor.py --data digits --n 256,1000

The classifier is trained on first use (Fashion-MNIST's: about 2 minutes on one core) and cached in --cache
(default runs/classifier, the folder the bench keeps its own in under --out)."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from timestep_sampling.data import load_data
from timestep_sampling.errors import UserError
from timestep_sampling.frechet import (DigitFeatures, FashionFeatures, load_or_train_digit_classifier,
                                       load_or_train_fashion_classifier, real_floor)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist (default) or digits")
    p.add_argument("--n", default="1000,5000", help="training images per floor, comma-separated (default 1000,5000)")
    p.add_argument("--cache", default="runs/classifier", help="the classifier cache folder (default runs/classifier)")
    p.add_argument("--seed", type=int, default=0, help="seeds the draw of training images and KID's subsets")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        sizes = [int(v) for v in args.n.split(",") if v.strip()]
        data = load_data(args.data)
        if args.data == "fashion-mnist":
            model, info = load_or_train_fashion_classifier(args.cache, say=print)
            features = FashionFeatures(model, bins=data.bins)
        elif args.data == "digits":
            model, info = load_or_train_digit_classifier(args.cache)
            features = DigitFeatures(model, bins=data.bins)
        else:
            raise UserError(f"--data {args.data!r}: the floor needs a classifier's features; expected fashion-mnist "
                            f"or digits")
    except ValueError as e:  # UserError included; a bad --n too
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.data}: classifier test accuracy {100 * info['test_accuracy']:.2f} % on {info['test_images']} "
          f"images ({'cached' if info['cached'] else 'trained'} in {args.cache})")
    reference = features(data.test)
    for n in sizes:
        start = time.perf_counter()
        try:
            f = real_floor(features, data.train, data.test, n, seed=args.seed, reference_features=reference)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"N = {n} training images against the {len(data.test)} test images: FD {f['fd']:.3f}, "
              f"KID {f['kid']:.5f} ± {f['kid_std']:.5f} (std over 100 subsets of "
              f"{min(1000, n, len(data.test))}) [{time.perf_counter() - start:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())

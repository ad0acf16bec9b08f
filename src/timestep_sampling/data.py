"""Training data: the embedded digits, a user's own images, and stateless deterministic batching.

`load_data(spec)` turns one string into an `ImageDataset` of float32 images in [-1, 1]:

    digits                      scikit-learn's 8x8 digits (ships inside scikit-learn; no download)
    photos32                    32x32 RGB crops of the colour photographs inside scikit-image's wheel (no download)
    fashion-mnist               Fashion-MNIST's four idx files from Debian's package dataset-fashion-mnist
                                (/usr/share/datasets/fashion-mnist; `apt-get install dataset-fashion-mnist`)
    path/to/idx-folder/         a folder with the four idx files of MNIST or Fashion-MNIST (gzipped or not)
    path/to/folder/             a folder of images (PNG, JPEG, BMP, ... anything PIL reads), searched recursively
    path/to/file.npz            arrays under `x` / `images` / `train` (or the only array), optional `x_test` / `test`
    path/to/cifar-10-batches-py the CIFAR-10 "python" batches (data_batch_* and test_batch)

Every dataset also carries `bins`, the number of evenly spaced levels its pixels lie on, because the
t = 0 decoder term of the bound integrates over exactly those bins (METHOD.md section 1): 17 for the
digits, 256 for 8-bit images (photos32 and fashion-mnist included).

Every mistake in the input (a wrong path, shape, value range, an unreadable file, an empty folder)
raises `UserError` with a one-line message; the command line prints it and exits with status 2.

`batch_indices(...)` is the trainer's batching: a pure function of (step, seed), so a resumed run sees
exactly the batches it would have seen, and ranks shard the same global batch without talking.
"""
from __future__ import annotations

import functools
import math
import pickle
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import UserError, require

ACCEPTED = ("'digits', 'photos32', 'fashion-mnist', a folder of images, a .npz file, a CIFAR-10 python batches "
            "folder (data_batch_1..5 and test_batch), or a folder of MNIST-style idx files")
DIGITS_TEST_SIZE = 297  # 1797 digits -> 1500 train / 297 test
MIN_SIDE = 8  # the reference UNet downsamples twice and still needs a few pixels left


@dataclass(repr=False)
class ImageDataset:
    """Images in [-1, 1] as float32 tensors of shape (N, C, H, W), split into train and test.

    `bins` is the number of evenly spaced levels the pixel values lie on (17 for digits, 256 for
    8-bit images): level k sits at -1 + 2k / (bins - 1).
    """

    train: torch.Tensor
    test: torch.Tensor
    bins: int
    name: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.train.shape[1:])

    @property
    def channels(self) -> int:
        return self.train.shape[1]

    @property
    def image_size(self) -> int:
        """The side of the (square) images."""
        return self.train.shape[-1]

    def __repr__(self) -> str:
        # the default dataclass repr would print the tensors
        c, h, w = self.shape
        return (f"ImageDataset({self.name!r}: {len(self.train)} train / {len(self.test)} test, "
                f"{c}x{h}x{w}, {self.bins} bins)")


def load_data(spec: str, *, test_fraction: float | None = None, seed: int = 0,
              bins: int | None = None) -> ImageDataset:
    """Load `spec` ('digits', 'photos32', 'fashion-mnist', an image folder, a .npz file, a CIFAR-10 batches
    folder or a folder of MNIST-style idx files).

    test_fraction: share of the data held out for test when the source has no test split of its own
        (default 0.1 for folders and .npz; the digits default to a fixed 297 test images). Sources with
        their own split (.npz with `x_test`, CIFAR-10, photos32, idx folders) reject it.
    seed: seeds the train/test permutation (a private torch.Generator, never the global RNG); for
        photos32, the crop positions.
    bins: quantisation levels of float .npz data (default 256); for every other source the bins are
        known, and a different value is an error.
    """
    require(isinstance(spec, (str, Path)) and str(spec) != "",
            f"data spec must be a non-empty string; expected {ACCEPTED}")
    require(test_fraction is None or (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1),
            f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    require(bins is None or (isinstance(bins, int) and not isinstance(bins, bool) and bins >= 2),
            f"bins must be an integer >= 2, got {bins!r}")
    spec = str(spec)
    if spec == "digits":
        return _digits(test_fraction, seed, bins)
    if spec == PHOTOS_NAME:
        return _photos32(test_fraction, seed, bins)
    if spec == FASHION_NAME:
        return _idx_dataset(FASHION_DIR, test_fraction, bins, FASHION_NAME)
    path = Path(spec).expanduser()
    if not path.exists():
        # A bare word is most likely a misspelt built-in name; anything else a mistyped path.
        if "/" not in spec and "\\" not in spec and "." not in spec:
            raise UserError(f"unknown data {spec!r}; expected {ACCEPTED}")
        raise UserError(f"data path {spec!r} does not exist; expected {ACCEPTED}")
    if path.is_dir():
        if any(path.glob("data_batch_*")):
            return _cifar(path, test_fraction, bins)
        if any(_is_idx_name(p.name) for p in path.iterdir()):
            return _idx_dataset(path, test_fraction, bins, path.name or str(path))
        return _folder(path, test_fraction, seed, bins)
    if path.suffix.lower() == ".npz":
        return _npz(path, test_fraction, seed, bins)
    raise UserError(f"cannot load data from file {spec!r}; expected {ACCEPTED}")


# ----------------------------------------------------------------------------- helpers shared by the loaders

def split(n: int, n_test: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, test indices) from torch.randperm(n) under a private Generator seeded with `seed`.

    The test set is the first `n_test` entries of the permutation; both index sets are returned sorted
    so the stored order follows the source. Global RNG state is never touched or read.
    """
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _random_split(x: torch.Tensor, test_fraction: float | None, seed: int, source: str):
    fraction = 0.1 if test_fraction is None else test_fraction
    n_test = round(len(x) * fraction)
    require(1 <= n_test < len(x),
            f"{source}: {len(x)} images with test_fraction {fraction} leave an empty train or test split; "
            f"expected at least one image in each")
    train_idx, test_idx = split(len(x), n_test, seed)
    return x[train_idx], x[test_idx]


def _check_bins(bins: int | None, known: int, source: str) -> int:
    require(bins is None or bins == known,
            f"{source} has {known} quantisation levels, got bins={bins}; leave bins unset for this data")
    return known


def _check_images(x, source: str) -> None:
    """Shape rules every loader shares: (N, C, H, W), C in {1, 3}, square, side >= MIN_SIDE."""
    n, c, h, w = x.shape
    require(n > 0, f"{source}: no images found; expected at least one")
    require(c in (1, 3), f"{source}: images have {c} channels; expected 1 (grayscale) or 3 (RGB)")
    require(h == w, f"{source}: images are {h}x{w} (HxW), not square; expected square images")
    require(h >= MIN_SIDE, f"{source}: images are {h}x{w}, too small; expected at least {MIN_SIDE}x{MIN_SIDE}")


def _reason(e: Exception) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _from_uint8(x: np.ndarray) -> torch.Tensor:
    """0..255 -> [-1, 1]: level v maps to v / 127.5 - 1, so 0 -> -1 and 255 -> 1 exactly."""
    # In place: the same float32 values as `x.float() / 127.5 - 1`, without two more image-sized
    # allocations (for 60,000 32x32 images they took longer than the arithmetic).
    return torch.from_numpy(np.ascontiguousarray(x)).float().div_(127.5).sub_(1)


# ----------------------------------------------------------------------------- digits

def _digits(test_fraction: float | None, seed: int, bins: int | None) -> ImageDataset:
    """scikit-learn's 1797 8x8 digits; pixel values 0..16 map to v / 8 - 1 (17 levels in [-1, 1]).

    The split is `split(1797, 297, seed)`: with the default seed 0 always the same 1500 train / 297 test.
    """
    from sklearn.datasets import load_digits  # slow import; only pay for it when asked

    bins = _check_bins(bins, 17, "digits")
    images = load_digits().images  # (1797, 8, 8) float64, integer values 0..16
    x = torch.from_numpy(images).float().unsqueeze(1) / 8 - 1
    n_test = DIGITS_TEST_SIZE if test_fraction is None else round(len(x) * test_fraction)
    require(1 <= n_test < len(x), f"digits: test_fraction {test_fraction} leaves an empty split")
    train_idx, test_idx = split(len(x), n_test, seed)
    return ImageDataset(x[train_idx], x[test_idx], bins, "digits")


# ----------------------------------------------------------------------------- photos32

PHOTOS_NAME = "photos32"
# The colour photographs that scikit-image's wheel carries in skimage/data (its other samples are fetched
# with pooch on first use, which a run must never do). Left out: retina (a disc on a black field) and the
# Hubble deep field (mostly black sky), whose crops would be largely constant; the right-hand motorcycle
# image, a stereo twin of the left one, which would leak one split into the other.
PHOTO_FILES = ("astronaut.png", "chelsea.png", "coffee.png", "ihc.png", "motorcycle_left.png", "rocket.jpg")
PHOTOS_SIDE = 32
PHOTOS_TRAIN, PHOTOS_TEST = 50_000, 10_000  # as many as CIFAR-10: epochs and evaluation cost comparable
PHOTOS_TEST_BAND = 0.2  # the right-hand fifth of every photograph is test ground, the rest train ground


def _skimage_photos() -> list[tuple[str, np.ndarray]]:
    """[(file name, H x W x 3 uint8)] read straight from the installed wheel's data folder, never
    through skimage.data's loaders (they may fetch a file that is not bundled)."""
    from PIL import Image

    try:
        import skimage
    except ImportError:
        raise UserError("photos32 needs scikit-image, whose wheel carries the photographs: "
                        "pip install scikit-image") from None
    folder = Path(skimage.__file__).parent / "data"
    photos = []
    for name in PHOTO_FILES:
        path = folder / name
        require(path.is_file(), f"photos32: {name} is not in this scikit-image install ({folder}); expected "
                                f"a scikit-image wheel that bundles it (0.21 and 0.26 do)")
        with Image.open(path) as im:
            photos.append((name, np.asarray(im.convert("RGB"))))
    return photos


def photos32_layout(shapes: list[tuple[int, int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Where photos32's crops come from: for "train" and "test", an (n, 3) array of (photo index, top, left)
    per crop, in the data set's order, for photographs of the given (height, width).

    The same number of crops from each photograph (the remainder on the first ones), at uniform random
    positions; train crops lie wholly in the left 80 % of a photograph's columns and test crops in the
    right 20 %, so no test pixel is ever seen in training (crops within one split overlap, as random
    crops do). A pure function of (shapes, seed): its own generator, never the global one."""
    side = PHOTOS_SIDE
    rng = np.random.default_rng(np.random.SeedSequence([seed, side]))
    layout = {}
    for split, total in (("train", PHOTOS_TRAIN), ("test", PHOTOS_TEST)):
        rows = []
        for i, (height, width) in enumerate(shapes):
            cut = width - round(PHOTOS_TEST_BAND * width)
            lo, hi = (0, cut) if split == "train" else (cut, width)
            n = total // len(shapes) + (i < total % len(shapes))
            top, left = rng.integers(0, height - side + 1, n), rng.integers(lo, hi - side + 1, n)
            rows.append(np.stack([np.full(n, i), top, left], axis=1))
        rows = np.concatenate(rows)
        layout[split] = rows[rng.permutation(len(rows))]  # photographs interleaved: any prefix is a fair sample
    return layout


def _gather_crops(photos: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """(n, 3, S, S) uint8: the crop of photos[i] at (top, left) for each row (i, top, left)."""
    side = PHOTOS_SIDE
    out = np.empty((len(rows), 3, side, side), dtype=np.uint8)
    for i, photo in enumerate(photos):
        mine = rows[:, 0] == i
        windows = np.lib.stride_tricks.sliding_window_view(photo, (side, side), axis=(0, 1))  # (H', W', 3, S, S)
        out[mine] = windows[rows[mine, 1], rows[mine, 2]]
    return out


def _photos32(test_fraction: float | None, seed: int, bins: int | None) -> ImageDataset:
    """PHOTOS_TRAIN train and PHOTOS_TEST test crops of 32x32 from PHOTO_FILES, as `photos32_layout` places
    them; 256 levels. With the default seed 0 always the same crops."""
    require(test_fraction is None, "photos32 has its own test split (a held-out band of every photograph); "
                                   "expected no test_fraction")
    bins = _check_bins(bins, 256, PHOTOS_NAME)
    photos = [photo for _, photo in _skimage_photos()]
    layout = photos32_layout([p.shape[:2] for p in photos], seed)
    train, test = (_from_uint8(_gather_crops(photos, layout[k])) for k in ("train", "test"))
    return ImageDataset(train, test, bins, PHOTOS_NAME)


# ----------------------------------------------------------------------------- folder of images

GRAY_MODES = ("1", "L", "LA", "La")
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # more than 8 bits per pixel


def _image_files(folder: Path) -> list[Path]:
    from PIL import Image

    extensions = {ext.lower() for ext in Image.registered_extensions()}
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith("."))


def _folder(folder: Path, test_fraction: float | None, seed: int, bins: int | None) -> ImageDataset:
    """Every image file under `folder` (recursively, sorted by path); all must share one size.

    Converted to L when every image is grayscale, else to RGB (alpha dropped); 8-bit only, so bins = 256.
    """
    from PIL import Image

    bins = _check_bins(bins, 256, f"image folder {str(folder)!r}")
    files = _image_files(folder)
    require(len(files) > 0, f"no image files in folder {str(folder)!r}; expected PNG, JPEG, BMP or other "
                            f"images (or {ACCEPTED})")
    # First pass reads headers only (PIL opens lazily), so size and mode errors come before any decoding.
    sizes, modes = [], []
    for f in files:
        try:
            with Image.open(f) as im:
                sizes.append(im.size)
                modes.append(im.mode)
        except (OSError, SyntaxError, ValueError) as e:
            raise UserError(f"cannot read image {str(f)!r} ({_reason(e)}); expected a readable image file")
    # The most common size is the one the user meant; name the first file that differs from it.
    (w, h), count = Counter(sizes).most_common(1)[0]
    for f, size in zip(files, sizes):
        require(size == (w, h), f"image {str(f)!r} is {size[0]}x{size[1]} (WxH); expected {w}x{h} like "
                                f"{count} of the {len(files)} images (all images must have one size)")
    for f, mode in zip(files, modes):
        require(mode not in WIDE_MODES, f"image {str(f)!r} has pixel mode {mode!r}; expected 8-bit images")
    mode = "L" if all(m in GRAY_MODES for m in modes) else "RGB"
    out = np.empty((len(files), h, w, 1 if mode == "L" else 3), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                out[i] = np.asarray(im.convert(mode)).reshape(h, w, -1)
        except (OSError, SyntaxError, ValueError) as e:  # e.g. a truncated file whose header was fine
            raise UserError(f"cannot read image {str(f)!r} ({_reason(e)}); expected a readable image file")
    x = out.transpose(0, 3, 1, 2)
    source = f"image folder {str(folder)!r}"
    _check_images(x, source)
    train, test = _random_split(_from_uint8(x), test_fraction, seed, source)
    return ImageDataset(train, test, bins, folder.name or str(folder))


# ----------------------------------------------------------------------------- .npz

TRAIN_KEYS = ("x", "images", "train")
TEST_KEYS = ("x_test", "test")


def _npz(path: Path, test_fraction: float | None, seed: int, bins: int | None) -> ImageDataset:
    """Arrays in NHWC, NCHW (C in {1, 3}) or NHW; uint8 0..255 (bins 256) or float in [-1, 1]."""
    source = f"npz file {str(path)!r}"
    try:
        with np.load(path, allow_pickle=False) as f:  # never unpickle objects from a user's file
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read {source} ({_reason(e)}); expected a .npz written by numpy.savez")
    train_key = next((k for k in TRAIN_KEYS if k in arrays), None)
    if train_key is None:
        require(len(arrays) == 1, f"{source} holds arrays {sorted(arrays)}; expected one named "
                                  f"{' or '.join(TRAIN_KEYS)} (or a single array)")
        train_key = next(iter(arrays))
    test_key = next((k for k in TEST_KEYS if k in arrays), None)

    x, found_bins = _npz_images(arrays[train_key], bins, f"{source} array {train_key!r}")
    if test_key is None:
        train, test = _random_split(x, test_fraction, seed, source)
    else:
        require(test_fraction is None, f"{source} has its own test split {test_key!r}; expected no test_fraction")
        test, test_bins = _npz_images(arrays[test_key], bins, f"{source} array {test_key!r}")
        require(test.shape[1:] == x.shape[1:], f"{source}: test images are {tuple(test.shape[1:])} (CxHxW); "
                                               f"expected {tuple(x.shape[1:])} like the train images")
        require(test_bins == found_bins, f"{source}: train and test arrays differ in dtype; expected the same")
        train = x
    return ImageDataset(train, test, found_bins, path.stem)


def _npz_images(a: np.ndarray, bins: int | None, source: str) -> tuple[torch.Tensor, int]:
    """One array -> (float32 NCHW tensor in [-1, 1], bins)."""
    if a.ndim == 3:
        a = a[:, None]  # NHW: grayscale
    elif a.ndim == 4 and a.shape[1] not in (1, 3) and a.shape[3] in (1, 3):
        a = a.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif not (a.ndim == 4 and a.shape[1] in (1, 3)):
        raise UserError(f"{source} has shape {a.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W) "
                        f"with C = 1 or 3")
    _check_images(a, source)
    if a.dtype == np.uint8:
        return _from_uint8(a), _check_bins(bins, 256, f"{source} (uint8)")
    if np.issubdtype(a.dtype, np.integer):
        # ints saved without an explicit dtype (int64 from np.array) are fine if they are 8-bit values
        lo, hi = int(a.min()), int(a.max())
        require(0 <= lo and hi <= 255, f"{source}: integer pixel values span {lo}..{hi}; expected 0..255")
        return _from_uint8(a.astype(np.uint8)), _check_bins(bins, 256, f"{source} (integer)")
    if np.issubdtype(a.dtype, np.floating):
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        require(bool(torch.isfinite(x).all()), f"{source} contains NaN or infinite values; expected values in [-1, 1]")
        lo, hi = x.min().item(), x.max().item()
        require(-1 <= lo and hi <= 1, f"{source}: float pixel values span [{lo:.4g}, {hi:.4g}]; expected [-1, 1] "
                                      f"(or uint8 0..255)")
        # Images in [-1, 1] have dark pixels below 0; none at all is the [0, 1] of ToTensor-style data, which
        # would train silently on half the range and score bits/dim against the wrong levels.
        require(lo < 0, f"{source}: float pixel values span [{lo:.4g}, {hi:.4g}], none below 0: this looks like "
                        f"images in [0, 1]; save them as x * 2 - 1 (expected [-1, 1]) or as uint8 0..255")
        return x, 256 if bins is None else bins
    raise UserError(f"{source} has dtype {a.dtype}; expected uint8 (0..255) or float in [-1, 1]")


# ----------------------------------------------------------------------------- CIFAR-10 python batches

def _natural_key(p: Path):
    # data_batch_10 after data_batch_9
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name)]


def _cifar(folder: Path, test_fraction: float | None, bins: int | None) -> ImageDataset:
    """data_batch_* for train, test_batch for test: pickled dicts whose b'data' is (N, 3*S*S) uint8,
    each row the R plane, then G, then B, each plane row-major (S = 32 for CIFAR-10)."""
    source = f"CIFAR-10 folder {str(folder)!r}"
    require(test_fraction is None, f"{source} has its own test split (test_batch); expected no test_fraction")
    bins = _check_bins(bins, 256, source)
    test_file = folder / "test_batch"
    require(test_file.is_file(), f"{source} has no test_batch file; expected data_batch_1..5 and test_batch")
    batches = sorted(folder.glob("data_batch_*"), key=_natural_key)
    train = np.concatenate([_cifar_batch(f) for f in batches])
    test = _cifar_batch(test_file)
    require(train.shape[1:] == test.shape[1:], f"{source}: test_batch images are {test.shape[1:]}; "
                                               f"expected {train.shape[1:]} like the data batches")
    _check_images(train, source)
    return ImageDataset(_from_uint8(train), _from_uint8(test), bins, folder.name)


def _latin1_encode(text: str, encoding: str) -> bytes:
    """What `_codecs.encode` does in a protocol 0-2 pickle written by Python 3 (its way of storing bytes),
    and nothing else: any other codec is refused rather than looked up."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"a CIFAR batch never encodes bytes as {encoding!r}")
    return text.encode("latin1")


def _numpy_reconstructors() -> dict[tuple[str, str], object]:
    """The globals a pickled numpy array refers to, under the names numpy 1 (numpy.core) and numpy 2
    (numpy._core) write, all resolved here to the functions of the numpy installed."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric

    return {
        **{(module, "_reconstruct"): multiarray._reconstruct
           for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
        **{(module, "_frombuffer"): numeric._frombuffer  # protocol 5 pickles of arrays
           for module in ("numpy.core.numeric", "numpy._core.numeric")},
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds. A pickle can call any importable function while it loads
    (os.system, eval, ...), so a folder from an untrusted source could run code through plain
    pickle.load. The format needs no global beyond numpy's array reconstruction: its dicts, lists, bytes,
    strings and numbers are pickle opcodes, not globals. Everything else is refused before it is imported."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")  # the real batches were written by Python 2: str -> bytes
        self.path = path
        self.allowed = _numpy_reconstructors()

    def find_class(self, module: str, name: str):
        found = self.allowed.get((module, name))
        if found is None:
            raise UserError(f"CIFAR batch {str(self.path)!r} refers to {module}.{name}, which a CIFAR batch never "
                            f"holds; refusing to unpickle it (a pickle from an untrusted source can run code)")
        return found


def _cifar_batch(f: Path) -> np.ndarray:
    try:
        with open(f, "rb") as fh:
            d = _CifarUnpickler(fh, f).load()
    except UserError:
        raise
    except Exception as e:  # a pickle can fail in many ways; all of them mean "not a CIFAR batch"
        raise UserError(f"cannot read CIFAR batch {str(f)!r} ({_reason(e)}); expected a pickled dict")
    data = d.get(b"data", d.get("data")) if isinstance(d, dict) else None
    require(isinstance(data, np.ndarray), f"CIFAR batch {str(f)!r} has no b'data' array; expected a pickled "
                                          f"dict with b'data' and b'labels'")
    side = int(round((data.shape[-1] / 3) ** 0.5)) if data.ndim == 2 else 0
    require(data.ndim == 2 and data.dtype == np.uint8 and 3 * side * side == data.shape[1],
            f"CIFAR batch {str(f)!r} has b'data' of shape {data.shape} and dtype {data.dtype}; "
            f"expected (N, 3072) uint8")
    return data.reshape(-1, 3, side, side)


# ----------------------------------------------------------------------------- idx files (MNIST, Fashion-MNIST)

FASHION_NAME = "fashion-mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # where Debian's dataset-fashion-mnist puts the files
FASHION_PACKAGE = "dataset-fashion-mnist"
# (images, labels) for train and test, as MNIST and Fashion-MNIST name them; each gzipped (.gz) or not.
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # unsigned bytes, 3 dimensions / 1 dimension
IDX_DIMS = {"images": 3, "labels": 1}


def _is_idx_name(name: str) -> bool:
    return any(name in (stem, stem + ".gz") for pair in IDX_FILES.values() for stem in pair)


def _idx_path(folder: Path, stem: str) -> Path | None:
    """The file `stem` or `stem`.gz in `folder` (the raw one first), or None."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_up_to(f, size: int, chunk: int = 1 << 26) -> bytes:
    """At most `size` bytes of `f`, read in chunks: a corrupt header that claims terabytes costs no more memory
    than the file holds."""
    parts, left = [], size
    while left > 0:
        part = f.read(min(chunk, left))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_idx(path: Path, kind: str) -> np.ndarray:
    """One idx file of unsigned bytes ("images": N x rows x cols, "labels": N) as a uint8 array, gunzipped on the
    fly when its name ends in .gz. The header (magic number, dimensions) is checked before any data are read,
    and the file must hold exactly as many bytes as the header says: a truncated or padded file, a wrong magic
    number or a broken gzip stream is a UserError naming the file. Plain bytes through numpy.frombuffer: nothing
    in the file is ever run, and nothing is written anywhere."""
    import gzip
    import zlib

    source = f"idx file {str(path)!r}"
    expected = IDX_MAGIC[kind]
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(4)
            require(len(header) == 4, f"{source} is truncated: {len(header)} bytes, too short for an idx header; "
                                      f"expected a magic number 0x{expected:08X} and the {kind}' dimensions")
            magic = int.from_bytes(header, "big")
            require(magic == expected, f"{source} has magic number 0x{magic:08X}; expected 0x{expected:08X} "
                                       f"(unsigned bytes in {IDX_DIMS[kind]} dimension(s): {kind})")
            raw_dims = f.read(4 * IDX_DIMS[kind])
            require(len(raw_dims) == 4 * IDX_DIMS[kind],
                    f"{source} is truncated inside its header; expected {IDX_DIMS[kind]} dimension(s) after the magic")
            dims = tuple(int.from_bytes(raw_dims[i:i + 4], "big") for i in range(0, len(raw_dims), 4))
            size = math.prod(dims)
            what = f"{dims[0]} images of {dims[1]}x{dims[2]}" if kind == "images" else f"{dims[0]} labels"
            data = _read_up_to(f, size)
            require(len(data) == size, f"{source} is truncated: its header says {what} ({size} bytes of data), "
                                       f"found {len(data)}")
            require(not f.read(1), f"{source} is longer than its header says ({what}, {size} bytes of data); "
                                   f"expected nothing after them")
    except UserError:
        raise
    except (OSError, EOFError, zlib.error) as e:  # bad gzip header, CRC, a stream that ends early
        raise UserError(f"cannot read {source} ({_reason(e)}); expected an idx file"
                        + (", gzipped" if opener is not open else "")) from None
    return np.frombuffer(data, dtype=np.uint8).reshape(dims).copy()  # writable, as torch.from_numpy wants


def load_idx_folder(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels) from a folder holding MNIST's or Fashion-MNIST's
    four idx files (`IDX_FILES`, each raw or .gz): images as float32 (N, 1, H, W) in [-1, 1] (level v at
    v / 127.5 - 1), labels as int64 (N,). Each split's images and labels must agree in number, and the test
    images must have the train images' size."""
    folder = Path(folder)
    source = f"idx folder {str(folder)!r}"
    missing = [f"{stem}[.gz]" for pair in IDX_FILES.values() for stem in pair if _idx_path(folder, stem) is None]
    if folder == FASHION_DIR and missing:
        raise UserError(f"{FASHION_NAME}: {str(folder)!r} lacks {', '.join(missing)}; install Debian's package "
                        f"with `apt-get install {FASHION_PACKAGE}` (it puts the four idx files there)")
    require(not missing, f"{source} lacks {', '.join(missing)}; expected the four idx files "
                         f"{', '.join(stem for pair in IDX_FILES.values() for stem in pair)} (each raw or .gz)")
    out = []
    for split_name, (images_stem, labels_stem) in IDX_FILES.items():
        images_path, labels_path = _idx_path(folder, images_stem), _idx_path(folder, labels_stem)
        images, labels = read_idx(images_path, "images"), read_idx(labels_path, "labels")
        require(len(images) == len(labels), f"{source}: {images_path.name} holds {len(images)} images and "
                                            f"{labels_path.name} {len(labels)} labels; expected one label per image")
        out.append((images, labels, images_path.name))
    (train, train_labels, _), (test, test_labels, test_name) = out
    _check_images(train[:, None], source)
    require(test.shape[1:] == train.shape[1:], f"{source}: {test_name} images are {test.shape[1]}x{test.shape[2]}; "
                                               f"expected {train.shape[1]}x{train.shape[2]} like the train images")
    return (_from_uint8(train[:, None]), torch.from_numpy(train_labels.astype(np.int64)),
            _from_uint8(test[:, None]), torch.from_numpy(test_labels.astype(np.int64)))


def _idx_dataset(folder: Path, test_fraction: float | None, bins: int | None, name: str) -> ImageDataset:
    """The images of `load_idx_folder` (labels dropped), with their own train/test split and 256 levels."""
    source = FASHION_NAME if name == FASHION_NAME else f"idx folder {str(folder)!r}"
    require(test_fraction is None, f"{source} has its own test split (t10k-*); expected no test_fraction")
    bins = _check_bins(bins, 256, source)
    train, _, test, _ = load_idx_folder(folder)
    return ImageDataset(train, test, bins, name)


# ----------------------------------------------------------------------------- batching

def _seed_for(seed: int, epoch: int) -> int:
    # SeedSequence mixes (seed, epoch) into 64 well-spread bits: nearby pairs give unrelated permutations,
    # and no two pairs collide the way seed * K + epoch would.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch `epoch`. Cached: consecutive steps of one epoch reuse it (callers must not mutate)."""
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(_seed_for(seed, epoch)))


def batch_indices(num_items: int, batch_size: int, step: int, seed: int, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """Indices of this rank's share of the global batch for `step`; a pure function of its arguments.

    The data are read as an endless stream of epochs, epoch e in the order torch.randperm(num_items)
    under a Generator seeded by (seed, e). The global batch of `step` is items
    [step * batch_size, (step + 1) * batch_size) of that stream, so a batch that straddles an epoch
    boundary takes the tail of one epoch and the head of the next, and every item appears exactly once
    per epoch. Nothing depends on earlier calls, so a resumed run gets the same batches.

    `batch_size` is the GLOBAL batch; rank r gets global[r::world_size], i.e. batch_size / world_size
    items, and the ranks' shares interleaved give back the global batch.
    """
    for name, value, least in (("num_items", num_items, 1), ("batch_size", batch_size, 1), ("step", step, 0),
                               ("seed", seed, 0), ("world_size", world_size, 1), ("rank", rank, 0)):
        require(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= least,
                f"{name} must be an integer >= {least}, got {value!r}")
    require(rank < world_size, f"rank {rank} is out of range; expected 0 <= rank < world_size = {world_size}")
    require(batch_size % world_size == 0, f"batch size {batch_size} is not divisible by world size {world_size}; "
                                          f"expected the global batch to split evenly across ranks")
    start, end = step * batch_size, (step + 1) * batch_size
    chunks, pos = [], start
    while pos < end:  # more than one pass when a batch straddles epochs (or exceeds the data)
        epoch, offset = divmod(pos, num_items)
        take = min(end - pos, num_items - offset)
        chunks.append(_epoch_permutation(int(num_items), int(seed), epoch)[offset:offset + take])
        pos += take
    return torch.cat(chunks)[rank::world_size].clone()

"""MNIST-style idx files: `load_data("fashion-mnist")`, `--data FOLDER` of idx files, `load_idx_folder`.

Small idx files are written by the tests themselves (gzipped and raw, good and broken); the real Fashion-MNIST
(Debian's dataset-fashion-mnist) is checked where it is installed."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from timestep_sampling import data as data_module
from timestep_sampling.cli import main
from timestep_sampling.data import FASHION_DIR, load_data, load_idx_folder, read_idx
from timestep_sampling.errors import UserError

torch.set_num_threads(1)

STEMS = {"train-images": "train-images-idx3-ubyte", "train-labels": "train-labels-idx1-ubyte",
         "test-images": "t10k-images-idx3-ubyte", "test-labels": "t10k-labels-idx1-ubyte"}


def _images_bytes(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 0x803, n, h, w) + images.astype(np.uint8).tobytes()


def _labels_bytes(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()


def _write_idx_folder(folder, n_train=12, n_test=5, side=8, gz=True, seed=0):
    """Four idx files in `folder` (all .gz, or all raw); returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {"train-images": rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
              "train-labels": rng.integers(0, 10, n_train, dtype=np.uint8),
              "test-images": rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
              "test-labels": rng.integers(0, 10, n_test, dtype=np.uint8)}
    arrays["train-images"][0, 0, 0], arrays["train-images"][0, 0, 1] = 0, 255
    folder.mkdir(parents=True, exist_ok=True)
    for key, a in arrays.items():
        raw = _images_bytes(a) if key.endswith("images") else _labels_bytes(a)
        path = folder / (STEMS[key] + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_an_idx_folder_loads_with_its_own_split_and_labels(tmp_path, gz):
    arrays = _write_idx_folder(tmp_path / "mnist", gz=gz)
    before = sorted(p.name for p in (tmp_path / "mnist").iterdir())
    ds = load_data(str(tmp_path / "mnist"))
    assert ds.shape == (1, 8, 8) and ds.bins == 256 and (len(ds.train), len(ds.test)) == (12, 5)
    assert ds.name == "mnist"
    torch.testing.assert_close(ds.train, torch.from_numpy(arrays["train-images"]).float()[:, None] / 127.5 - 1)
    torch.testing.assert_close(ds.test, torch.from_numpy(arrays["test-images"]).float()[:, None] / 127.5 - 1)
    assert ds.train[0, 0, 0, 0] == -1 and ds.train[0, 0, 0, 1] == 1
    x, y, xt, yt = load_idx_folder(tmp_path / "mnist")
    assert torch.equal(x, ds.train) and torch.equal(xt, ds.test) and y.dtype == torch.long
    assert y.tolist() == arrays["train-labels"].tolist() and yt.tolist() == arrays["test-labels"].tolist()
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == before  # nothing written next to the data


def test_gzipped_and_raw_files_mix(tmp_path):
    arrays = _write_idx_folder(tmp_path / "d", gz=True)
    gz = tmp_path / "d" / (STEMS["test-images"] + ".gz")
    (tmp_path / "d" / STEMS["test-images"]).write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    ds = load_data(str(tmp_path / "d"))
    torch.testing.assert_close(ds.test, torch.from_numpy(arrays["test-images"]).float()[:, None] / 127.5 - 1)


def test_an_idx_folder_refuses_test_fraction_and_other_bins(tmp_path):
    _write_idx_folder(tmp_path / "d")
    with pytest.raises(UserError, match="own test split"):
        load_data(str(tmp_path / "d"), test_fraction=0.2)
    with pytest.raises(UserError, match="256 quantisation levels"):
        load_data(str(tmp_path / "d"), bins=17)


# ----------------------------------------------------------------------------- broken input: one line each

def _replace(folder, key, raw: bytes, gz=True):
    (folder / (STEMS[key] + (".gz" if gz else ""))).write_bytes(gzip.compress(raw, mtime=0) if gz else raw)


def _truncated_raw(folder):
    _write_idx_folder(folder, gz=False)
    path = folder / STEMS["train-images"]
    path.write_bytes(path.read_bytes()[:-10])
    return [f"idx file {str(path)!r} is truncated: its header says 12 images of 8x8 (768 bytes of data), found 758"]


def _truncated_gzip_content(folder):
    arrays = _write_idx_folder(folder)
    _replace(folder, "test-labels", _labels_bytes(arrays["test-labels"])[:-2])
    path = folder / (STEMS["test-labels"] + ".gz")
    return [f"idx file {str(path)!r} is truncated: its header says 5 labels (5 bytes of data), found 3"]


def _truncated_gzip_stream(folder):
    _write_idx_folder(folder)
    path = folder / (STEMS["train-images"] + ".gz")
    path.write_bytes(path.read_bytes()[:-30])  # the compressed stream ends early
    return [f"cannot read idx file {str(path)!r} (", "expected an idx file, gzipped"]


def _bad_gzip(folder):
    _write_idx_folder(folder)
    path = folder / (STEMS["train-labels"] + ".gz")
    path.write_bytes(b"this is not gzip at all")
    return [f"cannot read idx file {str(path)!r} (Not a gzipped file", "expected an idx file, gzipped"]


def _bad_crc(folder):
    _write_idx_folder(folder)
    path = folder / (STEMS["test-images"] + ".gz")
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # the CRC32 in the trailer
    path.write_bytes(bytes(raw))
    return [f"cannot read idx file {str(path)!r} (CRC check failed"]


def _wrong_magic(folder):
    arrays = _write_idx_folder(folder)
    _replace(folder, "train-images", _labels_bytes(arrays["train-labels"]))  # a labels file in the images' place
    path = folder / (STEMS["train-images"] + ".gz")
    return [f"idx file {str(path)!r} has magic number 0x00000801; expected 0x00000803 (unsigned bytes in 3 "
            f"dimension(s): images)"]


def _too_long(folder):
    arrays = _write_idx_folder(folder, gz=False)
    _replace(folder, "train-labels", _labels_bytes(arrays["train-labels"]) + b"\0", gz=False)
    path = folder / STEMS["train-labels"]
    return [f"idx file {str(path)!r} is longer than its header says (12 labels, 12 bytes of data); "
            f"expected nothing after them"]


def _short_header(folder):
    _write_idx_folder(folder)
    _replace(folder, "test-images", b"\0\0")
    path = folder / (STEMS["test-images"] + ".gz")
    return [f"idx file {str(path)!r} is truncated: 2 bytes, too short for an idx header"]


def _absurd_header(folder):
    _write_idx_folder(folder, gz=False)
    _replace(folder, "train-images", struct.pack(">IIII", 0x803, 2 ** 31, 2 ** 16, 2 ** 16) + b"\1" * 100, gz=False)
    path = folder / STEMS["train-images"]
    return [f"idx file {str(path)!r} is truncated: its header says 2147483648 images of 65536x65536 "
            f"(9223372036854775808 bytes of data), found 100"]


def _mismatched_counts(folder):
    arrays = _write_idx_folder(folder)
    _replace(folder, "train-labels", _labels_bytes(arrays["train-labels"][:11]))
    return [f"idx folder {str(folder)!r}: train-images-idx3-ubyte.gz holds 12 images and "
            f"train-labels-idx1-ubyte.gz 11 labels; expected one label per image"]


def _test_size_differs(folder):
    _write_idx_folder(folder)
    _replace(folder, "test-images", _images_bytes(np.zeros((5, 10, 10), np.uint8)))
    return [f"idx folder {str(folder)!r}: t10k-images-idx3-ubyte.gz images are 10x10; expected 8x8 like the "
            f"train images"]


def _missing_file(folder):
    _write_idx_folder(folder)
    (folder / (STEMS["test-labels"] + ".gz")).unlink()
    return [f"idx folder {str(folder)!r} lacks t10k-labels-idx1-ubyte[.gz]; expected the four idx files "
            f"train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte "
            f"(each raw or .gz)"]


BROKEN = [_truncated_raw, _truncated_gzip_content, _truncated_gzip_stream, _bad_gzip, _bad_crc, _wrong_magic,
          _too_long, _short_header, _absurd_header, _mismatched_counts, _test_size_differs, _missing_file]


@pytest.mark.parametrize("make", BROKEN, ids=[f.__name__.strip("_") for f in BROKEN])
def test_a_broken_idx_folder_is_one_line_naming_the_file(tmp_path, make):
    folder = tmp_path / "idx"
    expected = make(folder)
    with pytest.raises(UserError) as info:
        load_data(str(folder))
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, (part, message)


def test_the_command_line_prints_the_line_and_exits_2(tmp_path, capsys):
    expected = _wrong_magic(tmp_path / "idx")
    assert main(["plot-samplers", "--data", str(tmp_path / "idx"), "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {expected[0]}\n", err


def test_fashion_mnist_missing_names_the_package_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "FASHION_DIR", tmp_path / "nowhere")
    with pytest.raises(UserError) as info:
        load_data("fashion-mnist")
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and str(tmp_path / "nowhere") in message, message
    assert message.startswith("fashion-mnist: "), message


def test_read_idx_reads_one_file(tmp_path):
    labels = np.arange(7, dtype=np.uint8)
    (tmp_path / "l").write_bytes(_labels_bytes(labels))
    assert read_idx(tmp_path / "l", "labels").tolist() == labels.tolist()


# ----------------------------------------------------------------------------- the real Fashion-MNIST

@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST is not installed "
                                                     "(apt-get install dataset-fashion-mnist)")
def test_the_real_fashion_mnist():
    x, y, xt, yt = load_idx_folder(FASHION_DIR)
    ds = load_data("fashion-mnist")
    assert ds.name == "fashion-mnist" and ds.bins == 256 and ds.shape == (1, 28, 28)
    assert (len(ds.train), len(ds.test)) == (60_000, 10_000)
    assert torch.equal(ds.train, x) and torch.equal(ds.test, xt)
    assert ds.train.min() == -1 and ds.train.max() == 1 and ds.test.min() == -1 and ds.test.max() == 1
    levels = torch.unique(torch.round((ds.test + 1) * 127.5))
    assert torch.allclose((levels / 127.5 - 1), torch.unique(ds.test))  # on the 256 levels
    assert y.bincount().tolist() == [6000] * 10 and yt.bincount().tolist() == [1000] * 10
    # train and test are different images (a few exact duplicates across the split are known in Fashion-MNIST,
    # so: far fewer than a shared set would give)
    train_rows = {bytes(r) for r in ((x[:, 0] + 1) * 127.5).round().to(torch.uint8).flatten(1).numpy()}
    shared = sum(bytes(r) in train_rows for r in ((xt[:, 0] + 1) * 127.5).round().to(torch.uint8).flatten(1).numpy())
    assert shared < 100, shared

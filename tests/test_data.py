"""The data loaders (digits, image folders, .npz, CIFAR-10 batches), their errors, and batch_indices."""
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from timestep_sampling.data import ImageDataset, batch_indices, load_data
from timestep_sampling.errors import UserError


# ----------------------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def test_digits_shapes_range_and_levels(digits):
    assert isinstance(digits, ImageDataset)
    assert digits.train.shape == (1500, 1, 8, 8) and digits.test.shape == (297, 1, 8, 8)
    assert digits.train.dtype == torch.float32
    assert digits.shape == (1, 8, 8) and digits.channels == 1 and digits.image_size == 8
    assert digits.bins == 17 and digits.name == "digits"
    both = torch.cat([digits.train, digits.test])
    assert both.min() == -1 and both.max() == 1
    levels = torch.unique(both)
    assert len(levels) == 17
    torch.testing.assert_close(levels, torch.arange(17) / 8 - 1, rtol=0, atol=0)


def _rows(x):
    return {tuple(r.tolist()) for r in x.flatten(1)}


def test_digits_split_is_fixed_disjoint_and_ignores_global_rng(digits):
    from sklearn.datasets import load_digits

    # disjoint and complete: the two splits are a partition of the 1797 images (as a multiset)
    everything = torch.from_numpy(load_digits().images).float().unsqueeze(1) / 8 - 1
    both = torch.cat([digits.train, digits.test])
    assert sorted(map(tuple, both.flatten(1).tolist())) == sorted(map(tuple, everything.flatten(1).tolist()))

    torch.manual_seed(123)
    np.random.seed(123)
    again = load_data("digits")
    assert torch.equal(again.train, digits.train) and torch.equal(again.test, digits.test)

    other = load_data("digits", seed=1)
    assert other.test.shape == (297, 1, 8, 8) and not torch.equal(other.test, digits.test)


def test_digits_rejects_wrong_bins():
    with pytest.raises(UserError, match="17"):
        load_data("digits", bins=256)


# ----------------------------------------------------------------------------- photos32

@pytest.fixture(scope="module")
def photos():
    return load_data("photos32")


def test_photos32_shapes_range_and_levels(photos):
    assert photos.train.shape == (50_000, 3, 32, 32) and photos.test.shape == (10_000, 3, 32, 32)
    assert photos.train.dtype == torch.float32 and photos.bins == 256 and photos.name == "photos32"
    assert photos.shape == (3, 32, 32) and photos.image_size == 32
    for x in (photos.train, photos.test):
        assert x.min() == -1 and x.max() == 1
        head = x[:2000]  # every value is one of the 256 levels v / 127.5 - 1
        assert torch.equal(((head + 1) * 127.5).round() / 127.5 - 1, head)


def test_photos32_is_deterministic_and_ignores_global_rng(photos):
    torch.manual_seed(7)
    np.random.seed(7)
    again = load_data("photos32")
    assert torch.equal(again.train, photos.train) and torch.equal(again.test, photos.test)
    other = load_data("photos32", seed=1)
    assert not torch.equal(other.train[:100], photos.train[:100])


def test_photos32_train_and_test_crops_come_from_disjoint_columns(photos):
    from timestep_sampling.data import PHOTOS_SIDE, _skimage_photos, photos32_layout

    images = [p for _, p in _skimage_photos()]
    layout = photos32_layout([p.shape[:2] for p in images], seed=0)
    train, test = layout["train"], layout["test"]
    for i, photo in enumerate(images):
        height, width = photo.shape[:2]
        right_of_train = (train[train[:, 0] == i, 2] + PHOTOS_SIDE).max()
        left_of_test = test[test[:, 0] == i, 2].min()
        assert right_of_train <= left_of_test, f"photo {i}: a train crop reaches column {right_of_train}"
        for rows in (train[train[:, 0] == i], test[test[:, 0] == i]):  # inside the photograph
            assert rows[:, 1:].min() >= 0 and (rows[:, 1] + PHOTOS_SIDE).max() <= height
            assert (rows[:, 2] + PHOTOS_SIDE).max() <= width
        assert abs((train[:, 0] == i).sum() - 50_000 / len(images)) < 1  # every photograph equally
    # the tensors are those crops, in that order
    for split, x in (("train", photos.train), ("test", photos.test)):
        for k in (0, 1, len(x) - 1):
            i, top, left = layout[split][k]
            crop = images[i][top:top + PHOTOS_SIDE, left:left + PHOTOS_SIDE].transpose(2, 0, 1)
            assert torch.equal(x[k], torch.from_numpy(crop.copy()).float() / 127.5 - 1)


def test_photos32_needs_no_download():
    """Every photograph is a file inside the installed scikit-image wheel, read without skimage.data's
    fetcher (which would go to the network for a file that is not bundled)."""
    from timestep_sampling.data import PHOTO_FILES, _skimage_photos

    assert [name for name, _ in _skimage_photos()] == list(PHOTO_FILES)


def test_photos32_rejects_a_test_fraction_and_other_bins():
    with pytest.raises(UserError, match="own test split"):
        load_data("photos32", test_fraction=0.2)
    with pytest.raises(UserError, match="256"):
        load_data("photos32", bins=17)


# ----------------------------------------------------------------------------- image folders

def _write_pngs(folder, n, size=8, mode="L", seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if mode == "L" else (size, size, 3)
    arrays = []
    for i in range(n):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(a, mode).save(folder / f"img_{i:03d}.png")
        arrays.append(a)
    return arrays


def test_folder_grayscale_values_and_split(tmp_path):
    arrays = _write_pngs(tmp_path / "gray", 20)
    arrays[0][:] = 0
    arrays[0][2, 5] = 255
    arrays[0][3, 1] = 51
    Image.fromarray(arrays[0], "L").save(tmp_path / "gray" / "img_000.png")

    ds = load_data(str(tmp_path / "gray"))
    assert ds.shape == (1, 8, 8) and ds.bins == 256 and ds.train.dtype == torch.float32
    assert len(ds.train) == 18 and len(ds.test) == 2  # default test_fraction 0.1
    expected = torch.from_numpy(np.stack(arrays)).float().unsqueeze(1) / 127.5 - 1
    # every written image appears exactly once across the two splits, scaled v / 127.5 - 1
    assert _rows(torch.cat([ds.train, ds.test])) == _rows(expected)
    marked = [x for x in torch.cat([ds.train, ds.test]) if x[0, 0, 0] == -1 and x[0, 2, 5] == 1]
    assert len(marked) == 1
    assert marked[0][0, 3, 1].item() == pytest.approx(51 / 127.5 - 1)

    same = load_data(str(tmp_path / "gray"))
    assert torch.equal(same.test, ds.test)
    quarter = load_data(str(tmp_path / "gray"), test_fraction=0.25, seed=3)
    assert len(quarter.train) == 15 and len(quarter.test) == 5


def test_folder_rgb_and_mixed_modes(tmp_path):
    rgb = _write_pngs(tmp_path / "rgb", 10, size=16, mode="RGB")
    ds = load_data(str(tmp_path / "rgb"))
    assert ds.shape == (3, 16, 16) and ds.image_size == 16 and ds.channels == 3
    expected = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert _rows(torch.cat([ds.train, ds.test])) == _rows(expected)

    # one colour image among grayscale ones: everything becomes RGB, the grey ones with R = G = B
    _write_pngs(tmp_path / "mixed", 9)
    Image.fromarray(rgb[0][:8, :8], "RGB").save(tmp_path / "mixed" / "colour.png")
    (tmp_path / "mixed" / "notes.txt").write_text("not an image, ignored")
    mixed = load_data(str(tmp_path / "mixed"))
    both = torch.cat([mixed.train, mixed.test])
    assert both.shape == (10, 3, 8, 8)
    grey = [x for x in both if torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])]
    assert len(grey) == 9


def test_folder_jpeg_and_bmp(tmp_path):
    folder = tmp_path / "misc"
    folder.mkdir()
    for i in range(5):
        Image.new("L", (8, 8), color=40 * i).save(folder / f"a{i}.bmp")
        Image.new("L", (8, 8), color=40 * i).save(folder / f"b{i}.jpg", quality=100)
    ds = load_data(str(folder), test_fraction=0.2)
    assert ds.shape == (1, 8, 8) and len(ds.train) + len(ds.test) == 10


# ----------------------------------------------------------------------------- .npz

def test_npz_nhwc_uint8(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    a[0, 1, 2, 0], a[0, 1, 2, 2] = 255, 0
    np.savez(tmp_path / "d.npz", images=a, labels=np.arange(30))
    ds = load_data(str(tmp_path / "d.npz"))
    assert ds.shape == (3, 8, 8) and ds.bins == 256 and (len(ds.train), len(ds.test)) == (27, 3)
    expected = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert _rows(torch.cat([ds.train, ds.test])) == _rows(expected)


def test_npz_nchw_float_with_test_split(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (12, 1, 8, 8)).astype(np.float32)
    x_test = rng.uniform(-1, 1, (4, 1, 8, 8)).astype(np.float64)
    np.savez(tmp_path / "f.npz", x=x, x_test=x_test)
    ds = load_data(str(tmp_path / "f.npz"), bins=32)
    assert ds.bins == 32 and ds.train.dtype == torch.float32
    assert torch.equal(ds.train, torch.from_numpy(x))  # own test split given: train kept whole, in order
    torch.testing.assert_close(ds.test, torch.from_numpy(x_test).float())
    assert load_data(str(tmp_path / "f.npz")).bins == 256
    with pytest.raises(UserError, match="test split"):
        load_data(str(tmp_path / "f.npz"), test_fraction=0.2)


def test_npz_nhw_and_only_array(tmp_path):
    a = np.random.default_rng(2).integers(0, 256, (10, 8, 8)).astype(np.int64)  # ints in 0..255 are accepted
    np.savez(tmp_path / "g.npz", whatever=a)
    ds = load_data(str(tmp_path / "g.npz"), test_fraction=0.5)
    assert ds.shape == (1, 8, 8) and len(ds.train) == 5
    assert _rows(torch.cat([ds.train, ds.test])) == _rows(torch.from_numpy(a).float().unsqueeze(1) / 127.5 - 1)


# ----------------------------------------------------------------------------- CIFAR-10 batches

def _write_cifar_batch(path, images, protocol=None):
    """The real format: a pickled dict of bytes keys; data rows are the R, G, B planes, each row-major."""
    n = len(images)
    d = {b"batch_label": b"testing batch", b"labels": list(range(n)),
         b"data": images.reshape(n, -1), b"filenames": [f"img{i}.png".encode() for i in range(n)]}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=protocol)


def test_cifar_batches(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    b1 = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    b2 = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    tb = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    b1[1] = 0
    b1[1, 0, 5, 7] = 255  # R plane, y = 5, x = 7: flat position 5 * 32 + 7 of the row
    assert b1.reshape(4, -1)[1].argmax() == 5 * 32 + 7
    for name, b in (("data_batch_1", b1), ("data_batch_2", b2), ("test_batch", tb)):
        _write_cifar_batch(folder / name, b)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}))

    ds = load_data(str(folder))
    assert ds.train.shape == (7, 3, 32, 32) and ds.test.shape == (2, 3, 32, 32) and ds.bins == 256
    assert ds.train[1, 0, 5, 7] == 1 and (ds.train[1] == -1).sum() == 3 * 32 * 32 - 1
    torch.testing.assert_close(ds.train, torch.from_numpy(np.concatenate([b1, b2])).float() / 127.5 - 1)
    torch.testing.assert_close(ds.test, torch.from_numpy(tb).float() / 127.5 - 1)


def _py2_string(b):
    """Python 2's str as its cPickle wrote it: SHORT_BINSTRING or BINSTRING (read back as bytes)."""
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _py2_int(n):
    return b"J" + struct.pack("<i", n)  # BININT


def _py2_cifar_pickle(images):
    """A batch byte for byte as the real CIFAR-10 files hold it: protocol 2 written by Python 2 and numpy 1,
    so str keys and array bytes are BINSTRINGs and the array names numpy.core.multiarray._reconstruct."""
    n = len(images)
    dtype = (b"cnumpy\ndtype\n" + _py2_string(b"u1") + b"\x89\x88\x87R"  # dtype('u1', False, True)
             + b"(" + _py2_int(3) + _py2_string(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _py2_int(0) + b"\x85"
             + _py2_string(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), 'b')
             + b"(" + _py2_int(1) + _py2_int(n) + _py2_int(images[0].size) + b"\x86" + dtype + b"\x89"
             + _py2_string(images.reshape(n, -1).tobytes()) + b"tb")  # __setstate__((1, shape, dtype, False, data))
    labels = b"](" + b"".join(_py2_int(i) for i in range(n)) + b"e"
    return (b"\x80\x02}(" + _py2_string(b"batch_label") + _py2_string(b"testing batch 1 of 1")
            + _py2_string(b"labels") + labels + _py2_string(b"data") + array + b"u.")


@pytest.mark.parametrize("form", ["python2", 2, 4, 5])
def test_cifar_batches_load_in_every_pickle_form_they_come_in(tmp_path, form):
    """The restricted unpickler still reads genuine batches: Python 2's (the real files), and Python 3's at
    protocol 2 (bytes stored through _codecs.encode), 4 (the default) and 5 (numpy's _frombuffer)."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar"
    folder.mkdir()
    batches = {"data_batch_1": rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8),
               "test_batch": rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)}
    for name, images in batches.items():
        if form == "python2":
            raw = _py2_cifar_pickle(images)
            assert np.array_equal(pickle.loads(raw, encoding="bytes")[b"data"], images.reshape(len(images), -1))
            (folder / name).write_bytes(raw)
        else:
            _write_cifar_batch(folder / name, images, protocol=form)
    ds = load_data(str(folder))
    torch.testing.assert_close(ds.train, torch.from_numpy(batches["data_batch_1"]).float() / 127.5 - 1)
    torch.testing.assert_close(ds.test, torch.from_numpy(batches["test_batch"]).float() / 127.5 - 1)


class _RunsCode:
    """A pickle payload that runs `call(*args)` when it is loaded."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("payload, named", [
    (lambda marker: _RunsCode(os.system, f"touch {marker}"), "system"),
    (lambda marker: _RunsCode(exec, f"open({str(marker)!r}, 'w').write('ran')"), "exec"),
    (lambda marker: _RunsCode(np.savetxt, str(marker), np.zeros(1)), "numpy.savetxt"),  # numpy, but not an array
], ids=["os.system", "exec", "numpy-function"])
def test_a_cifar_batch_that_would_run_code_is_refused_in_one_line(tmp_path, payload, named):
    folder = tmp_path / "cifar"
    folder.mkdir()
    marker = tmp_path / "marker"
    _write_cifar_batch(folder / "test_batch", np.zeros((2, 3, 32, 32), dtype=np.uint8))
    evil = {b"labels": [0], b"data": payload(marker)}
    (folder / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(UserError) as info:
        load_data(str(folder))
    assert not marker.exists()  # the code never ran
    message = str(info.value)
    assert "\n" not in message and "data_batch_1" in message and named in message, message
    assert "refusing to unpickle" in message


# ----------------------------------------------------------------------------- errors

def _garbage_png(root):
    d = root / "garbage"
    _write_pngs(d, 3)
    (d / "broken.png").write_bytes(b"this is not a png at all")
    return d, ["broken.png", "cannot read"]


def _mixed_sizes(root):
    d = root / "sizes"
    _write_pngs(d, 3, size=8)
    Image.new("L", (16, 16)).save(d / "a_big.png")  # sorts first, yet the majority size is the expected one
    return d, ["a_big.png", "16x16", "expected 8x8"]


def _small(root):
    d = root / "small"
    _write_pngs(d, 3, size=4)
    return d, ["too small", "8x8"]


def _non_square(root):
    d = root / "rect"
    d.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 8)).save(d / f"{i}.png")
    return d, ["not square"]


def _empty(root):
    d = root / "empty"
    d.mkdir()
    (d / "readme.txt").write_text("no images here")
    return d, ["no image files"]


def _npz_wrong_ndim(root):
    np.savez(root / "flat.npz", x=np.zeros((10, 64), dtype=np.uint8))
    return root / "flat.npz", ["(10, 64)", "expected"]


def _npz_out_of_range(root):
    np.savez(root / "range.npz", x=np.full((10, 8, 8), 3.5, dtype=np.float32))
    return root / "range.npz", ["[3.5, 3.5]", "expected [-1, 1]"]


def _npz_zero_one(root):
    np.savez(root / "unit.npz", x=np.random.default_rng(0).uniform(0, 1, (10, 8, 8)).astype(np.float32))
    return root / "unit.npz", ["none below 0", "images in [0, 1]", "x * 2 - 1"]


def _npz_small(root):
    np.savez(root / "tiny.npz", x=np.zeros((10, 1, 4, 4), dtype=np.uint8))
    return root / "tiny.npz", ["too small"]


def _npz_not_zip(root):
    (root / "junk.npz").write_bytes(b"garbage")
    return root / "junk.npz", ["cannot read"]


def _missing(root):
    return root / "nowhere" / "data.npz", ["does not exist"]


def _unknown_word(root):
    return "digitz", ["unknown data", "folder of images"]


def _cifar_no_test(root):
    d = root / "cifar"
    d.mkdir()
    _write_cifar_batch(d / "data_batch_1", np.zeros((2, 3, 32, 32), dtype=np.uint8))
    return d, ["test_batch"]


def _cifar_bad_batch(root):
    d = root / "cifar"
    d.mkdir()
    (d / "data_batch_1").write_bytes(b"not a pickle")
    _write_cifar_batch(d / "test_batch", np.zeros((2, 3, 32, 32), dtype=np.uint8))
    return d, ["data_batch_1", "cannot read"]


@pytest.mark.parametrize("make", [_missing, _unknown_word, _empty, _garbage_png, _mixed_sizes, _small, _non_square,
                                  _npz_wrong_ndim, _npz_out_of_range, _npz_zero_one, _npz_small, _npz_not_zip,
                                  _cifar_no_test, _cifar_bad_batch])
def test_user_errors_are_one_line_and_name_the_problem(tmp_path, make):
    spec, keywords = make(tmp_path)
    with pytest.raises(UserError) as info:
        load_data(str(spec))
    message = str(info.value)
    assert "\n" not in message
    for word in keywords:
        assert word in message, (word, message)


def test_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="test_fraction"):
        load_data("digits", test_fraction=1.5)
    _write_pngs(tmp_path / "two", 2)
    with pytest.raises(UserError, match="empty train or test"):
        load_data(str(tmp_path / "two"), test_fraction=0.1)  # round(0.2) = 0 test images


# ----------------------------------------------------------------------------- batch_indices

def test_batches_cover_each_epoch_exactly_once():
    n, b = 10, 5
    epoch0 = torch.cat([batch_indices(n, b, s, seed=7) for s in range(2)])
    epoch1 = torch.cat([batch_indices(n, b, s, seed=7) for s in range(2, 4)])
    assert sorted(epoch0.tolist()) == list(range(n)) and sorted(epoch1.tolist()) == list(range(n))
    assert not torch.equal(epoch0, epoch1)  # each epoch has its own order
    assert batch_indices(n, b, 3, seed=7).dtype == torch.long


def test_batches_are_deterministic_and_depend_on_seed():
    torch.manual_seed(0)
    a = [batch_indices(1000, 32, s, seed=1) for s in (5, 0, 40)]
    torch.manual_seed(99)
    b = [batch_indices(1000, 32, s, seed=1) for s in (40, 5, 0)]
    assert torch.equal(a[0], b[1]) and torch.equal(a[1], b[2]) and torch.equal(a[2], b[0])
    assert not torch.equal(batch_indices(1000, 32, 5, seed=2), a[0])


def test_batches_straddle_epochs():
    n, b = 10, 4
    stream = torch.cat([batch_indices(n, b, s, seed=3) for s in range(10)])  # 40 items = 4 epochs
    for e in range(4):
        assert sorted(stream[e * n:(e + 1) * n].tolist()) == list(range(n))
    # step 2 covers stream items 8..11: the last two of epoch 0, then the first two of epoch 1
    straddle = batch_indices(n, b, 2, seed=3)
    assert torch.equal(straddle, stream[8:12])
    first_of_epoch1 = batch_indices(n, 10, 1, seed=3)  # a batch of exactly epoch 1
    assert torch.equal(straddle[2:], first_of_epoch1[:2])
    # a batch larger than the data spans several epochs, still one permutation each
    big = batch_indices(n, 25, 0, seed=3)
    assert torch.equal(big, stream[:25])


def test_rank_shards_interleave_to_the_global_batch():
    n, b = 37, 8
    for step in range(12):  # crosses several epoch boundaries since 8 does not divide 37
        full = batch_indices(n, b, step, seed=5)
        r0 = batch_indices(n, b, step, seed=5, rank=0, world_size=2)
        r1 = batch_indices(n, b, step, seed=5, rank=1, world_size=2)
        assert len(r0) == len(r1) == b // 2
        interleaved = torch.stack([r0, r1], 1).flatten()
        assert torch.equal(interleaved, full)


@pytest.mark.parametrize("kwargs, word", [
    (dict(num_items=10, batch_size=6, step=0, seed=0, world_size=4), "divisible"),
    (dict(num_items=10, batch_size=4, step=0, seed=0, rank=2, world_size=2), "rank"),
    (dict(num_items=0, batch_size=4, step=0, seed=0), "num_items"),
    (dict(num_items=10, batch_size=4, step=-1, seed=0), "step"),
])
def test_batch_indices_rejects_bad_arguments(kwargs, word):
    with pytest.raises(UserError, match=word):
        batch_indices(**kwargs)

"""studies/train_test_gap.py: the bound on both splits, by bands of t, of a real checkpoint."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from timestep_sampling.bound import estimate_bpd, exact_bpd
from timestep_sampling.config import make_config
from timestep_sampling.data import load_data
from timestep_sampling.evaluate import load_model
from timestep_sampling.train import train

SCRIPT = Path(__file__).parents[1] / "studies" / "train_test_gap.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_test_gap", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A two-step run on 80 of the digits (so its test split, and every bound on it, is small)."""
    folder = tmp_path_factory.mktemp("gap")
    np.savez(folder / "digits80.npz", images=(load_digits().images[:80] * 15).astype(np.uint8))
    out = folder / "run"
    train(make_config(out=str(out), data=str(folder / "digits80.npz"), steps=2, T=40, batch_size=8, eval_every=0, num_samples=0,
                      final_exact=False, warmup=1), progress=False)
    return out


def test_band_sums_add_each_term_with_its_weight_to_its_band(script):
    terms = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    timesteps = torch.tensor([0, 5, 25, 40])
    weights = torch.tensor([1.0, 2.0, 10.0, 0.5], dtype=torch.float64)
    assert script.band_sums(terms, timesteps, weights, (0, 1, 20), T=50) == {"[0,1)": 1.0, "[1,20)": 4.0, "[20,50)": 32.0}


@pytest.mark.parametrize("exact", [False, True])
def test_each_split_is_the_libraries_bound_and_its_bands_add_up_to_it(script, run, exact, tmp_path):
    assert script.main([str(run), "--images", "12", "--json", str(tmp_path / "gap.json")] + (["--exact"] if exact else [])) == 0
    (result,) = json.loads((tmp_path / "gap.json").read_text())
    model, schedule, cfg, _ = load_model(run)
    data = load_data(cfg.data)
    bound = exact_bpd if exact else estimate_bpd
    assert result["images"] == len(data.test) == 8  # --images is capped at the test split's size
    for split, images in (("test", data.test), ("train", data.train[:8])):
        expected = bound(model, schedule, images, bins=data.bins, variance=cfg.variance, progress=False).total
        assert result[split]["bpd"] == pytest.approx(expected, rel=1e-12)
        assert sum(result[split]["bands"].values()) + result[split]["prior"] == pytest.approx(expected, rel=1e-9)
    assert result["test"]["bpd"] != result["train"]["bpd"]  # two different sets of images


def test_a_missing_checkpoint_is_a_one_line_error(script, tmp_path, capsys):
    assert script.main([str(tmp_path / "none")]) == 2
    assert "no checkpoint" in capsys.readouterr().err

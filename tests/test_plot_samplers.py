"""The sampler/weighting picture is written, readable and complete."""
import subprocess
import sys

import pytest
import torch
from PIL import Image

from timestep_sampling import NoiseSchedule, UserError
from timestep_sampling.plotting import plot_samplers
from timestep_sampling.samplers.base import SAMPLERS, TimestepSampler

LINEAR = NoiseSchedule("linear", T=1000)


def test_png_is_written_at_the_requested_size(tmp_path):
    out = tmp_path / "sub" / "samplers.png"
    labels = plot_samplers(LINEAR, ["uniform", "min-snr", "logit-normal", "speed"], out, figsize=(8, 6), dpi=50)
    assert out.stat().st_size > 10_000
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (400, 300)
        # Not a blank canvas: many distinct colours were drawn.
        assert len(image.convert("RGB").getcolors(1 << 20)) > 20
    assert labels[:3] == ["uniform", "min-snr", "logit-normal"]
    assert labels[3].startswith("speed (") and "duals" in labels[3]


class NoPmfSampler(TimestepSampler):
    name = "no-pmf"
    has_pmf = False

    def sample(self, batch_size, device=None, generator=None, x0=None):
        return torch.zeros(batch_size, dtype=torch.long), torch.ones(batch_size)


def test_samplers_without_pmf_are_named_not_drawn(tmp_path, monkeypatch):
    monkeypatch.setitem(SAMPLERS._entries, "no-pmf", NoPmfSampler)
    labels = plot_samplers(LINEAR, ["uniform", "no-pmf+none", "loss-second-moment"], tmp_path / "p.png",
                           figsize=(6, 4), dpi=40)
    assert labels[1] == "no-pmf+none (no explicit pmf: not drawn)"
    assert labels[2] == "loss-second-moment (initial pmf; it learns)"
    assert (tmp_path / "p.png").stat().st_size > 0


class DataConditionedSampler(TimestepSampler):
    """Its pmf depends on the batch: p ∝ 1 + x0.mean()·[t < 500]."""
    name = "data-conditioned"

    def probabilities(self, x0=None):
        if x0 is None:
            raise UserError("needs x0")
        score = 1 + x0.mean().item() * (torch.arange(self.T) < 500).double()
        return score / score.sum()


def test_data_conditioned_samplers_are_drawn_only_with_data(tmp_path, monkeypatch):
    monkeypatch.setitem(SAMPLERS._entries, "data-conditioned", DataConditionedSampler)
    labels = plot_samplers(LINEAR, ["data-conditioned+none"], tmp_path / "p.png", figsize=(6, 4), dpi=40)
    assert labels == ["data-conditioned+none (pmf depends on the data, none given: not drawn)"]
    labels = plot_samplers(LINEAR, ["data-conditioned+none"], tmp_path / "p.png", x0=torch.full((2, 3), 2.0),
                           figsize=(6, 4), dpi=40)
    assert labels == ["data-conditioned+none"]


def test_unknown_method_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown method"):
        plot_samplers(LINEAR, ["unifrom"], tmp_path / "p.png")


def test_library_import_does_not_need_matplotlib():
    code = ("import sys, timestep_sampling, timestep_sampling.methods, timestep_sampling.plotting; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_density_heatmap_range_ignores_the_half_mass_end_timesteps(tmp_path):
    from timestep_sampling.plotting import density_colour_range, plot_density_over_training

    rounded = torch.ones(2, 10) * torch.tensor([0.5] + [1.0] * 8 + [0.5])  # p(t)·T under round(u (T-1))
    rounded[1, 3], rounded[1, 4] = 2.5, 0.8
    assert density_colour_range(rounded.numpy()) == 2.5           # set by the interior, not by 1/0.5 = 2
    assert density_colour_range(torch.ones(1, 10).numpy()) == 1.5  # a floor, so uniform is not all one colour
    rounded[1, 3] = 1.2
    assert density_colour_range(rounded.numpy()) == 1.5
    path = plot_density_over_training([0, 10], (rounded / 10).tolist(), tmp_path / "d.png", title="t")
    assert Image.open(path).size[0] > 0

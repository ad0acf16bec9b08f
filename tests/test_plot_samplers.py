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


# --- rectified flow: continuous t ----------------------------------------------------------------

def test_flow_figure_is_written_and_complete(tmp_path):
    from timestep_sampling.plotting import plot_flow_samplers

    out = tmp_path / "flow.png"
    methods = ["flow-uniform", "flow-logit-normal:shift=3+flow-none", "flow-mode", "flow-elbo", "flow-sigma-sqrt",
               "flow-adaptive"]  # the learned one at its starting density
    labels = plot_flow_samplers(methods, out, figsize=(8, 6), dpi=50)
    assert labels == methods
    with Image.open(out) as image:
        assert image.size == (400, 300) and len(image.convert("RGB").getcolors(1 << 20)) > 20
    with pytest.raises(UserError, match="draws discrete timesteps: plot it with plot_samplers"):
        plot_flow_samplers(["uniform"], tmp_path / "x.png")


def test_a_flow_method_in_the_discrete_figure_is_named_not_drawn(tmp_path):
    labels = plot_samplers(LINEAR, ["uniform", "flow-uniform"], tmp_path / "p.png", figsize=(6, 4), dpi=40)
    assert labels[1] == "flow-uniform (continuous t: see plot_flow_samplers)"


def test_the_command_writes_a_second_figure_for_flow_methods(tmp_path, capsys):
    from timestep_sampling.cli import main

    out = tmp_path / "s.png"
    assert main(["plot-samplers", "--methods", "uniform,flow-cosmap", "--flow-methods", "flow-uniform",
                 "--out", str(out)]) == 0
    assert out.exists() and (tmp_path / "s-flow.png").exists()
    assert "s-flow.png" in capsys.readouterr().out
    only = tmp_path / "only.png"  # only flow methods: the one figure takes --out
    assert main(["plot-samplers", "--methods", "flow-mode", "--flow-methods", "", "--out", str(only)]) == 0
    assert only.exists() and not (tmp_path / "only-flow.png").exists()

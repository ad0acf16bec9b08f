"""benchmarks/gpu_check.py --tiny end to end on the CPU: every part runs and the JSON has its keys."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def stand_in_network(path):
    """A tiny TorchScript feature network in place of Inception: 0..255 RGB images → 12 pooled features."""
    class Features(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 2).flatten(1)

    torch.jit.save(torch.jit.script(Features()), str(path))
    return str(path)


def finite(x):
    return isinstance(x, float) and math.isfinite(x)


def test_tiny_check_writes_every_part(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert gpu_check().main(["--tiny", "--device", "cpu", "--out", str(out),
                             "--inception", stand_in_network(tmp_path / "features.pt")]) == 0
    r = json.loads(out.read_text())
    assert r["tiny"] is True and r["device"]["device"] == "cpu" and r["device"]["torch"] == torch.__version__
    assert r["settings"]["data_shape"] == [3, 32, 32] and r["settings"]["parameters"] > 0
    assert [c["config"] for c in r["timing"]] == ["fp32", "bf16+channels_last"]
    for c in r["timing"]:
        u, a = c["uniform"], c["adaptive"]
        assert u["steps_per_s"] > 0 and u["peak_memory_mb"] is None  # no accelerator memory on a CPU
        assert a["update_steps"] >= 1 and a["plain_steps"] >= 1 and a["peak_memory_mb"] is None
        assert finite(a["sample_ms"]) and finite(u["sample_ms"])
        assert c["ratio_k40"] == pytest.approx((39 * a["plain_ms"] + a["update_ms"]) / (40 * u["ms_per_step_synchronised"]))
        k = a["update_every"]
        assert c["ratio_at_update_every"] == pytest.approx(((k - 1) * a["plain_ms"] + a["update_ms"])
                                                           / (k * u["ms_per_step_synchronised"]))
    assert r["fastest"] in {c["config"] for c in r["timing"]}
    assert "GPU" in r["ddp"]["skipped"]
    run = r["short_run"]
    assert finite(run["bpd_start"]) and run["steps"] >= 1
    for name in ("uniform", "adaptive"):
        assert finite(run["runs"][name]["bpd"]) and finite(run["runs"][name]["fd"])
    assert run["runs"]["adaptive"]["sampler_updates"] >= 1
    assert r["seconds"] > 0 and r["peak_rss_mb"] > 0
    assert f"wrote {out}" in capsys.readouterr().out


def test_a_missing_feature_network_is_one_line_before_any_measuring(tmp_path, capsys):
    assert gpu_check().main(["--tiny", "--out", str(tmp_path / "x.json"), "--inception", "/no/such.pt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --inception") and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


def test_out_may_be_a_folder(tmp_path, capsys, monkeypatch):
    """--out FOLDER (an existing one, or a new one ending in '/') writes <device>.json in it. The measuring
    parts are stubbed (the tiny check above runs them); the resolving and the writing are the script's own."""
    module = gpu_check()
    monkeypatch.setattr(module, "timing", lambda *a, **k: [{"config": "fp32", "uniform": {"steps_per_s": 1.0}}])
    monkeypatch.setattr(module, "ddp_part", lambda *a, **k: {"skipped": "stubbed"})
    monkeypatch.setattr(module, "short_run", lambda *a, **k: {"stubbed": True})
    name = "gpu_check-tiny.json"  # no accelerator (the CPU), and --tiny
    for out, written in [(str(tmp_path), tmp_path / name), (f"{tmp_path}/new/", tmp_path / "new" / name)]:
        assert module.main(["--tiny", "--device", "cpu", "--out", out]) == 0
        r = json.loads(written.read_text())
        assert r["tiny"] is True and r["short_run"] == {"stubbed": True} and r["fastest"] == "fp32"
        assert f"wrote {written}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "new"])  # no .tmp left behind


def test_the_name_inside_a_folder_is_the_devices(tmp_path, monkeypatch):
    module = gpu_check()
    monkeypatch.setattr(module.torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert module.output_path(str(tmp_path), torch.device("cuda"), tiny=False) == tmp_path / "nvidia-h200.json"
    assert module.output_path(str(tmp_path), torch.device("cuda"), tiny=True) == tmp_path / "nvidia-h200-tiny.json"
    assert module.output_path(str(tmp_path), torch.device("cpu"), tiny=False) == tmp_path / "gpu_check.json"
    assert module.output_path(str(tmp_path / "a.json"), torch.device("cpu"), tiny=False) == tmp_path / "a.json"


@pytest.mark.parametrize("out", ["no/such/check.json", "no/such/", "afile/"])
def test_an_out_with_no_folder_to_write_in_is_one_line_before_any_measuring(tmp_path, capsys, out):
    (tmp_path / "afile").write_text("x")
    assert gpu_check().main(["--tiny", "--device", "cpu", "--out", f"{tmp_path}/{out}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.slow
def test_tiny_check_under_torchrun_on_two_cpu_processes(tmp_path):
    """The two-process part, which otherwise runs only with two GPUs, on gloo: about 75 s here."""
    out = tmp_path / "check.json"
    assert gpu_check().main(["--tiny", "--device", "cpu", "--ddp-on-cpu", "--out", str(out)]) == 0
    ddp = json.loads(out.read_text())["ddp"]
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo", ddp
    assert [c["config"] for c in ddp["timing"]] == ["fp32", "bf16+channels_last"]
    assert all(c["adaptive"]["update_steps"] >= 1 for c in ddp["timing"])


@pytest.mark.slow  # a second whole tiny check (about 20 s); the first covers every part
def test_short_run_stops_at_the_budget_not_at_a_guessed_step_count(tmp_path):
    """A budget already spent by part 2: the short run trains one turn of each sampler and stops there, instead
    of the --run-steps asked for (the first H200 run overran a step count guessed from part 2 by 30 %)."""
    module = gpu_check()
    out = tmp_path / "check.json"
    assert module.main(["--tiny", "--device", "cpu", "--out", str(out), "--budget-s", "1", "--run-steps", "100"]) == 0
    run = json.loads(out.read_text())["short_run"]
    assert run["steps"] == module.RUN_TURN and run["capped_by_budget"] is True
    assert {r["steps"] for r in run["runs"].values()} == {module.RUN_TURN}

"""benchmarks/step_cost.py: blocks of whole update cycles, each method's block against the uniform blocks either
side of it, and a file the bench's report reads."""
import importlib.util
import itertools
import json
from pathlib import Path

import pytest
import torch

from timestep_sampling.bench.runner import read_step_cost

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def step_cost(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("step_cost", BENCHMARKS / "step_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ratios_are_against_the_uniform_blocks_either_side_and_blocks_hold_whole_update_cycles(step_cost,
                                                                                              monkeypatch, tmp_path):
    """A stand-in clock: the machine slows down steadily (every block 1 % slower than the one before), a
    method's step costs its factor × uniform's. The interleaving must give back the factors, not the drift."""
    factor = {"uniform": 1.0, "p2": 1.0, "adaptive-variance": 1.3, "min-snr": 0.9, "adaptive": 2.0}
    blocks, clock = [], itertools.count()

    def seconds_per_step(trainer, steps):
        blocks.append((trainer.cfg.method, steps))
        return 0.1 * factor[trainer.cfg.method] * 1.01 ** next(clock)

    monkeypatch.setattr(step_cost, "seconds_per_step", seconds_per_step)
    result = step_cost.measure("ancestral3k", ["p2", "adaptive-variance", "min-snr", "adaptive"], rounds=2,
                               scratch=str(tmp_path), say=lambda *_: None)
    rows = result["methods"]
    assert result["baseline"] == "uniform" and rows["uniform"]["ratio"] == 1.0
    for method in ("p2", "adaptive-variance", "min-snr", "adaptive"):
        assert rows[method]["ratio"] == pytest.approx(factor[method], rel=0.011)  # within the half-block drift
        assert len(rows[method]["ratios"]) == 2
    # the adaptive samplers update every K = 20 steps: a block is whole cycles, at least BLOCK_STEPS steps
    assert rows["adaptive"]["block_steps"] % 20 == 0 and rows["adaptive"]["block_steps"] >= step_cost.BLOCK_STEPS
    assert rows["p2"]["block_steps"] == step_cost.BLOCK_STEPS
    # a uniform block after at most UNIFORM_EVERY method blocks (after the warm-up blocks)
    timed = [name for name, _ in blocks[5:]]
    runs = [len(list(group)) for key, group in itertools.groupby(timed, lambda n: n == "uniform") if not key]
    assert max(runs) <= step_cost.UNIFORM_EVERY and timed[0] == "uniform" and timed[-1] == "uniform"


def test_the_file_it_writes_is_what_the_report_reads(step_cost, monkeypatch, tmp_path):
    monkeypatch.setattr(step_cost, "seconds_per_step",
                        lambda trainer, steps: 0.2 if trainer.cfg.method.endswith("adaptive") else 0.1)
    out = tmp_path / "cost.json"
    monkeypatch.setattr("sys.argv", ["step_cost.py", "--grids", "ancestral3k,flow3k", "--methods",
                                     "adaptive,flow-adaptive", "--rounds", "1", "--out", str(out)])
    threads = torch.get_num_threads()
    try:
        step_cost.main()
    finally:
        torch.set_num_threads(threads)
    assert read_step_cost(str(out), flow=False) == {"uniform": 1.0, "adaptive": pytest.approx(2.0)}
    assert read_step_cost(str(out), flow=True) == {"flow-uniform": 1.0, "flow-adaptive": pytest.approx(2.0)}
    assert json.loads(out.read_text())["provenance"]["threads"] == 1


def test_callable_mode_hands_observe_a_plain_callable_around_the_network(step_cost):
    """--callable: the sampler's observe() sees a lambda (not an nn.Module) that computes the network's output."""
    seen = []

    class Sampler:
        def observe(self, model, x0, **options):
            seen.append((model, options))

    class FakeTrainer:
        sampler = Sampler()
        net = staticmethod(lambda x, t: x * 2 + t)

    trainer = FakeTrainer()
    step_cost.observe_a_callable(trainer)
    trainer.sampler.observe("the network", torch.zeros(1, 2), optimizer="opt")
    model, options = seen[0]
    assert not isinstance(model, torch.nn.Module) and options == {"optimizer": "opt"}
    x = torch.randn(3, 2)
    assert torch.equal(model(x, 1), x * 2 + 1)

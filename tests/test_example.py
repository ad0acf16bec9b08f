"""examples/custom_loop.py, which the README shows verbatim, runs and trains."""
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_loop.py"


def test_custom_loop_example_trains_and_reports_the_sampler():
    result = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "41", "--batch-size", "64",
                             "--update-every", "40"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    updates = [line for line in lines if line.startswith("step")]
    assert [line.split()[1] for line in updates] == ["1", "41"]  # printed after each sampler update
    pattern = r"alpha \d\.\d{3}±\d\.\d{3}  beta \d\.\d{3}±\d\.\d{3}  P\(t<100\) 0\.\d{3}  credit [+-]\d"
    assert all(re.search(pattern, line) for line in updates), updates
    done = re.fullmatch(r"done: 41 steps, 2 sampler updates, loss (\S+) -> (\S+)", lines[-1])
    assert done, lines[-1]
    first, last = map(float, done.groups())
    assert last < 0.8 * first  # it trains

"""The README's promises: its loop example runs as printed, its set-up commands are the ones CI runs,
and the library half imports nothing from the trainer's dependencies."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_loop_runs_as_printed(tmp_path):
    marker = "<!-- tests/test_readme.py runs this block as it is -->"
    block = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", README, re.S)
    assert block, "the tested block is missing from the README"
    script = tmp_path / "readme_loop.py"
    script.write_text(block.group(1))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"loss (\S+), sampler updates 5, last reward ([+-]\S+)\n", result.stdout)
    assert match, result.stdout
    assert 0 < float(match.group(1)) < 0.5  # the ε-loss starts near 1: it trained


def test_the_readme_flow_drop_in_runs_as_printed(tmp_path):
    marker = "<!-- tests/test_readme.py runs this block as it is: the flow drop-in -->"
    block = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", README, re.S)
    assert block, "the tested flow block is missing from the README"
    assert "compute_density_for_timestep_sampling" in block.group(1)
    assert "FlowMatchEulerDiscreteScheduler" in block.group(1)
    script = tmp_path / "readme_flow_loop.py"
    script.write_text(block.group(1))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"loss (\S+), samples: mean (\S+), range \[(\S+), (\S+)\]\n", result.stdout)
    assert match, result.stdout
    # The velocity loss starts near E‖ε − x0‖² = 1 + E[x0²] ≈ 1.7 on the digits: it trained.
    assert 0 < float(match.group(1)) < 1.2
    assert all(abs(float(match.group(i))) < 10 for i in (2, 3, 4))  # diffusers' sampler ran on the model


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"^    (python3 -m venv .*)$", README, re.M)
    assert len(commands) == 2, commands  # one for the main job, one for the tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1].endswith("python -m pytest -q") and commands[1] in ci.splitlines()


def test_the_library_needs_neither_matplotlib_nor_diffusers():
    code = ("import sys, timestep_sampling, timestep_sampling.methods; "
            "bad = {'matplotlib', 'diffusers', 'timestep_sampling.train', 'timestep_sampling.data'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)

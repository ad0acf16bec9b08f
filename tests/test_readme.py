"""The README's promises: its loop examples run as printed (and so does every marked block of the pages
under docs/), its set-up commands are the ones CI runs, it stays a front page, and the library half imports
nothing from the trainer's dependencies."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = sorted((ROOT / "docs").glob("*.md"))
MARKER = "<!-- tests/test_readme.py runs this block as it is"
README_MARKERS = {  # the README's marked blocks, each run and checked by a test of its own below
    "<!-- tests/test_readme.py runs this block as it is -->",
    "<!-- tests/test_readme.py runs this block as it is: the flow drop-in -->",
}


def marked_blocks(text: str) -> list[tuple[str, str]]:
    """(marker line, code) for every python block right after a marker comment."""
    return re.findall(r"^(" + re.escape(MARKER) + r"[^\n]*-->)\s*```python\n(.*?)```", text, re.S | re.M)


def run_block(code: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    script = tmp_path / name
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_the_readme_loop_runs_as_printed(tmp_path):
    marker = "<!-- tests/test_readme.py runs this block as it is -->"
    block = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", README, re.S)
    assert block, "the tested block is missing from the README"
    script = tmp_path / "readme_loop.py"
    script.write_text(block.group(1))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(r"loss (\S+), sampler updates 3, last reward ([+-]\S+)\n", result.stdout)  # K = 40
    assert match, result.stdout
    assert 0 < float(match.group(1)) < 0.5  # the ε-loss starts near 1: it trained


def test_the_readme_loop_runs_with_the_sampler_it_recommends_for_samples(tmp_path):
    """The prose under the loop names an importance sampler for a model you sample from: that call, put in the
    loop in place of the default sampler, runs, learns, and hands the loop weights 1/(T·p_t)."""
    call = re.search(r"`(make_sampler\(\"adaptive:unbiased=True[^`]*\))`", README)
    assert call, "the README no longer names the importance sampler for sampling"
    block = dict(marked_blocks(README))["<!-- tests/test_readme.py runs this block as it is -->"]
    default = re.search(r"^sampler = make_sampler\(.*$", block, re.M).group(0)
    weighting = re.search(r"^weighting = make_weighting\(.*$", block, re.M).group(0)
    code = block.replace(default + "\n", "").replace(weighting, weighting + "\nsampler = " + call.group(1))
    code = code.replace("for step in range(100):", "for step in range(40):")  # the printed loop is tested above
    code += "print('weights', float(w.mean()), float(w.min()), float(w.max()), sampler.unbiased)\n"
    result = run_block(code, tmp_path, "readme_loop_unbiased.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"loss \S+, sampler updates 1, last reward [+-]\S+", lines[0]), result.stdout
    mean, low, high, unbiased = lines[1].split()[1:]
    assert unbiased == "True" and 0 < float(low) <= float(high) <= 1 / 0.3 + 1e-6  # the 30 % floor caps them
    assert 0.3 < float(mean) < 3  # E_p[1/(T p_t)] = 1; 64 draws of weights in (0, 3.33]


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


def test_every_marked_readme_block_has_its_test():
    markers = [m for m, _ in marked_blocks(README)]
    assert sorted(markers) == sorted(README_MARKERS), markers


PAGE_BLOCKS = [(page, marker, code) for page in PAGES for marker, code in marked_blocks(page.read_text())]


@pytest.mark.parametrize("page, marker, code", PAGE_BLOCKS,
                         ids=[f"{p.name}:{m[len(MARKER):-3].strip(' :') or 'block'}" for p, m, _ in PAGE_BLOCKS])
def test_every_marked_block_of_the_pages_runs_as_printed(page, marker, code, tmp_path):
    result = run_block(code, tmp_path, "page_block.py")
    assert result.returncode == 0, f"{page.name}, {marker}:\n{result.stderr}"
    assert result.stdout.strip(), f"{page.name}, {marker}: prints nothing"
    if "a DDP loop" in marker:  # multi-process.md: 20 steps at K = 5 are four credit updates
        assert re.fullmatch(r"sampler updates 4, Beta mass below t = 100: 0\.\d+\n", result.stdout), result.stdout
    if "the learned flow sampler" in marker:  # flow.md: 40 steps at K = 40 are one credit update
        match = re.fullmatch(r"loss (\S+), sampler updates (\d+)\n", result.stdout)
        assert match and 0 < float(match.group(1)) < 1.2 and int(match.group(2)) == 1, result.stdout


def test_the_pages_have_marked_blocks():
    assert any("flow.md" == page.name for page, _, _ in PAGE_BLOCKS)  # the marker search finds them


def test_the_readme_is_a_front_page():
    lines = README.split("\n")
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"
    dated = [line for line in lines if re.search(r"\b20\d\d-\d\d", line)]
    assert not dated, f"dated history belongs in docs/changelog.md: {dated}"
    assert "](docs/headline.png)" in README and (ROOT / "docs" / "headline.png").is_file()
    assert (ROOT / "docs" / "changelog.md").is_file()


def test_the_readme_tables_are_the_records_means():
    # benchmarks/readme_table.py builds them from docs/bench/; a record that moves a mean fails here until --write
    check = subprocess.run([sys.executable, "readme_table.py", "--check"], cwd=ROOT / "benchmarks",
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr

"""Every relative link in README.md and docs/*.md points to a file that exists, and every #anchor into a
Markdown file names one of its headings (GitHub's slugs)."""
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "studies" / "README.md"] + sorted((ROOT / "docs").glob("*.md"))

# [text](target) and ![alt](target), the target up to an optional "title"; not inside code.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)


def strip_code(text: str) -> str:
    """The text without fenced blocks, indented code blocks and inline code spans (links there are not links)."""
    text = FENCE.sub("", text)
    text = "\n".join("" if line.startswith("    ") else line for line in text.split("\n"))
    return INLINE_CODE.sub("", text)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in "-_ " or category[0] in "LN" or category == "Mn":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's slug in a Markdown file, with GitHub's -1, -2, ... for repeats."""
    seen: dict[str, int] = {}
    slugs = set()
    for line in strip_code_blocks_only(path.read_text()).split("\n"):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = github_slug(match.group(1))
        n = seen.get(slug, 0)
        slugs.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return slugs


def strip_code_blocks_only(text: str) -> str:
    return FENCE.sub("", text)


def links(path: Path) -> list[str]:
    return LINK.findall(strip_code(path.read_text()))


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("//")


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if is_external(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = path if not file_part else (path.parent / unquote(file_part)).resolve()
        if not dest.exists():
            problems.append(f"{target}: no such file {dest}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert not broken_links(page), "\n".join(broken_links(page))


def test_the_pages_link_something():
    assert sum(len(links(p)) for p in PAGES) > 20  # the link pattern matches at all
    assert len(PAGES) > 5


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# A page: its title\n\n## Second, `code` part\n\ntext\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/page.md) [ok](docs/page.md#a-page-its-title) [ok](docs/page.md#second-code-part)\n"
                    "[self](#top) [web](https://example.com/x#y) `[code](nowhere.md)`\n\n# Top\n\n"
                    "[gone](docs/missing.md) [bad anchor](docs/page.md#no-such-heading) ![img](docs/none.png)\n")
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert any("missing.md" in p for p in problems)
    assert any("#no-such-heading" in p for p in problems)
    assert any("none.png" in p for p in problems)


@pytest.mark.parametrize("heading, slug", [
    ("The learned sampler: why its reward is a credit, and how to choose",
     "the-learned-sampler-why-its-reward-is-a-credit-and-how-to-choose"),
    ("Linear schedule, 10,000 steps", "linear-schedule-10000-steps"),
    ("What the paper's estimator does here", "what-the-papers-estimator-does-here"),
    ("The scan's control: 50 strata against all T timesteps", "the-scans-control-50-strata-against-all-t-timesteps"),
    ("What it costs in FD (DDIM-50 samples)", "what-it-costs-in-fd-ddim-50-samples"),
    ("`grad-variance` and friends", "grad-variance-and-friends"),
    ("Many processes × many nodes", "many-processes--many-nodes"),
])
def test_github_slugs(heading, slug):
    assert github_slug(heading) == slug


# A script named by its path anywhere in the pages, the records' histories, the sources, tests and examples
# (`python benchmarks/NAME.py`, studies/NAME.py): it is there, so a script moved between the two folders leaves no
# command behind that no longer runs. docs/analysis/*.json keep the command each figure was made with, as run.
SCRIPT_PATH = re.compile(r"\b((?:benchmarks|studies)/[a-z0-9_]+\.py)\b")


def test_every_named_benchmark_or_study_script_exists():
    texts = [*PAGES, *(ROOT / "docs" / "bench").glob("*/*.md"), *(ROOT / "src").rglob("*.py"),
             *(ROOT / "tests").glob("*.py"), *(ROOT / "examples").glob("*.py"),
             *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "studies").glob("*.py")]
    missing = sorted({f"{path.relative_to(ROOT)}: {name}" for path in texts
                      for name in SCRIPT_PATH.findall(path.read_text()) if not (ROOT / name).is_file()})
    assert not missing, "\n".join(missing)
    assert len(texts) > 50

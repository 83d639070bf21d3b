"""The documentation stays true to the repository: README.md is short, and every relative link,
image and backticked project path in README.md and docs/*.md points at something that exists.

The checker is a handful of small functions; the last tests feed it broken files to show it fails.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200

FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<block>.*?)^(?P=fence)[ \t]*$|(?P<ticks>`+)(?P<span>.+?)(?P=ticks)",
                  re.MULTILINE | re.DOTALL)  # a fenced block or an inline span, in the order they come
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
PROJECT_PREFIXES = ("softrepa/", "editing/", "evaluation/", "shapes/", "data_prep/", "app/", "benchmarks/",
                    "tests/", "docs/", "assets/", ".ci/")
PROJECT_SUFFIXES = (".py", ".md", ".sh", ".json", ".safetensors", ".png", ".txt", "/")
PLACEHOLDERS = ("<", "*", "{", "$", "runs/", "outputs/")


def doc_files(root: Path = REPO_ROOT) -> list[Path]:
    """README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def split_code(text: str) -> tuple[str, list[str]]:
    """(the prose with fenced blocks and inline code blanked out, the code blocks and spans)."""
    code: list[str] = []

    def keep(match: re.Match) -> str:
        code.append(match.group("block") if match.group("fence") else match.group("span"))
        return " "

    return CODE.sub(keep, text), code


def slugify(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped except - and _, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def heading_slugs(text: str) -> set[str]:
    """Every anchor a file's headings define (a repeated heading gets -1, -2, ... as on GitHub)."""
    prose = FENCE.sub(" ", text)
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(prose):
        slug = slugify(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


def relative_links(text: str) -> list[str]:
    """Targets of markdown links and images outside code, without web and mail links."""
    prose, _ = split_code(text)
    targets = LINK.findall(prose)
    return [target for target in targets if not re.match(r"(https?:|mailto:)", target)]


def broken_links(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """The relative links of one markdown file whose file, folder or #anchor does not exist."""
    problems = []
    for target in relative_links(path.read_text(encoding="utf-8")):
        name, _, anchor = target.partition("#")
        linked = (path.parent / name).resolve() if name else path
        if not linked.exists():
            problems.append(f"{path.relative_to(root)}: link to missing {target}")
        elif anchor and (linked.suffix != ".md" or anchor not in heading_slugs(linked.read_text(encoding="utf-8"))):
            problems.append(f"{path.relative_to(root)}: no heading for #{anchor} in {name or path.name}")
    return problems


def project_paths(text: str) -> list[str]:
    """Words of code spans and blocks that name a project file or folder (placeholders skipped)."""
    _, code = split_code(text)
    found = []
    for word in re.split(r"[\s=(),;:\"'`\[\]]+", "\n".join(code)):
        word = word.rstrip(".")
        if word.startswith("./"):
            word = word[2:]
        if word.startswith(PROJECT_PREFIXES) and word.endswith(PROJECT_SUFFIXES) \
                and not any(mark in word for mark in PLACEHOLDERS):
            found.append(word)
    return found


def missing_paths(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """The project paths one markdown file names in backticks that are not in the repository."""
    return [f"{path.relative_to(root)}: `{name}` does not exist"
            for name in project_paths(path.read_text(encoding="utf-8")) if not (root / name).exists()]


# ----------------------------------------------------------------------------- the repository's docs


def test_readme_is_short():
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_keeps_the_space_front_matter():
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n") and "\nsdk: gradio\n" in text and "\napp_file: app.py\n" in text


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_links_resolve(path):
    assert broken_links(path) == []


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_backticked_paths_exist(path):
    assert missing_paths(path) == []


def test_docs_pages_exist():
    names = {path.name for path in doc_files()}
    for page in ("app.md", "editing.md", "training.md", "data_prep.md", "evaluation.md", "shapes.md",
                 "shapes_results.md", "benchmarks.md", "architecture.md"):
        assert page in names


# ----------------------------------------------------------------------------- the checker can fail


def test_slugs_follow_github():
    assert slugify("Where it stands (measured, honest)") == "where-it-stands-measured-honest"
    assert slugify("Memory: `--pair-chunk`") == "memory---pair-chunk"
    assert heading_slugs("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_the_checker_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## Real section\n")
    broken = tmp_path / "README.md"
    broken.write_text("[ok](docs/page.md) [ok anchor](docs/page.md#real-section) [web](https://example.com)\n"
                      "[gone](docs/missing.md) ![gone image](docs/missing.png) [bad anchor](docs/page.md#nowhere)\n"
                      "`[in code](docs/not-checked.md)`\n")
    problems = broken_links(broken, tmp_path)
    assert problems == ["README.md: link to missing docs/missing.md", "README.md: link to missing docs/missing.png",
                        "README.md: no heading for #nowhere in docs/page.md"]


def test_the_checker_finds_missing_paths(tmp_path):
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "world.py").write_text("")
    page = tmp_path / "README.md"
    page.write_text("Run `shapes/world.py` and `shapes/gone.py`; `runs/x/tokens.safetensors` and "
                    "`assets/examples/<kind>/` are placeholders.\n\n```bash\npython softrepa/old.py --out docs/a.png\n```\n")
    assert missing_paths(page, tmp_path) == ["README.md: `shapes/gone.py` does not exist",
                                             "README.md: `softrepa/old.py` does not exist",
                                             "README.md: `docs/a.png` does not exist"]

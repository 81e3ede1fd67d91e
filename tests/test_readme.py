"""The README's Python blocks run as written: in order, in one fresh interpreter, as a reader
pasting them into one prompt would (in a temporary folder, with the real MNIST files). Its
links into docs/ resolve (they work on GitHub as on the site), and the file map of
docs/architecture.md matches the package tree. tests/test_docs.py runs the guides' blocks."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
ARCHITECTURE = README.parent / "docs" / "architecture.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_has_its_blocks():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2 and "model.fit(" in "".join(blocks)
    # the test command CI runs, as a line of its own in a shell block
    assert re.search(r"^python -m pytest -q( +#.*)?$", README.read_text(), flags=re.M)


def test_the_readmes_links_resolve():
    """Relative links (docs pages, pictures, CONTRIBUTING) point at files that exist, and every
    guide in docs/ is linked from the front door."""
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links nowhere"
    for target in local:
        assert (README.parent / target).exists(), f"README links to missing {target}"
    guides = {p.name for p in (README.parent / "docs").glob("*.md")} - {"index.md", "about.md"}
    assert guides <= {Path(t).name for t in local if t.startswith("docs/")}


@pytest.mark.skipif(not os.environ.get("MINICNN_DATA"), reason="MINICNN_DATA is not set (the "
                    "fit block loads the real MNIST)")
@pytest.mark.slow
def test_the_readme_python_blocks_run_in_order(tmp_path):
    code = "\n".join(python_blocks(README.read_text()))
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Total params: 421,642" in run.stdout and "Evaluation(loss=" in run.stdout
    assert (tmp_path / "ref-cnn.npz").is_file()


def file_map(text: str) -> list[str]:
    """The first column of the table in docs/architecture.md ('# Where things are'), backticks
    removed."""
    section = text.split("# Where things are", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)


def test_the_file_map_matches_the_tree():
    """Every subpackage (and module at the top besides __init__/__main__) is in the file map
    of docs/architecture.md, and every entry there exists."""
    package = README.parent / "minicnn"
    listed = file_map(ARCHITECTURE.read_text())
    tree = sorted(p.name + "/" for p in package.iterdir()
                  if p.is_dir() and (p / "__init__.py").is_file()) + \
        sorted(p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    tree = [t for t in tree if t != "tools/"] + ["tools/bench/"]
    assert sorted(listed) == sorted(tree)
    for entry in listed:
        for module in re.findall(r"`([a-z_0-9]+)`", ARCHITECTURE.read_text().split(
                f"| `{entry}` |", 1)[1].split("\n", 1)[0]):
            folder = package / entry.rstrip("/")
            if folder.is_dir() and module != "minicnn":
                names = {p.stem for p in folder.glob("*.py")} | \
                    {p.name for p in folder.iterdir() if p.is_dir()}
                assert module in names or module in {"build_model", "fit", "base"}, \
                    f"docs/architecture.md: {entry} has no module {module!r}"

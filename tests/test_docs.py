"""The documentation site (mkdocs.yml, docs/): every Python block of a guide runs as written,
the site builds with ``mkdocs build --strict``, the API page shows the models' real ``fit``,
``evaluate`` and ``predict``, and a headless Chromium opens the built pages without a console
message. Without the ``docs`` extra (mkdocs) or Chromium those tests skip, saying why."""
from __future__ import annotations

import functools
import http.server
import importlib.util
import inspect
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import minicnn
from minicnn.training import evaluation
from minicnn.training import loop as train

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = sorted(DOCS.glob("*.md"))


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def what_blocks_need(code: str) -> str | None:
    """Why a page's blocks cannot run here (a missing package or data), or None."""
    if "load_mnist(" in code and not os.environ.get("MINICNN_DATA"):
        return "MINICNN_DATA is not set (the blocks load the real MNIST)"
    for module in ("onnxruntime", "onnx", "matplotlib"):
        if re.search(rf"^\s*(import|from) {module}\b", code, flags=re.M) and \
                importlib.util.find_spec(module) is None:
            return f"the blocks import {module}, which is not installed"
    return None


def test_the_guides_have_blocks_that_train():
    blocks = {page.name: python_blocks(page.read_text()) for page in GUIDES}
    assert sum(map(len, blocks.values())) >= 8
    assert any("model.fit(" in "".join(b) for b in blocks.values())
    assert blocks["custom-layers.md"] and "check_layer(" in "".join(blocks["custom-layers.md"])


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in GUIDES if python_blocks(p.read_text())],
                         ids=lambda p: p.name)
def test_a_guides_python_blocks_run_in_order(page, tmp_path):
    """A page's blocks run in order in one fresh interpreter, as a reader pasting them into
    one prompt would (in a temporary folder)."""
    code = "\n".join(python_blocks(page.read_text()))
    reason = what_blocks_need(code)
    if reason:
        pytest.skip(reason)
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, f"{page.name}:\n{run.stderr[-3000:]}"


def test_every_guide_and_picture_is_reachable():
    """Each page is in mkdocs.yml's nav (strict mode warns on the rest, but only where mkdocs
    is installed) and every picture a page shows exists."""
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:", 1)[1]
    listed = set(re.findall(r":\s*(\S+\.md)\s*$", nav, flags=re.M))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert listed == pages
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"!\[[^\]]*\]\(([^)#]+)\)", page.read_text()):
            assert (page.parent / target).is_file(), f"{page.name} shows missing {target}"


# --- fit, evaluate and predict on models show the loop's signatures and documentation --------
@pytest.mark.parametrize("method, function", [
    ("fit", train.fit), ("evaluate", evaluation.evaluate), ("predict", evaluation.predict),
    ("predict_proba", evaluation.predict_proba), ("predict_classes", evaluation.predict_classes),
])
def test_model_methods_have_the_loops_signature_and_docstring(method, function):
    bound = getattr(minicnn.Sequential([minicnn.layers.Dense(4, 2)], input_shape=(4,)), method)
    expected = list(inspect.signature(function).parameters.values())[1:]     # without model
    assert list(inspect.signature(bound).parameters.values()) == expected
    assert bound.__doc__ == function.__doc__ and len(bound.__doc__) > 40
    assert "*args" not in inspect.signature(bound).__str__()


def test_help_shows_fits_arguments():
    import pydoc
    text = pydoc.render_doc(minicnn.Sequential.fit, renderer=pydoc.plaintext)
    assert "train_data" in text and "clip_value" in text and "early_stop:" in text


# --- the site -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def built_site(tmp_path_factory) -> Path:
    """The site built here with ``mkdocs build --strict`` (so nothing depends on an earlier
    build); a warning (broken link, anchor, reference, a page not in nav) fails it."""
    if importlib.util.find_spec("mkdocs") is None or \
            importlib.util.find_spec("mkdocstrings_handlers") is None:
        pytest.skip('mkdocs and mkdocstrings are not installed (pip install -e ".[docs]")')
    site = tmp_path_factory.mktemp("site")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                          str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    return site


@pytest.mark.slow
def test_the_site_builds_strict_with_every_page(built_site):
    for page in DOCS.rglob("*.md"):
        name = page.relative_to(DOCS).with_suffix("")
        html = built_site / ("index.html" if str(name) == "index" else f"{name}/index.html")
        assert html.is_file(), f"{page} was not built"
    assert (built_site / "filters.png").is_file() and (built_site / "im2col.png").is_file()


@pytest.mark.slow
def test_strict_mode_fails_on_a_broken_link_anchor_or_reference(built_site, tmp_path):
    """The config's strictness is real: a copy of the docs with a link to a missing page, a
    missing anchor and an unknown API name does not build."""
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    with open(tmp_path / "docs" / "about.md", "a") as page:
        page.write("\n[a](no-such-page.md) [b](training.md#no-such-anchor) [c][minicnn.NoSuch]\n")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                          str(tmp_path / "site")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1",
                                           "PYTHONPATH": str(ROOT)})
    assert run.returncode != 0
    for what in ("no-such-page.md", "no-such-anchor", "minicnn.NoSuch"):
        assert what in run.stderr, run.stderr[-2000:]


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&quot;", '"')


@pytest.mark.slow
def test_the_api_page_shows_fits_real_signature_and_docstring(built_site):
    html = (built_site / "api/minicnn/index.html").read_text()
    fit = html.split('id="minicnn.models.Network.fit"', 1)[1]
    fit = text_of(fit.split('id="minicnn.models.Network.evaluate"', 1)[0])
    signature = re.sub(r"\s", "", fit)
    assert "train_data:Any" in signature and "clip_value:float|None=None" in signature
    assert "*args" not in signature
    assert "Train model for epochs epochs with optimizer" in fit     # the loop's docstring
    layers = (built_site / "api/layers/index.html").read_text()
    for name in minicnn.layers.__all__:
        assert f'id="minicnn.layers.{name}"' in layers, f"the API page lacks {name}"


# --- in a real browser ------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url``, console messages logged to stderr as ``...:CONSOLE...``."""
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         *extra, url], capture_output=True, text=True, timeout=60)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="session")
def served_site(built_site) -> Iterator[str]:
    """The built site over http on localhost (as a reader's browser gets it; search's worker
    does not load from file://)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_site))
    handler.log_message = lambda *args: None     # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get "
                    "install chromium chromium-driver)")
def test_the_console_check_sees_an_error(tmp_path):
    """The detector itself: a page that logs an error and throws is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<html><body><p id='x'>bad</p><script>console.error('docs-test boom');"
                    "undefinedFunction();</script></body></html>")
    run = chromium(page.as_uri(), tmp_path / "profile", "--dump-dom")
    messages = console_messages(run.stderr)
    assert any("docs-test boom" in m for m in messages)
    assert any("Uncaught ReferenceError" in m for m in messages)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get "
                    "install chromium chromium-driver)")
@pytest.mark.parametrize("path, expected", [
    ("/", "A small, readable deep-learning framework"),
    ("/custom-layers/", "Writing your own layer"),
    ("/api/minicnn/", "train_data"),
])
def test_pages_render_in_chromium_without_console_messages(served_site, tmp_path, path,
                                                           expected):
    run = chromium(served_site + path, tmp_path / "profile", "--dump-dom",
                   "--virtual-time-budget=3000")
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    assert expected in text_of(dom)
    assert 'class="md-content"' in dom and "md-search" in dom     # the theme rendered
    assert console_messages(run.stderr) == [], "\n".join(console_messages(run.stderr))

"""The documentation runs: every Python example in README.md and docs/ is extracted and executed, and the
docs agree with the code where a check is cheap (the README's test command is CI's, every CLI command is listed,
the API reference names every public name, the figures the docs show exist).

Each Markdown file's ```python blocks run in order in one namespace of their own (a page is read top to bottom, so
a block may use names an earlier block of the same page defined), in a fresh working folder, with the environment
of a single-rank torch.distributed job (so the torchrun example runs as one rank) and NEUINV_AUTO_BUILD=0 (the
examples use the compiled kernels where they are built already, else the pure-torch path: never a 2-minute build
inside this test).
A block that imports an optional package that is not installed (jax, cupy), or that needs CUDA where there is
none, is skipped, and says so.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import socket
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md"] + sorted(p for p in DOCS.rglob("*.md") if "_raw" not in p.parts)
OPTIONAL = {"jax", "cupy"}
"""Packages an example may need that neuinv's test extra does not install: such a block is skipped without them."""
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, source) of each ```python block of a Markdown file."""
    text = path.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        if match.group("info").strip().split(" ")[0] in ("python", "py"):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((line, textwrap.dedent(match.group("body"))))
    return blocks


def missing_requirement(source: str) -> str | None:
    """Why a block cannot run here (an optional package missing, no CUDA), or None."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in OPTIONAL and importlib.util.find_spec(top) is None:
                return f"needs {top}, not installed"
    if "cupy" in source and not torch.cuda.is_available():
        return "needs a CUDA GPU"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p)]


def test_pages_with_examples_found():
    assert ROOT / "README.md" in PAGES_WITH_CODE
    assert len(PAGES_WITH_CODE) >= 10, [page_id(p) for p in PAGES_WITH_CODE]


@pytest.fixture
def example_environment(monkeypatch, tmp_path):
    """What an example runs in: a fresh working folder, a single-rank torch.distributed environment (so the
    torchrun example runs as one rank), no just-in-time build of the compiled kernels, no interactive plots;
    afterwards no process group is left behind."""
    monkeypatch.chdir(tmp_path)
    for name, value in dict(NEUINV_AUTO_BUILD="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
                            LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MPLBACKEND="Agg").items():
        monkeypatch.setenv(name, value)
    yield
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("path", PAGES_WITH_CODE, ids=page_id)
def test_examples_run(path, example_environment, capsys):
    """The page's blocks in order, in one namespace of their own (as a reader runs them top to bottom)."""
    import torch.distributed as dist

    if "init_process_group" in path.read_text() and dist.is_available() and dist.is_initialized():
        pytest.skip("another test left a torch.distributed process group initialized in this process")
    namespace = {"__name__": "__main__"}
    skipped = []
    for line, source in python_blocks(path):
        why = missing_requirement(source)
        if why:
            skipped.append(f"line {line}: {why}")
            continue
        code = compile(source, f"{page_id(path)}:{line}", "exec")  # a traceback names the page and line
        with warnings_as_in_a_script():
            exec(code, namespace)
    if skipped:
        pytest.skip("ran the others; " + "; ".join(skipped))


class warnings_as_in_a_script:
    """pytest's warning filters (error on some categories in some setups) do not apply to an example; the
    pure-torch path's RuntimeWarning (no compiled kernels here) is expected and not shown."""

    def __enter__(self):
        import warnings

        self._context = warnings.catch_warnings()
        self._context.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


# --- the docs agree with the code ------------------------------------------------------------------------------

def test_readme_test_command_is_what_ci_runs():
    command = 'pip install torch==2.14.1 -e ".[test]" && python -m pytest'
    readme = (ROOT / "README.md").read_text()
    assert command in readme
    assert command in (ROOT / ".ci" / "run").read_text()
    assert len(readme.splitlines()) <= 250


def test_every_cli_command_is_documented():
    from neuinv import cli

    parser_source = Path(cli.__file__).read_text()
    commands = set(re.findall(r"add_parser\(\s*\"([a-z-]+)\"", parser_source))
    assert commands, "no subcommands found in neuinv/cli.py"
    page = (DOCS / "api" / "cli.md").read_text()
    assert not {c for c in commands if f"`neuinv {c}`" not in page}


def test_api_reference_covers_the_public_namespace():
    import neuinv

    reference = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    documented = set(re.findall(r"^::: ([\w.]+)", reference, re.M))
    lazy = {"fit": "neuinv.learned.training.fit", "load_pretrained": "neuinv.learned.training.load_pretrained"}
    missing = [name for name in neuinv.__all__ if name != "__version__"
               and f"neuinv.{name}" not in documented and lazy.get(name) not in documented]
    assert not missing, f"public names without an API reference entry: {missing}"


def test_docs_images_exist():
    for path in PAGES:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", path.read_text()):
            assert (path.parent / target).is_file(), f"{page_id(path)} shows {target}, which does not exist"


def test_markdown_links_resolve():
    for path in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", path.read_text()):
            if "://" in target:
                continue
            assert (path.parent / target).is_file(), f"{page_id(path)} links to {target}, which does not exist"


def test_each_benchmark_file_gives_the_figure_of_its_kind(tmp_path):
    """bench/plots.py tells the kinds of results apart: a solve run draws the solve figure (speed relative to
    torch.linalg.solve and torch.cholesky_solve), not the inverse's figures against torch.linalg.inv."""
    spec = importlib.util.spec_from_file_location("plots", ROOT / "bench" / "plots.py")
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    written = plots.figures(ROOT / "bench" / "results" / "solve-cpu-2026-12-06c.json", tmp_path)
    assert [path.name for path in written] == ["solve-cpu-2026-12-06c-solve.png"] and written[0].stat().st_size > 0
    written = plots.figures(ROOT / "bench" / "results" / "throughput-cpu-2026-12-06-compact-layout.json", tmp_path)
    assert sorted(path.name for path in written) == ["throughput-cpu-2026-12-06-compact-layout-roofline.png",
                                                    "throughput-cpu-2026-12-06-compact-layout-speed.png"]

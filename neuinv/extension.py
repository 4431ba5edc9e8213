"""The optional compiled extension: built on request (``neuinv build-ext``), loaded lazily.

``build()`` compiles csrc/neuinv_cpu.cpp with ``torch.utils.cpp_extension.load`` into a cache
folder per torch version (torch's own file lock makes two concurrent builds safe); ``load()``
loads an existing build without compiling anything. Until it is built, ``available_backends()``
says so and ``auto`` uses the other backends.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

SOURCES = [Path(__file__).resolve().parents[1] / "csrc" / "neuinv_cpu.cpp"]
NAME = "neuinv_cpu"
_loaded = False
_load_error: str | None = None


def build_directory() -> Path:
    """$NEUINV_EXT_DIR, or ~/.cache/neuinv/ext-torch<version>."""
    default = Path.home() / ".cache" / "neuinv" / f"ext-torch{torch.__version__}"
    return Path(os.environ.get("NEUINV_EXT_DIR", default))


def _library_path() -> Path:
    return build_directory() / f"{NAME}.so"


def build(verbose: bool = False) -> Path:
    """Compile the CPU kernels (a minute or two on 2 cores) and load them; returns the library path."""
    global _loaded, _load_error
    missing = [str(path) for path in SOURCES if not path.exists()]
    if missing:
        raise FileNotFoundError(f"the extension's sources are not here: {missing} (build from a source checkout)")
    from torch.utils.cpp_extension import load as compile_and_load

    build_directory().mkdir(parents=True, exist_ok=True)
    compile_and_load(name=NAME, sources=[str(path) for path in SOURCES], build_directory=str(build_directory()),
                     extra_cflags=["-O3"], is_python_module=False, verbose=verbose)
    _register_fakes()
    _loaded, _load_error = True, None
    return _library_path()


def load() -> bool:
    """Load a finished build (never compiles). False, with the reason kept for status(), if there is none."""
    global _loaded, _load_error
    if _loaded:
        return True
    path = _library_path()
    if not path.exists():
        _load_error = f"not built: run `neuinv build-ext` (looked for {path})"
        return False
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as error:
        _load_error = f"the build at {path} does not load ({error}); rebuild with `neuinv build-ext`"
        warnings.warn(f"neuinv: {_load_error}; using the other backends", RuntimeWarning, stacklevel=2)
        return False
    _register_fakes()
    _loaded = True
    return True


def status() -> tuple[bool, str]:
    if load():
        return True, f"compiled CPU kernels ({_library_path()})"
    return False, _load_error or "not built"


def _register_fakes() -> None:
    """Shape-only implementations so torch.compile can trace code that calls the operators."""
    if getattr(_register_fakes, "done", False):
        return

    @torch.library.register_fake("neuinv::exact_inverse")
    def _(A):
        return torch.empty_like(A), A.new_empty(A.shape[0], dtype=torch.int32)

    @torch.library.register_fake("neuinv::residual_norm")
    def _(A, X):
        return A.new_empty(A.shape[0])

    @torch.library.register_fake("neuinv::newton_schulz")
    def _(A, X0, tol, accept, max_iter, guarded, guard):
        b = A.shape[0]
        return (torch.empty_like(A), A.new_empty(b), A.new_empty(b, dtype=torch.bool),
                A.new_empty(b, dtype=torch.int32))

    _register_fakes.done = True

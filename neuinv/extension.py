"""The optional compiled extension: the operators ``torch.ops.neuinv.*`` (schemas in csrc/neuinv_ops.cpp, rules in
csrc/neuinv_rules.h), with CPU kernels (csrc/cpu/) and, where a CUDA toolkit and a CUDA build of torch are
present, CUDA kernels (csrc/cuda/).

Two ways to build it:

- ahead of time: ``NEUINV_BUILD_EXT=1 pip install --no-build-isolation -e .`` compiles the module
  ``neuinv._C`` (setup.py);
- just in time: ``neuinv build-ext`` (:func:`build`) compiles with ``torch.utils.cpp_extension.load`` into
  a cache folder per torch version (torch's own file lock makes two concurrent builds safe).

Whether the CUDA part is built is decided by the toolchain (:func:`cuda_build_problem`), never by whether a
GPU is present. :func:`load` loads an existing build and never compiles; until there is one,
``available_backends()`` says so and ``auto`` uses the other backends.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import warnings
from pathlib import Path

import torch

NAME = "neuinv_ext"
DEFAULT_CUDA_ARCH_LIST = "9.0+PTX"
"""Compiled-for GPU architectures when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible (sm_90: H100)."""
_loaded = False
_load_error: str | None = None
_library: Path | None = None
_cuda_kernels: bool | None = None


def source_directory() -> Path:
    """The C++/CUDA sources: installed beside the package (neuinv/csrc), or a checkout's csrc/."""
    installed = Path(__file__).resolve().parent / "csrc"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "csrc"


def cpu_sources() -> list[Path]:
    """The operators' schemas and shared checks (csrc/neuinv_ops.cpp) and the CPU kernels (csrc/cpu/)."""
    return [source_directory() / "neuinv_ops.cpp"] + sorted((source_directory() / "cpu").glob("*.cpp"))


def cuda_sources() -> list[Path]:
    """The host-compiled CUDA operators (csrc/cuda/neuinv_cuda_ops.cpp) and their kernels, one file per operator
    (csrc/cuda/neuinv_cuda_<op>.cu), so that they compile in parallel."""
    cuda = source_directory() / "cuda"
    return [cuda / "neuinv_cuda_ops.cpp"] + sorted(cuda.glob("*.cu"))


def cuda_toolkit() -> Path | None:
    """The CUDA toolkit to compile with: $CUDA_HOME, else the toolkit around nvcc, else /usr/local/cuda;
    a candidate counts when it has bin/nvcc and include/cuda_runtime.h (an nvcc on PATH may be a link
    or a wrapper outside its toolkit, so its real path is followed)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    candidates.append("/usr/local/cuda")
    for candidate in candidates:
        if candidate and (Path(candidate) / "bin" / "nvcc").exists() and \
                (Path(candidate) / "include" / "cuda_runtime.h").exists():
            return Path(candidate)
    return None


def cuda_build_problem() -> str | None:
    """Why the CUDA kernels cannot be compiled here, or None when they can."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if cuda_toolkit() is None:
        return "no CUDA toolkit found (set CUDA_HOME to the folder holding bin/nvcc and include/)"
    return None


def compile_settings() -> dict:
    """Sources and flags for torch.utils.cpp_extension, shared by the JIT build and setup.py.
    Sets CUDA_HOME (and a default TORCH_CUDA_ARCH_LIST without a visible GPU) for the CUDA part."""
    sources = cpu_sources()
    with_cuda = cuda_build_problem() is None
    if with_cuda:
        os.environ["CUDA_HOME"] = str(cuda_toolkit())
        if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        sources = sources + cuda_sources()
    missing = [str(path) for path in sources if not path.exists()]
    if missing:
        raise FileNotFoundError(f"the extension's sources are missing: {missing}")
    # -fopenmp: ATen's parallel_for is a header template that splits the batch across threads with
    # `#pragma omp parallel`; compiled without it, the kernels run on one thread. -fno-math-errno: sqrt
    # without the errno branch, so that loops of square roots across the compact lanes are vectorised.
    return dict(sources=[str(path) for path in sources], with_cuda=with_cuda,
                extra_cflags=["-O3", "-fopenmp", "-fno-math-errno"], extra_ldflags=["-fopenmp"],
                extra_cuda_cflags=["-O3", "-lineinfo"])


def build_directory() -> Path:
    """$NEUINV_EXT_DIR, or ~/.cache/neuinv/ext-torch<version>."""
    default = Path.home() / ".cache" / "neuinv" / f"ext-torch{torch.__version__}"
    return Path(os.environ.get("NEUINV_EXT_DIR", default))


def _jit_library_path() -> Path:
    return build_directory() / f"{NAME}.so"


def _library_candidates() -> list[Path]:
    """The ahead-of-time module neuinv._C if installed, then the JIT build, where they exist."""
    candidates = []
    spec = importlib.util.find_spec("neuinv._C")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin))
    if _jit_library_path().exists():
        candidates.append(_jit_library_path())
    return candidates


def build(verbose: bool = False) -> Path:
    """Compile the kernels just in time (CPU: ~25 s on 2 cores; the CUDA part about a minute more) and load them."""
    global _loaded, _load_error, _library
    settings = compile_settings()
    from torch.utils import cpp_extension

    if settings["with_cuda"]:
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]  # read once, at the module's import
    build_directory().mkdir(parents=True, exist_ok=True)
    cpp_extension.load(name=NAME, sources=settings["sources"], build_directory=str(build_directory()),
                       extra_cflags=settings["extra_cflags"], extra_cuda_cflags=settings["extra_cuda_cflags"],
                       extra_ldflags=settings["extra_ldflags"],
                       with_cuda=settings["with_cuda"], is_python_module=False, verbose=verbose)
    _register_fakes()
    _loaded, _load_error, _library = True, None, _jit_library_path()
    from . import backends

    backends.forget_availability()
    return _library


def load() -> bool:
    """Load a finished build (never compiles). False, with the reason kept for status(), if there is none."""
    global _loaded, _load_error, _library
    if _loaded:
        return True
    candidates = _library_candidates()
    if not candidates:
        _load_error = f"not built: run `neuinv build-ext` (looked for neuinv._C and {_jit_library_path()})"
        return False
    problems = []
    for path in candidates:
        try:
            torch.ops.load_library(str(path))
        except (OSError, RuntimeError) as error:
            problems.append(f"{path} does not load ({error})")
            continue
        missing = [op for op in OPERATORS if not _has_kernel(op, "CPU")]
        if missing:  # the library is loaded and cannot be unloaded: no other candidate can register now
            problems.append(f"{path} was built from other neuinv sources (it lacks neuinv::{', neuinv::'.join(missing)})")
            break
        _register_fakes()
        _loaded, _library = True, path
        return True
    _load_error = "; ".join(problems) + "; rebuild with `neuinv build-ext`"
    warnings.warn(f"neuinv: {_load_error}; using the other backends", RuntimeWarning, stacklevel=2)
    return False


OPERATORS = ("invert", "exact_inverse", "residual_norm", "newton_schulz", "inverse_and_error_bound", "error_bound")
"""The operators the CPU and the CUDA kernels both implement (a build lacking one is from other sources)."""


def _has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether neuinv::op exists and has a kernel for dispatch_key."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"neuinv::{op}", dispatch_key)
    except RuntimeError:  # the operator does not exist
        return False


def has_cuda_kernels() -> bool:
    """Whether the loaded build holds CUDA kernels for every operator (registered for the CUDA dispatch key);
    asked of the dispatcher once per process, after the load."""
    global _cuda_kernels
    if _cuda_kernels is None and load():
        _cuda_kernels = all(_has_kernel(op, "CUDA") for op in OPERATORS)
    return bool(_cuda_kernels)


def status() -> tuple[bool, str]:
    if load():
        parts = "CPU and CUDA kernels" if has_cuda_kernels() else "CPU kernels"
        return True, f"compiled {parts} ({_library})"
    return False, _load_error or "not built"


def _register_fakes() -> None:
    """Shape-only implementations so torch.compile can trace code that calls the operators (contiguous outputs,
    as the kernels return)."""
    if getattr(_register_fakes, "done", False):
        return

    @torch.library.register_fake("neuinv::invert")
    def _(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, positive_definite=False):
        batch = A.shape[:-2]
        return (A.new_empty(A.shape), A.new_empty(batch, dtype=torch.bool), A.new_empty(batch, dtype=torch.float64),
                A.new_empty(batch, dtype=torch.int32), A.new_empty(batch, dtype=torch.bool))

    @torch.library.register_fake("neuinv::exact_inverse")
    def _(A):
        return A.new_empty(A.shape), A.new_empty(A.shape[0], dtype=torch.int32)

    @torch.library.register_fake("neuinv::inverse_and_error_bound")
    def _(A):
        return A.new_empty(A.shape), A.new_empty(A.shape[0], dtype=torch.float64)

    @torch.library.register_fake("neuinv::error_bound")
    def _(A, X):
        return A.new_empty(A.shape[0], dtype=torch.float64)

    @torch.library.register_fake("neuinv::residual_norm")
    def _(A, X):
        return A.new_empty(A.shape[0])

    @torch.library.register_fake("neuinv::newton_schulz")
    def _(A, X0, tol, accept, max_iter, guarded, guard):
        b = A.shape[0]
        return (A.new_empty(A.shape), A.new_empty(b), A.new_empty(b, dtype=torch.bool),
                A.new_empty(b, dtype=torch.int32))

    _register_fakes.done = True

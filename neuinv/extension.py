"""The compiled kernels: the operators ``torch.ops.neuinv.*`` (schemas in csrc/neuinv_ops.cpp, rules in
csrc/neuinv_rules.h), in two libraries (:data:`PARTS`):

- ``cpu``: the schemas and the CPU kernels (csrc/neuinv_ops.cpp, csrc/neuinv_checks.cpp, csrc/cpu/);
- ``cuda``: the CUDA kernels (csrc/neuinv_checks.cpp, csrc/cuda/), where torch is a CUDA build and a CUDA toolkit
  is found (:func:`cuda_build_problem`; never decided by whether a GPU is present). Loaded after the CPU part.

Each part comes from one of two builds:

- ahead of time, into the package: ``NEUINV_BUILD_EXT=1 pip wheel --no-build-isolation .`` (setup.py) makes the
  modules ``neuinv._C`` and ``neuinv._C_cuda``;
- just in time, into a cache folder per torch version and machine (:func:`build_directory`), one subfolder per
  part and digest of its sources (:func:`jit_library`): by :func:`ensure` on the first call that needs the part,
  unless ``NEUINV_AUTO_BUILD=0`` (the DeepSpeed way: one line says what is built, where and for about how long;
  a file lock makes concurrent processes build once), or by ``neuinv build-ext``.

Every build writes a record beside its library (``<library>.json``, :func:`write_record`): the torch it was
built against, the digest of the sources, the compiler, the CUDA architectures, the SHA-256 of the library. A
library is loaded only when its record matches this torch and these sources (a library built against another torch
crashes or misbehaves once loaded); otherwise it is refused with the reason, and built anew just in time where that
is allowed.

The cache is trusted only when it is the user's own, as ssh treats ``~/.ssh`` (:func:`cache_problem`): a library
there is loaded only when it, its record and every folder above them are owned by this user or root and writable
by no one else (above the cache root, a sticky folder such as /tmp may be writable), and its bytes match its
record's SHA-256; otherwise it is refused, and nothing is built there (the pure-torch path runs, with one warning
naming the path and the fix). The build makes its folders with mode 0o700. The ahead-of-time module is trusted as
installed Python code is: its record is checked, not its owner nor its bytes (packagers may strip or re-link it).
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import torch


class Part(NamedTuple):
    """One compiled library: its just-in-time library name, its ahead-of-time module, its dispatch key."""

    name: str
    library: str
    module: str
    dispatch_key: str


PARTS = {"cpu": Part("cpu", "neuinv_cpu", "neuinv._C", "CPU"),
         "cuda": Part("cuda", "neuinv_cuda", "neuinv._C_cuda", "CUDA")}
OPERATORS = ("invert", "invert.out")
"""The operators the CPU and the CUDA kernels both implement."""
AUTO_BUILD_ENV = "NEUINV_AUTO_BUILD"
"""Set to 0 to stop the first call that needs the compiled kernels from building them."""
DEFAULT_CUDA_ARCH_LIST = "9.0+PTX"
"""Compiled-for GPU architectures when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible (sm_90: H100, H200)."""
CXX_FLAGS = ("-O3", "-fopenmp", "-fno-math-errno", "-ffp-contract=off", "-fno-gcse", "-fno-gcse-after-reload")
"""The C++ compiler's flags. -fopenmp: ATen's parallel_for is a header template that splits the batch across threads
with ``#pragma omp parallel``; compiled without it, the kernels run on one thread. -fno-math-errno: sqrt without the
errno branch, so that loops of square roots across the compact lanes are vectorised. -ffp-contract=off: no product
fused with an addition the source does not fuse (the kernels write their fused multiply-adds out), so that
error-free transformations (TwoSum after a product, the splittings) stay exact and a pack's lanes, a scalar and a
CUDA thread compute the same bits. -fno-gcse, -fno-gcse-after-reload: GCC's RTL redundancy passes, superlinear in
the size of the large always-inlined kernels, took about half of the build's time and gained no measurable speed
(bench/RESULTS.md, "Build time")."""
LINK_FLAGS = ("-fopenmp",)
NVCC_FLAGS = ("-O3", "-lineinfo", "--fmad=false")
"""nvcc's flags; --fmad=false as -ffp-contract=off above."""
BUILD_MINUTES = {"cpu": 12, "cuda": 7}
"""About how long each part takes to compile with two free cores (measured on a 2-core x86_64 VM, bench/RESULTS.md
"Build time"; four source files, one per operator and dtype, hold most of the CPU part's work, so more than four
cores shorten it little); the build's announcement quotes it."""
PURE_TORCH_COST = ("it certifies every matrix in float64 with torch operations, several times slower than the "
                   "compiled kernels and slower than torch.linalg.inv itself (measurements: the documentation's "
                   "Benchmarks page, \"Without the compiled kernels\"; docs/benchmarks.md in the source repository)")
"""What running on the pure-torch reference path costs; quoted where the compiled CPU kernels cannot be had. The
measured ratios live in the documentation's Benchmarks page (docs/benchmarks.md in the source repository), not in
the warning."""

_loaded: dict[str, Path] = {}
_problems: dict[str, str] = {}
_refused: dict[str, list[str]] = {}
_warned: set[str] = set()


def source_directory() -> Path:
    """The C++/CUDA sources: installed beside the package (neuinv/csrc), or a checkout's csrc/."""
    installed = Path(__file__).resolve().parent / "csrc"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "csrc"


def sources(part: str) -> list[Path]:
    """The files compiled into `part`: the shared argument checks, plus the schemas and csrc/cpu/ (cpu) or the
    host-compiled CUDA operators and one kernel file per operator, compiled in parallel (cuda)."""
    root = source_directory()
    if part == "cpu":
        return [root / "neuinv_ops.cpp", root / "neuinv_checks.cpp"] + sorted((root / "cpu").glob("*.cpp"))
    return [root / "neuinv_checks.cpp", root / "cuda" / "neuinv_cuda_ops.cpp"] + sorted((root / "cuda").glob("*.cu"))


def _headers(part: str) -> list[Path]:
    root = source_directory()
    headers = sorted(root.glob("*.h")) + sorted((root / "kernels").glob("*.h"))
    return headers + sorted((root / "cuda").glob("*.cuh")) + sorted((root / "cuda").glob("*.h")) \
        if part == "cuda" else headers + sorted((root / "cpu").glob("*.h"))


@functools.lru_cache(maxsize=None)
def source_digest(part: str) -> str:
    """SHA-256 of `part`'s sources and headers (names relative to csrc/ and contents) and of the compiler flags: a
    library records the digest of what it was compiled from and how, so that a change of either rebuilds it."""
    digest = hashlib.sha256(repr((CXX_FLAGS, LINK_FLAGS, NVCC_FLAGS)).encode())
    root = source_directory()
    for path in sources(part) + _headers(part):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


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


def compiler() -> str | None:
    """The C++ compiler torch.utils.cpp_extension uses ($CXX, else c++), if it is on PATH."""
    return shutil.which(os.environ.get("CXX", "c++"))


def build_problem(part: str) -> str | None:
    """Why `part` cannot be compiled here, or None when it can: no compiler, or a build cache that is not private."""
    if compiler() is None:
        return f"no C++ compiler found ({os.environ.get('CXX', 'c++')} is not on PATH)"
    if _ninja_directory() is None:
        return "ninja is not installed (pip install ninja)"
    return (cuda_build_problem() if part == "cuda" else None) or cache_problem(jit_library(part).parent, entries=True)


def _ninja_directory() -> Path | None:
    """The folder of the ninja that torch.utils.cpp_extension will run: on PATH, or beside this Python (a
    virtualenv used without activating it)."""
    found = shutil.which("ninja") or shutil.which("ninja", path=str(Path(sys.executable).parent))
    return Path(found).parent if found else None


def compile_settings(part: str) -> dict:
    """Sources and flags for torch.utils.cpp_extension, shared by the just-in-time build and setup.py.
    Sets CUDA_HOME (and a default TORCH_CUDA_ARCH_LIST without a visible GPU) for the CUDA part."""
    with_cuda = part == "cuda"
    if with_cuda:
        os.environ["CUDA_HOME"] = str(cuda_toolkit())
        if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
    missing = [str(path) for path in sources(part) if not path.exists()]
    if missing:
        raise FileNotFoundError(f"the extension's sources are missing: {missing}")
    return dict(sources=[str(path) for path in sources(part)], with_cuda=with_cuda, extra_cflags=list(CXX_FLAGS),
                extra_ldflags=list(LINK_FLAGS), extra_cuda_cflags=list(NVCC_FLAGS))


def _version_line(program: str, containing: str = "") -> str:
    """The first line of `program --version` that contains `containing`, or "unknown"."""
    try:
        output = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return next((line for line in output.splitlines() if containing in line), "unknown")


def build_record(part: str) -> dict:
    """What a build of `part` records beside its library: the torch it is built against, the machine, the digest
    of its sources, the compiler (and nvcc and the CUDA architectures for the CUDA part), and when."""
    record = {"part": part, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
              "machine": platform.machine(), "sources_sha256": source_digest(part),
              "compiler": _version_line(compiler() or "c++"),
              "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if part == "cuda":
        record["nvcc"] = _version_line(str(cuda_toolkit() / "bin" / "nvcc"), "release")
        record["cuda_arch_list"] = os.environ.get("TORCH_CUDA_ARCH_LIST", "the visible GPUs'")
    return record


def write_record(library: Path, part: str) -> Path:
    """Write build_record(part) and the SHA-256 of `library` beside it (as ``<library without suffixes>.json``)."""
    path = record_path(library)
    path.write_text(json.dumps({**build_record(part), "library_sha256": _file_sha256(library)}, indent=1) + "\n")
    return path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_path(library: Path) -> Path:
    """Where `library`'s build record lives: beside it, as ``<library's name without suffixes>.json``."""
    return library.with_name(library.name.split(".")[0] + ".json")


def read_record(library: Path) -> dict | None:
    """The build record beside `library`, or None where it is missing or unreadable."""
    try:
        record = json.loads(record_path(library).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _mismatch(library: Path, part: str, check_bytes: bool = True) -> str | None:
    """Why `library` must not be loaded here (by its build record and, with check_bytes, its SHA-256), or None."""
    record = read_record(library)
    if record is None:
        if record_path(library).exists():
            return f"its build record {record_path(library)} is unreadable"
        return "it has no build record (built by an older neuinv)"
    if record.get("torch") != torch.__version__:
        return f"it was built for torch {record.get('torch')}, and this is torch {torch.__version__}"
    if record.get("machine") != platform.machine():
        return f"it was built for {record.get('machine')}, and this machine is {platform.machine()}"
    if record.get("sources_sha256") != source_digest(part):
        return "it was built from other neuinv sources or compiler flags"
    if check_bytes and "library_sha256" not in record:
        return f"its build record {record_path(library)} holds no SHA-256 of it (built by an older neuinv)"
    if check_bytes and record["library_sha256"] != _file_sha256(library):
        return f"its bytes do not match the SHA-256 in its build record {record_path(library)}"
    return None


def _owner_or_mode_problem(path: Path, info: os.stat_result, sticky_allowed: bool) -> str | None:
    """Why `path` (as `info` describes it) could be changed by another user, and how to fix it; or None. Its owner
    must be this user or root, and neither group nor others may write to it, unless sticky_allowed and it is sticky
    (then no one else can rename or remove what is ours in it)."""
    elsewhere = "point NEUINV_EXT_DIR at a folder of your own"
    if info.st_uid not in (os.geteuid(), 0):
        return (f"{path} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()}) or root, so another "
                f"user could plant code there that neuinv would run; remove it or chown it to this user, "
                f"or {elsewhere}")
    if stat.S_ISLNK(info.st_mode):  # only the entries of a build folder are not resolved
        return f"{path} is a symbolic link, which a build never makes; remove it, or {elsewhere}"
    writers = [who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if info.st_mode & bit]
    if writers and not (sticky_allowed and info.st_mode & stat.S_ISVTX):
        return (f"{path} is writable by {' and '.join(writers)} (mode {stat.S_IMODE(info.st_mode):04o}), so another "
                f"user could plant code there that neuinv would run; "
                + (elsewhere if info.st_mode & stat.S_ISVTX else f"chmod go-w {path}, or {elsewhere}"))
    return None


def cache_problem(path: Path, entries: bool = False) -> str | None:
    """Why `path` in the build cache (a library, its record, or the folder a build writes to; with entries, also what
    that folder holds, which the build could link in) could have been changed by another user, who could then plant
    code that neuinv runs; or None. As ssh's StrictModes: the path, resolved, and each existing folder above it must
    be owned by this user or root and writable by no one else; above the cache root, a folder others may write to is
    allowed when it is sticky, as /tmp is. Loading by path after this check is safe from other users: none of them
    can change the checked files or folders (only their owner, this user or root, can); the SHA-256 in the record
    ties the library to its record, and is not what keeps others out."""
    if not hasattr(os, "geteuid"):  # no POSIX owners (Windows)
        return None
    root = Path(os.path.realpath(build_directory()))
    path = Path(os.path.realpath(path))
    items = [(item, item != path and item != root and root not in item.parents) for item in (path, *path.parents)]
    if entries:
        with contextlib.suppress(OSError):  # a folder not made yet, or that this user cannot list
            items += [(item, False) for item in sorted(path.iterdir())]
    for item, sticky_allowed in items:
        try:
            info = os.lstat(item)
        except OSError:  # missing (to be made by the build) or not a folder: nothing to trust or distrust
            continue
        problem = _owner_or_mode_problem(item, info, sticky_allowed)
        if problem is not None:
            return f"the build cache is not private: {problem}"
    return None


def build_directory() -> Path:
    """$NEUINV_EXT_DIR, or ~/.cache/neuinv/ext-torch<version>-<machine> (one cache per torch version and
    instruction set; the CPU kernels choose their AVX2 build at run time)."""
    default = Path.home() / ".cache" / "neuinv" / f"ext-torch{torch.__version__}-{platform.machine()}"
    return Path(os.environ.get("NEUINV_EXT_DIR", default))


def jit_library(part: str) -> Path:
    """Where the just-in-time build of `part` puts its library: a folder per part and sources' digest, so that
    installs of different neuinv versions beside one torch keep their own builds."""
    return build_directory() / f"{part}-{source_digest(part)[:16]}" / f"{PARTS[part].library}.so"


def _candidates(part: str) -> list[Path]:
    """The ahead-of-time module if installed, then the just-in-time build, where they exist."""
    candidates = []
    spec = importlib.util.find_spec(PARTS[part].module)
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin))
    if jit_library(part).exists():
        candidates.append(jit_library(part))
    return candidates


def jit_library_problem(library: Path, part: str) -> str | None:
    """Why the just-in-time build `library` (resolved) of `part` must not be used here: another user could have
    changed it or its record (:func:`cache_problem`), or its record does not match this torch, these sources and
    flags, or its bytes (:func:`_mismatch`); None where it may be loaded, or copied into a wheel (setup.py)."""
    return cache_problem(library) or cache_problem(record_path(library)) or _mismatch(library, part)


def load(part: str = "cpu") -> bool:
    """Load a finished build of `part` whose record matches this torch and these sources (and, in the cache, whose
    files and folders no one else can change and whose bytes match its record); never compiles. False, with the
    reason kept for :func:`status`, where there is none."""
    if part in _loaded:
        return True
    if part == "cuda" and not load("cpu"):
        _problems[part] = "not loaded: the CPU kernels, which define the operators, are not loaded"
        return False
    candidates = _candidates(part)
    if not candidates:
        _problems[part] = f"not built (looked for {PARTS[part].module} and {jit_library(part)})"
        return False
    refused = []
    for library in candidates:
        if library != jit_library(part):  # the ahead-of-time module: trusted as installed Python code is
            mismatch = _mismatch(library, part, check_bytes=False)
        else:  # checked and loaded as resolved, so that no link is followed after the check
            library = Path(os.path.realpath(library))
            mismatch = jit_library_problem(library, part)
        if mismatch is not None:
            refused.append(f"{library} is not loaded: {mismatch}")
            continue
        try:
            torch.ops.load_library(str(library))
        except (OSError, RuntimeError) as error:
            refused.append(f"{library} does not load ({error})")
            continue
        missing = [op for op in OPERATORS if not _has_kernel(op, PARTS[part].dispatch_key)]
        if missing:
            refused.append(f"{library} lacks neuinv::{', neuinv::'.join(missing)}")
            break  # a loaded library cannot be unloaded: no other candidate can register now
        if part == "cpu":
            _register_fakes()
        _loaded[part] = library
        _refused[part] = refused
        _problems.pop(part, None)
        return True
    _refused[part] = refused
    _problems[part] = "; ".join(refused)
    return False


def auto_build_allowed() -> bool:
    """False where NEUINV_AUTO_BUILD is 0, false, no or off (any case)."""
    return os.environ.get(AUTO_BUILD_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def ensure(part: str = "cpu") -> bool:
    """Load `part`, building it first just in time where it is missing or refused (then one line says why), a
    compiler is there and ``NEUINV_AUTO_BUILD`` does not say no. Where it cannot be had, one warning (per part and
    process, pointing at the caller's line) says why, what that costs and how to get it. True when loaded."""
    if load(part):
        return True
    if part == "cuda" and "cpu" not in _loaded:
        return False
    problem = build_problem(part)
    cost = (f"neuinv runs on its pure-torch reference path instead: {PURE_TORCH_COST}" if part == "cpu" else
            "CUDA tensors take the Triton kernels where triton is installed, else the pure-torch path")
    if not auto_build_allowed():
        _warn_once(part, f"neuinv: the compiled {part.upper()} kernels are not loaded ({_problems[part]}) and "
                         f"{AUTO_BUILD_ENV}={os.environ[AUTO_BUILD_ENV]} stops neuinv from building them; {cost}. "
                         "`neuinv build-ext` builds them")
        return False
    if problem is not None:
        _warn_once(part, f"neuinv: the compiled {part.upper()} kernels are not loaded ({_problems[part]}) and "
                         f"{_not_built(part, problem)}. {cost}."
                         + (" Install a C++ compiler (e.g. g++) and the next run builds them."
                            if part == "cpu" and compiler() is None else ""))
        return False
    if "is not loaded:" in _problems[part]:
        print(f"neuinv: {_problems[part]}", file=sys.stderr, flush=True)
    try:
        build(part)
    except OSError as error:
        _problems[part] = (f"the just-in-time build cannot write its folder {build_directory()} ({error}); "
                           f"point NEUINV_EXT_DIR at a writable folder")
    except Exception as error:  # a failed build leaves the other backends to run, and says why
        _problems[part] = (f"the just-in-time build failed ({error}); `neuinv build-ext --verbose` shows the "
                           "compiler's output")
    else:
        return load(part)
    _warn_once(part, f"neuinv: {_problems[part]}. {cost}")
    return False


def _not_built(part: str, problem: str) -> str:
    """That `part` cannot be built, for `problem`, unless its load's refusal named that already."""
    return "cannot be built there either" if problem in _problems[part] else f"cannot be built here: {problem}"


def _make_private_folders(folder: Path) -> None:
    """Make `folder` and its missing parents with mode 0o700 (Path.mkdir(parents=True) gives parents the default)."""
    for missing in reversed([folder, *folder.parents]):
        if not missing.is_dir():
            missing.mkdir(mode=0o700, exist_ok=True)


def _warn_once(part: str, message: str) -> None:
    """A RuntimeWarning, once per part and process, pointing at the first line outside neuinv (the user's call)."""
    if part in _warned:
        return
    _warned.add(part)
    package = str(Path(__file__).resolve().parent)
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, RuntimeWarning, stacklevel=level)


def build(part: str = "cpu", verbose: bool = False) -> Path:
    """Compile `part` just in time into :func:`jit_library` under a file lock (a second process waits, then
    finds the finished build), write its record, and load it; a build that loads already (installed with the
    package, or in the cache) is kept. Folders are made with mode 0o700, and nothing the build writes is writable
    by group or others. Raises RuntimeError where it cannot be built (a build cache that is not private included),
    or where another build of it is already loaded in this process (then the new one loads in the next)."""
    if load(part):
        return _loaded[part]
    problem = build_problem(part)
    if problem is not None:
        raise RuntimeError(f"cannot build the {part.upper()} kernels: {problem}")
    if part == "cuda" and not ensure("cpu"):
        raise RuntimeError(f"the CUDA kernels need the CPU part, which is not loaded: {_problems['cpu']}")
    umask = os.umask(0o077)  # read by setting it: the build runs under this user's umask, and go-w
    try:
        os.umask(umask | 0o022)
        library = _build_locked(part, verbose)
    finally:
        os.umask(umask)
    from . import backends

    backends.forget_availability()
    return library


def _build_locked(part: str, verbose: bool) -> Path:
    """build(part)'s work in its private folder, under the file lock; a library refused there is linked anew, so
    that its record holds the SHA-256 of the fresh link (which cpp_extension.load loads from that checked folder)."""
    from filelock import FileLock, Timeout
    from torch.utils import cpp_extension

    library = jit_library(part)
    _make_private_folders(library.parent)
    problem = cache_problem(library.parent, entries=True)  # a folder made meanwhile by someone else
    if problem is not None:
        raise RuntimeError(f"cannot build the {part.upper()} kernels: {problem}")
    lock = FileLock(str(library.parent / "build.lock"))
    try:
        lock.acquire(blocking=False)
    except Timeout:
        print(f"neuinv: waiting for another process that is building the {part.upper()} kernels in "
              f"{library.parent}", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        if library.exists() and load(part):  # built meanwhile by another process
            return library
        if part in _loaded:
            raise RuntimeError(f"another build of the {part.upper()} kernels ({_loaded[part]}) is loaded in this "
                               f"process; the new one is used from the next process on")
        settings = compile_settings(part)
        print(f"neuinv: compiling the {part.upper()} kernels for torch {torch.__version__} ({platform.machine()}) "
              f"into {library.parent}, about {BUILD_MINUTES[part]:g} minutes on two free cores, longer on a busy "
              f"machine; once per torch version and neuinv version ({AUTO_BUILD_ENV}=0 turns this off)",
              file=sys.stderr, flush=True)
        if settings["with_cuda"]:
            cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]  # read once, at the module's import
        if shutil.which("ninja") is None:  # cpp_extension runs `ninja` from PATH
            os.environ["PATH"] = f"{_ninja_directory()}{os.pathsep}{os.environ.get('PATH', '')}"
        (library.parent / "lock").unlink(missing_ok=True)  # cpp_extension's own lock, left by a killed build
        library.unlink(missing_ok=True)  # refused: ninja must link it anew
        started = time.perf_counter()
        cpp_extension.load(name=PARTS[part].library, sources=settings["sources"], build_directory=str(library.parent),
                           extra_cflags=settings["extra_cflags"], extra_cuda_cflags=settings["extra_cuda_cflags"],
                           extra_ldflags=settings["extra_ldflags"], with_cuda=settings["with_cuda"],
                           is_python_module=False, verbose=verbose)
        write_record(library, part)
        print(f"neuinv: built {library} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        _loaded[part] = library
        _problems.pop(part, None)
        if part == "cpu":
            _register_fakes()
    finally:
        lock.release()
    return library


def _has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether neuinv::op exists and has a kernel for dispatch_key."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"neuinv::{op}", dispatch_key)
    except RuntimeError:  # the operator does not exist
        return False


def has_cuda_kernels() -> bool:
    """Whether the CUDA part is loaded (it holds a CUDA kernel for every operator)."""
    return load("cuda")


def status(part: str = "cpu") -> tuple[bool, str]:
    """(loaded, what is loaded from where, or why nothing is); never builds."""
    if load(part):
        record = read_record(_loaded[part]) or {}
        refused = "".join(f"; {reason}" for reason in _refused.get(part, ()))
        return True, f"compiled {part.upper()} kernels, {_loaded[part]} (built {record.get('built', '?')}){refused}"
    problem = build_problem(part)
    if problem is None and auto_build_allowed():
        return False, f"{_problems[part]}; built just in time on the first call that needs it"
    if problem is None:
        return False, f"{_problems[part]}; {AUTO_BUILD_ENV}=0: build with `neuinv build-ext`"
    return False, f"{_problems[part]}; {_not_built(part, problem)}"


def describe() -> list[str]:
    """The build of each part for `neuinv info`: what is loaded, from where, built for which torch, with which
    compiler, CUDA architectures and instruction set; or why nothing is."""
    lines = []
    for part in PARTS:
        loaded, reason = status(part)
        lines.append(f"{part} kernels: {reason}")
        if loaded:
            record = read_record(_loaded[part]) or {}
            details = [f"torch {record.get('torch')}", f"{record.get('machine')}", f"compiler: {record.get('compiler')}"]
            if part == "cpu":
                details.append(f"running: {torch.ops.neuinv.cpu_kernel_build()}")
            else:
                details += [f"nvcc: {record.get('nvcc')}", f"CUDA architectures: {record.get('cuda_arch_list')}"]
            lines.append("  " + "; ".join(details))
    return lines


def _register_fakes() -> None:
    """Shape-only implementations so torch.compile can trace code that calls the operators (contiguous outputs,
    as the kernels return)."""
    if getattr(_register_fakes, "done", False):
        return

    def same_device(operator, named):
        """The fakes also serve a call that mixes meta and real tensors (the meta kernel wins the dispatch): refuse
        it as the kernels refuse tensors on different devices."""
        devices = {name: tensor.device for name, tensor in named.items() if tensor is not None}
        if len(set(devices.values())) > 1:
            raise RuntimeError(f"{operator}: the tensors must be on one device, got "
                               + ", ".join(f"{name} on {device}" for name, device in devices.items()))

    @torch.library.register_fake("neuinv::invert")
    def _(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, positive_definite=False):
        same_device("invert", dict(A=A, X0=X0, use_guess=use_guess))
        batch = A.shape[:-2]
        return (A.new_empty(A.shape), A.new_empty(batch, dtype=torch.bool), A.new_empty(batch, dtype=torch.float64),
                A.new_empty(batch, dtype=torch.int32), A.new_empty(batch, dtype=torch.bool))

    @torch.library.register_fake("neuinv::invert.out")
    def _(A, X0, use_guess, refine, tol, accept, max_iter, guard, max_error, positive_definite=False, *, X,
          certified, error_bound, iterations, fallback):
        same_device("invert.out", dict(A=A, X0=X0, use_guess=use_guess, X=X, certified=certified,
                                       error_bound=error_bound, iterations=iterations, fallback=fallback))

    @torch.library.register_fake("neuinv::solve")
    def _(A, B, R=None, inverse_bound=None, positive_definite=False):
        same_device("solve", dict(A=A, B=B, R=R, inverse_bound=inverse_bound))
        if (R is None) != (inverse_bound is None):
            raise RuntimeError("solve: R and inverse_bound must be given together or both be None")
        if R is None and A.dim() == 3 and A.shape[-1] > 64:
            raise RuntimeError(f"solve: A holds {A.shape[-1]}x{A.shape[-1]} matrices; without R the kernels take "
                               f"n <= 64")
        if not (A.dim() == 3 and A.shape[1] == A.shape[2] and B.dim() == 3 and B.shape[1] == A.shape[1]
                and (B.shape[0] == A.shape[0] or 1 in (A.shape[0], B.shape[0]))
                and (R is None or (R.shape == A.shape and inverse_bound.shape == A.shape[:1]))):
            raise RuntimeError(f"solve: A (b, n, n), B (b, n, k), R like A and inverse_bound (b,) "
                               f"(A or B may have 1 in place of b), got {tuple(A.shape)}, {tuple(B.shape)}, "
                               f"{None if R is None else tuple(R.shape)}, "
                               f"{None if inverse_bound is None else tuple(inverse_bound.shape)}")
        b = B.shape[0] if A.shape[0] == 1 else A.shape[0]
        return B.new_empty((b, *B.shape[1:])), A.new_empty((b,), dtype=torch.float64)

    _register_fakes.done = True

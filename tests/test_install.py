"""The compiled kernels on a fresh machine (neuinv/extension.py): the just-in-time build on first use, once under a
file lock; the warning where they cannot be built; the refusal of a library built for another torch or from
other sources, and of a build cache that another user could have planted a library in. Each case runs in a fresh
process with its own cache folder (NEUINV_EXT_DIR)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from neuinv import extension

INVERT_AND_REPORT = """
import sys, warnings
warnings.simplefilter("always")
import torch, neuinv
from neuinv.backends import resolve_backend
from neuinv.testing import accurate_inverse
A = torch.randn(300, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(int(sys.argv[1])))
X, info = neuinv.batched_inverse_ex(A)
# "error": how far the relative error exceeds the certified bound, against an inverse refined to about eps (the
# bounds of ill-conditioned members lie below torch.linalg.inv's own error)
truth = accurate_inverse(A)
relative = torch.linalg.matrix_norm(X - truth) / torch.linalg.matrix_norm(truth)
error = max(float((relative - info.error_bound).max()), 0.0) if bool(info.certified.all()) else float("inf")
print("backend", resolve_backend("auto", A).name, "error", error)
"""

USER_CALL_LINE = next(number for number, line in enumerate(INVERT_AND_REPORT.split("\n"), 1)
                      if "neuinv.batched_inverse_ex(A)" in line)
"""The line of INVERT_AND_REPORT that calls neuinv: the line any warning of neuinv's must point at."""


def child_environment(env_changes: dict) -> dict:
    """This process's environment with env_changes, and without NEUINV_BACKEND (the child chooses by itself) or a
    NEUINV_AUTO_BUILD the case does not set (the child may build unless the case says otherwise)."""
    env = {key: value for key, value in os.environ.items() if key not in ("NEUINV_BACKEND", extension.AUTO_BUILD_ENV)}
    return {**env, **env_changes}


def run_python(code: str, env_changes: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=child_environment(env_changes), timeout=timeout)


def start_python(code: str, env_changes: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=child_environment(env_changes))


CPU_FOLDER = extension.jit_library("cpu").parent.name
"""The cache's folder for this checkout's CPU kernels (named by the part and the sources' digest)."""


def reported(output: str) -> tuple[str, float]:
    fields = output.split()
    return fields[fields.index("backend") + 1], float(fields[fields.index("error") + 1])


def seed_with_this_process_build(folder: Path) -> bool:
    """Copy the object files and ninja's logs of the just-in-time build this process runs on into `folder`, which
    then lacks only the library and its record: ninja links it instead of compiling (the suite's first call has
    compiled from an empty cache already). False, and nothing copied, where this process runs on no such build or
    on one compiled from another checkout's files (the same sources elsewhere: ninja would compile them again)."""
    if not extension.ensure("cpu"):
        return False
    built = extension._loaded["cpu"].parent
    if built != Path(os.path.realpath(extension.jit_library("cpu"))).parent:
        return False
    if f" {extension.source_directory() / 'neuinv_ops.cpp'}\n" not in (built / "build.ninja").read_text():
        return False
    for path in built.iterdir():
        if path.is_file() and (path.suffix == ".o" or path.name in ("build.ninja", ".ninja_log", ".ninja_deps")):
            shutil.copy2(path, folder / path.name)
    return True


def wait_for_line(child: subprocess.Popen, text: str, timeout: float) -> list[str]:
    """The lines of `child`'s stderr up to the first that contains `text` (fails after `timeout` seconds)."""
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter_until(child.stderr, text)), daemon=True)
    reader.start()
    reader.join(timeout)
    assert not reader.is_alive() and lines and text in lines[-1], "".join(lines)
    return lines


def iter_until(stream, text: str):
    for line in stream:
        yield line
        if text in line:
            return


@pytest.mark.skipif(extension.build_problem("cpu") is not None,
                    reason=f"the CPU kernels cannot be built here: {extension.build_problem('cpu')}")
def test_first_call_builds_the_kernels_once_under_a_lock_then_loads_them(tmp_path):
    """Two processes start while the cache's build lock is held (as by a third that is building): both wait; once
    it is free, one builds, the other waits for it and loads that build; both then invert on the compiled kernels;
    a fourth process loads the build without building. The cache holds the objects of this process's build, so
    the build links them rather than compiling again (a first call on an empty cache compiled them)."""
    from filelock import FileLock

    env = {"NEUINV_EXT_DIR": str(tmp_path), "NEUINV_AUTO_BUILD": "1"}
    folder = tmp_path / CPU_FOLDER
    folder.mkdir(mode=0o700)
    seeded = {path.name: path.stat().st_mtime_ns for path in folder.glob("*.o")} \
        if seed_with_this_process_build(folder) else {}
    lock = FileLock(str(folder / "build.lock"))
    lock.acquire()
    try:
        children = [start_python(INVERT_AND_REPORT, env, str(seed)) for seed in (1, 2)]
        early = ["".join(wait_for_line(child, "neuinv: waiting for another process", 600)) for child in children]
    finally:
        lock.release()
    outputs = [child.communicate(timeout=1800) for child in children]
    for child, (stdout, stderr) in zip(children, outputs):
        assert child.returncode == 0, stderr
        backend, error = reported(stdout)
        assert backend == "cpp" and error < 1e-12, stdout
    stderr = "".join(early) + "".join(err for _, err in outputs)
    assert stderr.count("neuinv: compiling the CPU kernels") == 1, stderr
    library = folder / "neuinv_cpu.so"
    record = json.loads((folder / "neuinv_cpu.json").read_text())
    assert record["torch"] == torch.__version__ and record["sources_sha256"] == extension.source_digest("cpu")
    assert record["library_sha256"] == hashlib.sha256(library.read_bytes()).hexdigest()
    assert library.parent.stat().st_mode & 0o777 == 0o700

    if seeded:
        assert {path.name: path.stat().st_mtime_ns for path in folder.glob("*.o")} == seeded, \
            "the build compiled again instead of linking the copied objects"

    later = run_python(INVERT_AND_REPORT, env, "3")
    assert later.returncode == 0, later.stderr
    assert reported(later.stdout)[0] == "cpp" and "compiling" not in later.stderr, later.stderr


def test_without_a_compiler_one_warning_says_what_is_lost_and_the_reference_path_runs(tmp_path):
    result = run_python(INVERT_AND_REPORT, {"NEUINV_EXT_DIR": str(tmp_path), "CXX": str(tmp_path / "no-such-c++")}, "1")
    assert result.returncode == 0, result.stderr
    backend, error = reported(result.stdout)
    assert backend == "torch" and error < 1e-12
    assert result.stderr.count("RuntimeWarning") == 1, result.stderr
    assert f"<string>:{USER_CALL_LINE}: RuntimeWarning" in result.stderr, "the warning must point at the user's call"
    assert "cannot be built here: no C++ compiler found" in result.stderr
    assert extension.PURE_TORCH_COST in result.stderr and "Install a C++ compiler" in result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be built without a compiler"


@pytest.mark.parametrize("dtype, n", [(torch.complex128, 6), (torch.float64, 65)])
def test_an_input_the_kernels_cannot_run_neither_builds_them_nor_warns(tmp_path, dtype, n):
    code = f"""
import warnings
warnings.simplefilter("always")
import torch, neuinv
A = torch.eye({n}, dtype={dtype}).expand(3, {n}, {n}) * 2
assert torch.equal(neuinv.batched_inverse(A), A / 4)
"""
    result = run_python(code, {"NEUINV_EXT_DIR": str(tmp_path), "CXX": "/bin/false"})
    assert result.returncode == 0, result.stderr
    assert "compiling" not in result.stderr and "Warning" not in result.stderr, result.stderr
    assert not any(tmp_path.iterdir())


def test_an_unwritable_cache_folder_is_named_in_the_warning(tmp_path):
    folder = tmp_path / "a-file"
    folder.write_text("not a folder")
    result = run_python(INVERT_AND_REPORT, {"NEUINV_EXT_DIR": str(folder / "cache")}, "1")
    assert result.returncode == 0, result.stderr
    assert reported(result.stdout)[0] == "torch"
    assert f"cannot write its folder {folder / 'cache'}" in result.stderr
    assert "point NEUINV_EXT_DIR at a writable folder" in result.stderr and extension.PURE_TORCH_COST in result.stderr


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_auto_build_switched_off_builds_nothing_and_says_so(tmp_path, value):
    result = run_python(INVERT_AND_REPORT, {"NEUINV_EXT_DIR": str(tmp_path), "NEUINV_AUTO_BUILD": value}, "1")
    assert result.returncode == 0, result.stderr
    assert reported(result.stdout)[0] == "torch"
    assert f"NEUINV_AUTO_BUILD={value} stops neuinv from building them" in result.stderr
    assert not any(tmp_path.iterdir())


REFUSAL = """
import json, sys
from neuinv import extension
calls = []
def build(part="cpu", verbose=False):
    calls.append(part)
    raise RuntimeError("the test's stand-in for the compiler")
extension.build = build
print(json.dumps(dict(loaded=extension.load("cpu"), status=extension.status("cpu")[1], ensured=extension.ensure("cpu"),
                      build_calls=calls)))
"""


@pytest.mark.skipif(not extension.ensure(), reason="needs a build of the CPU kernels to copy")
@pytest.mark.parametrize("field, value, reason", [
    ("torch", "2.0.0", f"it was built for torch 2.0.0, and this is torch {torch.__version__}"),
    ("sources_sha256", "0" * 64, "it was built from other neuinv sources or compiler flags"),
    ("machine", "riscv64", "it was built for riscv64"),
])
def test_a_library_built_for_another_torch_or_other_sources_is_refused_and_rebuilt(tmp_path, field, value, reason):
    """The library is never loaded (loading one built against another torch can crash the process); the status
    says why, and the just-in-time build is asked for."""
    library = extension._loaded["cpu"]
    target = tmp_path / CPU_FOLDER / "neuinv_cpu.so"
    target.parent.mkdir()
    shutil.copy(library, target)
    record = extension.read_record(library) or extension.build_record("cpu")
    record[field] = value
    (target.parent / "neuinv_cpu.json").write_text(json.dumps(record))

    result = run_python(REFUSAL, {"NEUINV_EXT_DIR": str(tmp_path), "NEUINV_AUTO_BUILD": "1"})
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["loaded"] is False and outcome["ensured"] is False
    assert f"{target} is not loaded: {reason}" in outcome["status"]
    assert outcome["build_calls"] == ["cpu"]
    assert f"neuinv: {target} is not loaded: {reason}" in result.stderr, "the rebuild must say why"
    assert "the just-in-time build failed (the test's stand-in for the compiler)" in result.stderr


@pytest.mark.parametrize("record, reason", [(None, "it has no build record"),
                                            ("{not json", "neuinv_cpu.json is unreadable")])
def test_a_library_without_a_readable_record_is_refused(tmp_path, record, reason):
    target = tmp_path / CPU_FOLDER / "neuinv_cpu.so"
    target.parent.mkdir()
    target.write_bytes(b"not a library")
    if record is not None:
        (target.parent / "neuinv_cpu.json").write_text(record)
    result = run_python(REFUSAL, {"NEUINV_EXT_DIR": str(tmp_path), "NEUINV_AUTO_BUILD": "1"})
    outcome = json.loads(result.stdout)
    assert outcome["loaded"] is False
    assert reason in outcome["status"]


def test_info_names_the_build_for_a_bug_report():
    from neuinv.cli import main

    if not extension.ensure():
        pytest.skip("the CPU kernels cannot be built here")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["info"]) == 0
    text = out.getvalue()
    record = extension.read_record(extension._loaded["cpu"])
    assert f"cpu kernels: compiled CPU kernels, {extension._loaded['cpu']}" in text
    assert f"torch {record['torch']}" in text and record["compiler"] in text
    assert "running: " in text
    assert all(f"  {name:7s}" in text for name in ("torch", "triton", "cpp", "cuda"))


def test_the_record_digest_covers_every_source_and_header():
    digest = extension.source_digest("cpu")
    names = {str(path.relative_to(extension.source_directory())) for path in
             extension.sources("cpu") + extension._headers("cpu")}
    assert {"neuinv_ops.cpp", "neuinv_checks.cpp", "neuinv_rules.h", "neuinv_checks.h", "cpu/invert_cpu.cpp",
            "cpu/invert_float.cpp", "cpu/invert_double.cpp", "cpu/invert_batch.h", "cpu/invert_range.h",
            "cpu/simd.h", "cpu/build_selection.h", "cpu/shares.h", "cpu/solve_cpu.cpp", "kernels/per_matrix.h",
            "kernels/arithmetic.h", "kernels/solve.h"} <= names
    assert len(digest) == 64 and digest != extension.source_digest("cuda")
    for header in ("cuda/neuinv_cuda_common.cuh", "kernels/per_matrix.h", "kernels/arithmetic.h"):
        assert Path(extension.source_directory() / header) in extension._headers("cuda")


def test_the_record_digest_covers_the_compiler_flags(monkeypatch):
    """A library built with other flags (-ffp-contract=on would break the error-free transformations) is rebuilt."""
    digest = extension.source_digest("cpu")
    extension.source_digest.cache_clear()
    monkeypatch.setattr(extension, "CXX_FLAGS", tuple(flag for flag in extension.CXX_FLAGS if flag != "-ffp-contract=off"))
    try:
        assert extension.source_digest("cpu") != digest
    finally:
        extension.source_digest.cache_clear()


PLANTED_SOURCE = """
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    FILE *mark = fopen(getenv("NEUINV_TEST_PLANTED"), "w");
    if (mark) fclose(mark);
}
"""
OTHER_UID = 4242
"""Another user's uid, for files chown'ed away (the tests that need it run as root)."""
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


@pytest.fixture(scope="module")
def planted_library(tmp_path_factory):
    """A shared library whose constructor creates the file $NEUINV_TEST_PLANTED: what another user would plant."""
    if extension.compiler() is None:
        pytest.skip("no C++ compiler to make the planted library")
    folder = tmp_path_factory.mktemp("planted")
    (folder / "planted.c").write_text(PLANTED_SOURCE)
    subprocess.run([extension.compiler(), "-x", "c", "-shared", "-fPIC", "-o", str(folder / "planted.so"),
                    str(folder / "planted.c")], check=True)
    return folder / "planted.so"


def plant(planted_library, cache):
    """The planted library in `cache`, with the record a build would write (matching torch, sources and bytes)."""
    target = cache / CPU_FOLDER / "neuinv_cpu.so"
    target.parent.mkdir(mode=0o700, parents=True)
    shutil.copy(planted_library, target)
    extension.write_record(target, "cpu")
    return target


def cache_env(tmp_path, cache):
    return {"NEUINV_EXT_DIR": str(cache), "NEUINV_AUTO_BUILD": "1", "NEUINV_TEST_PLANTED": str(tmp_path / "ran")}


def planted_cache(tmp_path, planted_library, how):
    """The planted library in tmp_path/shared/cache, loosened `how`: a mode for a path, or another user as its owner.
    Returns (the cache, the path loosened)."""
    cache = tmp_path / "shared" / "cache"
    folder = cache / CPU_FOLDER
    plant(planted_library, cache)
    path, change = {"group-writable folder": (folder, 0o770), "others-writable cache root": (cache, 0o757),
                    "sticky world-writable cache root": (cache, 0o1777),
                    "group-writable library": (folder / "neuinv_cpu.so", 0o775),
                    "shared world-writable parent": (cache.parent, 0o777),
                    "shared sticky parent": (cache.parent, 0o1777),
                    "folder owned by another user": (folder, OTHER_UID),
                    "library owned by another user": (folder / "neuinv_cpu.so", OTHER_UID),
                    "record owned by another user": (folder / "neuinv_cpu.json", OTHER_UID),
                    "private": (cache, None)}[how]
    if change == OTHER_UID:
        os.chown(path, OTHER_UID, -1)
    elif change is not None:
        path.chmod(change)
    return cache, path


@pytest.mark.parametrize("how, reason", [
    ("group-writable folder", "is writable by group (mode 0770), so another user could plant code there that neuinv "
                              "would run; chmod go-w {path}, or point NEUINV_EXT_DIR at a folder of your own"),
    ("others-writable cache root", "is writable by others (mode 0757)"),
    ("sticky world-writable cache root", "is writable by group and others (mode 1777), so another user could plant "
                                         "code there that neuinv would run; point NEUINV_EXT_DIR"),
    ("group-writable library", "is writable by group (mode 0775)"),
    ("shared world-writable parent", "is writable by group and others (mode 0777)"),
    pytest.param("folder owned by another user", f"is owned by uid {OTHER_UID}, not by this user", marks=needs_root),
    pytest.param("library owned by another user", f"is owned by uid {OTHER_UID}", marks=needs_root),
    pytest.param("record owned by another user", f"is owned by uid {OTHER_UID}", marks=needs_root),
])
def test_a_library_planted_in_a_cache_others_can_write_is_refused_and_nothing_is_built_there(
        tmp_path, planted_library, how, reason):
    """The library and its record match this torch, these sources and the library's bytes, as another user who can
    write to the cache would make them: its code never runs, the status names the path and the fix, and the
    just-in-time build does not build into that cache either."""
    cache, path = planted_cache(tmp_path, planted_library, how)
    result = run_python(REFUSAL, cache_env(tmp_path, cache))
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert not (tmp_path / "ran").exists(), "the planted library ran"
    assert outcome["loaded"] is False and outcome["ensured"] is False and outcome["build_calls"] == []
    assert f"is not loaded: the build cache is not private: {path} {reason.format(path=path)}" in outcome["status"]
    assert "cannot be built there either" in outcome["status"]
    assert f"{path} {reason.format(path=path)}" in result.stderr and "RuntimeWarning" in result.stderr


@pytest.mark.parametrize("how", ["private", "shared sticky parent"])
def test_a_library_in_a_private_cache_is_loaded(tmp_path, planted_library, how):
    """The control for the test above: the same planted library in a cache of this user's own, or in one inside a
    sticky folder such as /tmp (no one else can rename or remove what is ours there), is loaded: its code runs."""
    cache, _ = planted_cache(tmp_path, planted_library, how)
    result = run_python(REFUSAL, cache_env(tmp_path, cache))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ran").exists(), result.stdout
    assert "lacks neuinv::invert" in json.loads(result.stdout)["status"]


@needs_root
def test_a_file_another_user_left_in_the_build_folder_stops_the_build(tmp_path):
    """An object file another user left in the folder would be linked into the library: nothing is built there."""
    folder = tmp_path / "cache" / CPU_FOLDER
    folder.mkdir(mode=0o700, parents=True)
    (folder / "neuinv_ops.o").write_bytes(b"")
    os.chown(folder / "neuinv_ops.o", OTHER_UID, -1)
    result = run_python(REFUSAL, cache_env(tmp_path, tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["ensured"] is False and outcome["build_calls"] == []
    assert f"cannot be built here: the build cache is not private: {folder / 'neuinv_ops.o'} is owned by uid " \
           f"{OTHER_UID}" in outcome["status"]


@pytest.mark.parametrize("tamper, reason", [
    ("append", "its bytes do not match the SHA-256 in its build record {record}"),
    ("old record", "its build record {record} holds no SHA-256 of it (built by an older neuinv)"),
])
def test_a_library_whose_bytes_differ_from_its_record_is_refused_and_rebuilt(tmp_path, planted_library, tamper,
                                                                             reason):
    """A library changed after its record was written (bytes appended keep it loadable), or one with a record that
    holds no SHA-256, is never loaded; in a private cache the just-in-time build is asked for."""
    cache = tmp_path / "cache"
    target = plant(planted_library, cache)
    record = target.with_suffix(".json")
    if tamper == "append":
        with open(target, "ab") as library:
            library.write(b"\0")
    else:
        record.write_text(json.dumps({key: value for key, value in json.loads(record.read_text()).items()
                                      if key != "library_sha256"}))
    result = run_python(REFUSAL, cache_env(tmp_path, cache))
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert not (tmp_path / "ran").exists(), "the tampered library ran"
    assert f"{target} is not loaded: {reason.format(record=record)}" in outcome["status"]
    assert outcome["build_calls"] == ["cpu"]


@pytest.mark.parametrize("planted", [True, False])
def test_a_cache_others_can_write_falls_back_to_the_torch_path_and_info_and_build_ext_say_why(
        tmp_path, planted_library, planted):
    """With a library planted in a group-writable folder, or with an empty cache under a folder anyone may write to:
    one warning names the folder and the fix, the pure-torch path runs; `neuinv info` shows the refusal;
    `neuinv build-ext` refuses to build there and writes nothing."""
    cache = tmp_path / "cache" if planted else tmp_path / "shared" / "cache"
    loosened = cache / CPU_FOLDER if planted else cache.parent
    if planted:
        plant(planted_library, cache)
    loosened.mkdir(parents=True, exist_ok=True)
    loosened.chmod(0o777)
    before = sorted(tmp_path.rglob("*"))
    expected = f"{loosened} is writable by group and others (mode 0777)"
    env = cache_env(tmp_path, cache)

    result = run_python(INVERT_AND_REPORT, env, "1")
    assert result.returncode == 0, result.stderr
    assert reported(result.stdout)[0] == "torch"
    assert result.stderr.count("RuntimeWarning") == 1 and expected in result.stderr, result.stderr
    assert f"chmod go-w {loosened}, or point NEUINV_EXT_DIR at a folder of your own" in result.stderr
    assert extension.PURE_TORCH_COST in result.stderr and "compiling" not in result.stderr

    info = run_python("from neuinv.cli import main; main(['info'])", env)
    assert "cpu kernels: " in info.stdout and expected in info.stdout, info.stdout
    build_ext = run_python("import sys; from neuinv.cli import main; sys.exit(main(['build-ext', '--cpu-only']))", env)
    assert build_ext.returncode == 1, build_ext.stderr
    assert f"the CPU kernels cannot be built here: the build cache is not private: {expected}" in build_ext.stdout
    assert sorted(tmp_path.rglob("*")) == before and not (tmp_path / "ran").exists()


BUILD_WITH_A_STAND_IN_LINKER = """
import os
from pathlib import Path
from torch.utils import cpp_extension
from neuinv import extension
os.umask(0o002)  # a group-writable default, as on systems with a group per user
def load(name, sources, build_directory, **kwargs):
    library = Path(build_directory) / f"{name}.so"
    assert not library.exists(), "a refused library must be linked anew"
    library.write_bytes(b"linked by the stand-in")
    (Path(build_directory) / "neuinv_ops.o").write_bytes(b"")
cpp_extension.load = load
extension._register_fakes = lambda: None
print(extension.ensure("cpu"))
"""


def test_the_build_makes_private_folders_writes_nothing_others_can_change_and_records_the_library_hash(tmp_path):
    """Under a umask of 002, the build makes every missing folder with mode 0700 and writes nothing writable by group
    or others; the record holds the library's SHA-256; a library refused for its bytes is linked anew (a stand-in for
    cpp_extension.load writes the library)."""
    cache = tmp_path / "home" / "cache"
    env = {"NEUINV_EXT_DIR": str(cache), "CXX": sys.executable}  # the stand-in links; CXX only has to exist
    for run in range(2):
        result = run_python(BUILD_WITH_A_STAND_IN_LINKER, env)
        assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr
        library = cache / CPU_FOLDER / "neuinv_cpu.so"
        record = json.loads(library.with_suffix(".json").read_text())
        assert record["library_sha256"] == hashlib.sha256(b"linked by the stand-in").hexdigest()
        if run == 0:
            assert "is not loaded" not in result.stderr
            with open(library, "ab") as appended:
                appended.write(b"changed")
        else:
            assert "its bytes do not match the SHA-256" in result.stderr
    for folder in (tmp_path / "home", cache, cache / CPU_FOLDER):
        assert oct(folder.stat().st_mode & 0o777) == oct(0o700), folder
    for written in (cache / CPU_FOLDER).iterdir():
        assert not written.stat().st_mode & 0o022, written


@pytest.mark.skipif(torch.version.cuda is not None, reason="a CUDA build of torch would put the CUDA part in the "
                                                           "wheel too, and compile it where the cache lacks it")
def test_a_wheel_build_copies_the_just_in_time_build_instead_of_compiling(tmp_path):
    """NEUINV_BUILD_EXT=1 (setup.py) takes the cache's library for this torch, these sources and flags, with its
    record, byte for byte; the cache is left as it was."""
    built = Path(os.path.realpath(extension.jit_library("cpu")))
    if not (extension.ensure("cpu") and extension._loaded["cpu"] == built):
        pytest.skip(f"needs the CPU kernels built just in time in the cache ({extension.status('cpu')[1]})")
    before = {path.name: path.read_bytes() for path in built.parent.iterdir() if path.is_file()}
    result = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
                             "--build-temp", str(tmp_path / "temp")], cwd=Path(__file__).resolve().parents[1],
                            env={**child_environment({}), "NEUINV_BUILD_EXT": "1"}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"neuinv._C is the just-in-time build {built}" in result.stdout, result.stdout
    module = next((tmp_path / "lib" / "neuinv").glob("_C*.so"))
    assert module.read_bytes() == built.read_bytes()
    assert extension.read_record(module) == extension.read_record(built)
    assert {path.name: path.read_bytes() for path in built.parent.iterdir() if path.is_file()} == before

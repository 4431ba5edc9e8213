"""The compiled kernels on a fresh machine (neuinv/extension.py): the just-in-time build on first use, once under a
file lock; the warning where they cannot be built; the refusal of a library built for another torch or from
other sources. Each case runs in a fresh process with its own cache folder (NEUINV_EXT_DIR)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuinv import extension

INVERT_AND_REPORT = """
import sys, warnings
warnings.simplefilter("always")
import torch, neuinv
from neuinv.backends import resolve_backend
A = torch.randn(300, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(int(sys.argv[1])))
X = neuinv.batched_inverse(A)
error = float((X - torch.linalg.inv(A)).abs().max() / torch.linalg.inv(A).abs().max())
print("backend", resolve_backend("auto", A).name, "error", error)
"""


def child_environment(env_changes: dict) -> dict:
    """This process's environment with env_changes, and without NEUINV_BACKEND (the child chooses by itself)."""
    env = {**os.environ, **env_changes}
    env.pop("NEUINV_BACKEND", None)
    return env


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


@pytest.mark.skipif(extension.build_problem("cpu") is not None,
                    reason=f"the CPU kernels cannot be built here: {extension.build_problem('cpu')}")
def test_first_call_builds_the_kernels_once_under_a_lock_then_loads_them(tmp_path):
    """Two processes start at once on an empty cache: one compiles, the other waits for it; both then invert on
    the compiled kernels; a third process loads the build without compiling."""
    env = {"NEUINV_EXT_DIR": str(tmp_path), "NEUINV_AUTO_BUILD": "1"}
    children = [start_python(INVERT_AND_REPORT, env, str(seed)) for seed in (1, 2)]
    outputs = [child.communicate(timeout=900) for child in children]
    for child, (stdout, stderr) in zip(children, outputs):
        assert child.returncode == 0, stderr
        backend, error = reported(stdout)
        assert backend == "cpp" and error < 1e-12, stdout
    stderr = "".join(err for _, err in outputs)
    assert stderr.count("neuinv: compiling the CPU kernels") == 1, stderr
    assert "neuinv: waiting for another process" in stderr, stderr
    assert (tmp_path / CPU_FOLDER / "neuinv_cpu.so").exists()
    record = json.loads((tmp_path / CPU_FOLDER / "neuinv_cpu.json").read_text())
    assert record["torch"] == torch.__version__ and record["sources_sha256"] == extension.source_digest("cpu")

    third = run_python(INVERT_AND_REPORT, env, "3")
    assert third.returncode == 0, third.stderr
    assert reported(third.stdout)[0] == "cpp" and "compiling" not in third.stderr, third.stderr


def test_without_a_compiler_one_warning_says_what_is_lost_and_the_reference_path_runs(tmp_path):
    result = run_python(INVERT_AND_REPORT, {"NEUINV_EXT_DIR": str(tmp_path), "CXX": str(tmp_path / "no-such-c++")}, "1")
    assert result.returncode == 0, result.stderr
    backend, error = reported(result.stdout)
    assert backend == "torch" and error < 1e-12
    assert result.stderr.count("RuntimeWarning") == 1, result.stderr
    assert "<string>:7: RuntimeWarning" in result.stderr, "the warning must point at the user's call"
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
    ("sources_sha256", "0" * 64, "it was built from other neuinv sources"),
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
    assert {"neuinv_ops.cpp", "neuinv_checks.cpp", "neuinv_rules.h", "neuinv_checks.h", "cpu/neuinv_cpu.cpp"} <= names
    assert len(digest) == 64 and digest != extension.source_digest("cuda")
    assert Path(extension.source_directory() / "cuda" / "neuinv_cuda_common.cuh") in extension._headers("cuda")

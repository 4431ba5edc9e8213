"""pytest-benchmark cases on CI-sized inputs (run `pytest tests/test_benchmarks.py --benchmark-enable`).
With benchmarks disabled (the default here) each runs once as a correctness check; below them, the
accuracy check and the optional baselines of bench/throughput.py."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import neuinv
from conftest import conditioned_matrices, warm_start

CASES = [pytest.param(n, dtype, id=f"n{n}-{str(dtype)[6:]}") for n in (4, 16) for dtype in (torch.float32, torch.float64)]


@pytest.mark.parametrize("n, dtype", CASES)
def test_bench_torch_linalg_inv(benchmark, n, dtype):
    A = conditioned_matrices(2000, n, 100.0, dtype)
    assert benchmark(torch.linalg.inv, A).shape == A.shape


@pytest.mark.parametrize("n, dtype", CASES)
def test_bench_neuinv_exact(benchmark, n, dtype):
    A = conditioned_matrices(2000, n, 100.0, dtype)
    assert torch.allclose(benchmark(neuinv.batched_inverse, A), torch.linalg.inv(A), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("n, dtype", CASES)
def test_bench_neuinv_warm_start(benchmark, n, dtype):
    A = conditioned_matrices(2000, n, 100.0, dtype)
    init = warm_start(A, 1e-3)
    X = benchmark(lambda: neuinv.batched_inverse(A, init=init))
    assert torch.allclose(X, torch.linalg.inv(A), rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def throughput():
    """bench/throughput.py as a module."""
    path = Path(__file__).resolve().parents[1] / "bench" / "throughput.py"
    spec = importlib.util.spec_from_file_location("throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_reports_a_wrong_inverse_and_a_missing_package(throughput, monkeypatch, capsys, tmp_path):
    def methods(A, init, device):
        yield "torch.linalg.inv", lambda: torch.linalg.inv(A), 2
        yield "transposed baseline", lambda: torch.linalg.inv(A).mT, 2
        yield "missing baseline", throughput.not_installed("some-package"), 2
    monkeypatch.setattr(throughput, "methods", methods)
    throughput.main(["--device", "cpu", "--sizes", "3", "--dtypes", "float32", "--max-batch", "50", "--repeats", "1",
                     "--json", str(tmp_path / "out.json")])
    table = capsys.readouterr().out
    row = {line.split(" | ")[3]: line for line in table.splitlines() if line.startswith("| 3 |")}
    assert "**inaccurate**" in row["transposed baseline"] and "**inaccurate**" not in row["torch.linalg.inv"]
    assert "| missing baseline | not installed (pip install 'some-package') |" in row["missing baseline"]
    rows = {row["method"]: row for row in json.loads((tmp_path / "out.json").read_text())["rows"]}
    assert rows["torch.linalg.inv"]["accurate"] and not rows["transposed baseline"]["accurate"]
    assert "seconds" not in rows["missing baseline"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_closed_form_baseline_is_accurate_and_its_transpose_is_not(throughput, n, dtype):
    A = conditioned_matrices(500, n, throughput.COND, dtype, seed=n)
    truth = torch.linalg.inv(A.double())
    X = throughput.CLOSED_FORMS[n](A)
    assert X.dtype == dtype and throughput.max_relative_error(X, truth) <= throughput.accuracy_tolerance(n, dtype)
    assert throughput.max_relative_error(X.mT, truth) > throughput.accuracy_tolerance(n, dtype)


def test_optional_baselines_say_which_package_is_missing(throughput, monkeypatch):
    monkeypatch.setattr(throughput, "optional_module", lambda name: None)
    A = conditioned_matrices(10, 3, 10.0, torch.float64)
    assert throughput.warp_inverse(A) == "not installed (pip install 'warp-lang')"
    assert throughput.jax_inverse(A) == "not installed (pip install 'jax[cpu]')"
    assert throughput.cupy_inverse(A) == "not installed (pip install 'cupy-cuda13x')"


@pytest.mark.parametrize("package", ["warp", "jax"])
def test_installed_optional_baselines_invert(throughput, package):
    pytest.importorskip(package)
    for n in (2, 3, 4):
        for dtype in (torch.float32, torch.float64):
            A = conditioned_matrices(200, n, throughput.COND, dtype, seed=n)
            fn = (throughput.warp_inverse if package == "warp" else throughput.jax_inverse)(A)
            X = throughput.as_torch(fn(), A)
            assert X.dtype == dtype
            error = throughput.max_relative_error(X, torch.linalg.inv(A.double()))
            assert error <= throughput.accuracy_tolerance(n, dtype)


def test_solve_benchmark_runs_every_method(tmp_path, capsys, monkeypatch):
    """bench/solve.py on a tiny batch: every group and method gets a row with a time and an accurate result."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    path = Path(__file__).resolve().parents[1] / "bench" / "solve.py"
    spec = importlib.util.spec_from_file_location("solve_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--sizes", "3", "--dtypes", "float64", "--max-batch", "20", "--repeats", "1",
                 "--json", str(tmp_path / "solve.json")])
    data = json.loads((tmp_path / "solve.json").read_text())
    rows = data["rows"]
    solves = {"neuinv.batched_solve", "neuinv.batched_solve_ex", "neuinv.batched_solve_ex return_inverse",
              "torch.linalg.solve", "torch.linalg.solve_ex", "numpy.linalg.solve", "neuinv.batched_inverse @ B"} | (
        {"jax.jit(jnp.linalg.solve)"} if module.optional_module("jax") else set())
    expected = {("solve k=1", m) for m in solves} | {("solve k=8", m) for m in solves} | {
        ("SPD inverse", m) for m in ("neuinv.batched_inverse pos", "neuinv.batched_inverse gen",
                                     "torch.cholesky_inverse(cholesky)", "torch.linalg.inv")} | {
        ("SPD solve k=1", m) for m in ("neuinv.batched_solve pos", "neuinv.batched_solve gen",
                                       "torch.cholesky_solve(cholesky)", "torch.linalg.solve")}
    assert [(row["group"], row["method"]) for row in rows] and {(r["group"], r["method"]) for r in rows} == expected
    assert len(rows) == len(expected) and data["commit"] and data["threads"] >= 1
    assert all(row["seconds"] > 0 and row["max_relative_error"] < 1e-12 for row in rows)
    assert capsys.readouterr().out.count("| 3 | float64 | 20 |") == len(expected)
    flops_path = Path(__file__).resolve().parents[1] / "bench" / "solve_flops.py"
    flops_spec = importlib.util.spec_from_file_location("solve_flops", flops_path)
    flops = importlib.util.module_from_spec(flops_spec)
    flops_spec.loader.exec_module(flops)
    assert flops.main([str(tmp_path / "solve.json")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "float64" in line]
    counted = {m for m in solves if m in flops.LU_METHODS + flops.NEUINV_ONE_PASS}
    assert len(lines) == 2 * len(counted)  # one row per counted method and k
    assert all(float(line.split("|")[7]) > 0 for line in lines)  # a positive rate


@pytest.mark.skipif(not neuinv.available_backends()["cpp"].available, reason="the compiled operator is not built")
def test_spd_bench_runs_every_method(tmp_path, capsys):
    """bench/spd.py on a tiny batch: one row per method, with its times and an accurate inverse."""
    path = Path(__file__).resolve().parents[1] / "bench" / "spd.py"
    spec = importlib.util.spec_from_file_location("spd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        module.main(["--sizes", "3", "--dtypes", "float64", "--batch", "50", "--repeats", "1", "--threads", "1",
                     "--json", str(tmp_path / "spd.json")])
    finally:
        torch.set_num_threads(threads)
    rows = json.loads((tmp_path / "spd.json").read_text())["rows"]
    assert [row["method"] for row in rows] == ["neuinv pos", "neuinv general", "torch cholesky_inverse",
                                                "torch.linalg.inv"]
    assert all(row["max_relative_error"] < 1e-12 and row["cpu_us_per_matrix"] >= 0 for row in rows)
    assert "| 3 | float64 | 50 | neuinv pos |" in capsys.readouterr().out


@pytest.mark.skipif(not neuinv.available_backends()["cpp"].available, reason="the compiled operator is not built")
def test_per_call_bench_times_every_layer_and_draws_them(tmp_path, capsys, monkeypatch):
    """bench/per_call.py on a few calls: one row per method and dtype, with a time; bench/plots.py draws it, the
    neuinv bars split by the operators each call makes."""
    bench = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    modules = {}
    for name in ("per_call", "plots"):
        spec = importlib.util.spec_from_file_location(f"{name}_bench", bench / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    modules["per_call"].main(["--sizes", "3", "--rounds", "2", "--calls", "3", "--json", str(tmp_path / "calls.json")])
    rows = json.loads((tmp_path / "calls.json").read_text())["rows"]
    methods = {row["method"] for row in rows}
    assert len(rows) == 2 * len(methods) and all(row["us_per_call"] > 0 for row in rows)
    named = {name for names in modules["plots"].PER_CALL_OPERATORS.values() for name in names}
    assert named <= methods and set(modules["plots"].PER_CALL_OPERATORS) <= methods
    assert "| 3 | float64 | neuinv.batched_solve |" in capsys.readouterr().out
    written = modules["plots"].figures(tmp_path / "calls.json", tmp_path)
    assert [path.name for path in written] == ["calls-per-call.png"] and written[0].stat().st_size > 0


def test_tightness_bench_finds_no_violation(tmp_path, capsys):
    """bench/tightness.py on a tiny set: one row per dtype, family, operation and backend, no bound below the
    exact error, and each family's matrices in the dtype asked for."""
    path = Path(__file__).resolve().parents[1] / "bench" / "tightness.py"
    spec = importlib.util.spec_from_file_location("tightness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for family in module.FAMILIES:
        A = module.family_matrices(family, 3, 4, torch.complex64, seed=1)
        assert A.dtype == torch.complex64 and A.shape == (3, 4, 4) and bool(torch.isfinite(A).all())
    assert module.main(["--count", "2", "--sizes", "2", "3", "--dtypes", "float64", "complex64",
                        "--json", str(tmp_path / "tightness.json")]) == 0
    result = json.loads((tmp_path / "tightness.json").read_text())
    assert len(result["rows"]) == 2 * 4 * 3 * 2 and result["violations"] == []
    assert all(row["count"] == 4 and row["violations"] == 0 for row in result["rows"])
    assert "| float64 | graded | solve k=8 | torch | 4 |" in capsys.readouterr().out

"""Smoke test of an installed neuinv wheel built with NEUINV_BUILD_EXT=1, run outside the checkout with
NEUINV_AUTO_BUILD=0: the compiled CPU kernels load from the package with no build step, a batch (one singular
member) inverts correctly on them, and `neuinv info` names the build."""
import importlib.metadata
import os
import subprocess
from pathlib import Path

import torch

import neuinv
from neuinv import extension
from neuinv.backends import resolve_backend
from neuinv.testing import TRUTH_SLACK, accurate_inverse

assert "site-packages" in neuinv.__file__, f"neuinv comes from {neuinv.__file__}, not from the installed wheel"
version = importlib.metadata.version("neuinv")
assert version.endswith("+pt" + torch.__version__.split("+")[0].replace(".", "") + "cpu"), version

cpp = neuinv.available_backends()["cpp"]
assert cpp.available and "/neuinv/_C." in cpp.reason, cpp
A = torch.randn(1000, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
A[7, 1] = A[7, 0]
assert resolve_backend("auto", A).name == "cpp"
X, info = neuinv.batched_inverse_ex(A)
good = torch.arange(1000) != 7
truth = accurate_inverse(A[good])  # torch.linalg.inv refined to about eps: the bounds lie below its own error
relative_error = torch.linalg.matrix_norm(X[good] - truth) / torch.linalg.matrix_norm(truth)
assert bool(info.certified[good].all()) and float(relative_error.max()) < 1e-12, float(relative_error.max())
assert bool((relative_error <= info.error_bound[good] + TRUTH_SLACK).all())
assert not bool(info.certified[7]) and bool(X[7].isnan().all())

report = subprocess.run(["neuinv", "info"], capture_output=True, text=True, check=True).stdout
assert "cpu kernels: compiled CPU kernels" in report and "/neuinv/_C." in report, report
assert f"torch {torch.__version__}" in report, report
assert not Path(os.environ["NEUINV_EXT_DIR"]).exists(), "the wheel's kernels must load without a build"
print(f"wheel smoke test passed: neuinv {version}, torch {torch.__version__}")
print(report)

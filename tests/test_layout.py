"""The package layout: `import neuinv` loads only the core; the learned, sparse, distributed and Dask code load on
use."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import neuinv

ROOT = Path(__file__).resolve().parents[1]


def test_import_neuinv_loads_only_the_core():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    script = "import neuinv, sys; print(' '.join(sorted(m for m in sys.modules if m.startswith('neuinv'))))"
    loaded = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            check=True).stdout.split()
    assert {"neuinv", "neuinv.inverse", "neuinv.certificate"} <= set(loaded)
    heavy = ("neuinv.learned", "neuinv.sparse", "neuinv.kernels", "neuinv.cli", "neuinv.testing", "neuinv.distributed",
             "neuinv.dask")
    assert [name for name in loaded if name.startswith(heavy)] == []


def test_fit_and_load_pretrained_are_imported_lazily():
    from neuinv.learned import training

    assert neuinv.fit is training.fit and neuinv.load_pretrained is training.load_pretrained
    assert {"fit", "load_pretrained"} <= set(neuinv.__all__) <= set(dir(neuinv))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        neuinv.no_such_name


def test_the_checkpoints_live_in_the_learned_package():
    from importlib import resources

    from neuinv.learned.training import PRETRAINED

    for name in PRETRAINED:
        assert (resources.files("neuinv.learned") / "pretrained" / f"{name}.pt").is_file()

"""Build script; package metadata lives in pyproject.toml.

A plain install is pure Python: the compiled kernels are optional and built on request, just in time
with `neuinv build-ext`, or ahead of time with

    NEUINV_BUILD_EXT=1 pip install --no-build-isolation -e .

which compiles them into the module neuinv._C: the CPU kernels, plus the CUDA kernels when torch is a
CUDA build and a CUDA toolkit is found (neuinv/extension.py decides, the same way for both builds).
"""
import importlib.util
import os
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def extension_build():
    """(ext_modules, cmdclass) for the ahead-of-time build, or empty ones for a plain install."""
    if os.environ.get("NEUINV_BUILD_EXT", "0") != "1":
        return [], {}
    spec = importlib.util.spec_from_file_location("neuinv_extension", HERE / "neuinv" / "extension.py")
    extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension)  # only torch and the standard library: no need for neuinv's deps
    settings = extension.compile_settings()
    from torch.utils import cpp_extension

    sources = [os.path.relpath(path, HERE) for path in settings["sources"]]
    if settings["with_cuda"]:
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
        module = cpp_extension.CUDAExtension(
            "neuinv._C", sources, extra_link_args=settings["extra_ldflags"],
            extra_compile_args={"cxx": settings["extra_cflags"], "nvcc": settings["extra_cuda_cflags"]})
    else:
        module = cpp_extension.CppExtension("neuinv._C", sources, extra_link_args=settings["extra_ldflags"],
                                            extra_compile_args={"cxx": settings["extra_cflags"]})
    return [module], {"build_ext": cpp_extension.BuildExtension}


modules, commands = extension_build()
setup(ext_modules=modules, cmdclass=commands)

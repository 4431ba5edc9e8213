"""Build script; package metadata lives in pyproject.toml.

A plain install (wheel or editable) is pure Python: the first call that needs the compiled kernels builds them just
in time (neuinv/extension.py). For a wheel that carries them, build them ahead of time:

    NEUINV_BUILD_EXT=1 pip wheel --no-build-isolation --no-deps -w dist .

compiles the module neuinv._C (the CPU kernels) and, where torch is a CUDA build and a CUDA toolkit is found,
neuinv._C_cuda, each with its build record beside it (the torch it was built against, the sources' digest); the
wheel's version gets a local label naming that torch, as torch-scatter's wheels do (0.1.0+pt2141cu130). Under
another torch, neuinv refuses to load those modules and builds its kernels just in time instead. A part already
built just in time for this torch from these sources with these flags, and for the CUDA part these architectures
(`neuinv build-ext`, or a first call; in $NEUINV_EXT_DIR or the default cache, and passing the cache's ownership
checks), is copied into the wheel with its record instead of being compiled again: the library a first call builds,
compiled with neuinv's flags, not with Python's.
"""
import importlib.util
import os
import re
import shutil
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
NO_DEBUG = ["-g0"]
"""Python's own CFLAGS (which setuptools passes first) ask for debug information: 6x the module's size."""
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "neuinv" / "__init__.py").read_text(), re.M).group(1)


def load_extension_module():
    """neuinv/extension.py on its own (it needs only torch and the standard library, not neuinv's dependencies)."""
    spec = importlib.util.spec_from_file_location("neuinv_extension", HERE / "neuinv" / "extension.py")
    extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension)
    return extension


def torch_label(torch) -> str:
    """The local version label naming the torch build the modules are compiled against: pt2141cu130, pt2130cpu."""
    release = torch.__version__.split("+")[0].replace(".", "")
    return f"pt{release}" + (f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu")


def jit_build_problem(extension, built: Path, part: str) -> str | None:
    """Why the just-in-time build `built` (resolved) of `part` must not go into the wheel, or None: the checks of
    loading it (extension.jit_library_problem), and for the CUDA part the GPU architectures of this build."""
    if not built.exists():
        return "it does not exist"
    problem = extension.jit_library_problem(built, part)
    if problem is None and part == "cuda":
        built_for = extension.read_record(built).get("cuda_arch_list")
        wanted = extension.build_record("cuda")["cuda_arch_list"]
        if built_for != wanted:
            problem = f"it was built for the CUDA architectures {built_for}, not {wanted}"
    return problem


def extension_build():
    """(version, ext_modules, cmdclass): the ahead-of-time build with NEUINV_BUILD_EXT=1, else a plain install."""
    if os.environ.get("NEUINV_BUILD_EXT", "0") != "1":
        return VERSION, [], {}
    import torch
    from torch.utils import cpp_extension

    extension = load_extension_module()
    parts = {extension.PARTS[part].module: part for part in extension.PARTS
             if part == "cpu" or extension.cuda_build_problem() is None}
    modules = []
    for module, part in parts.items():
        settings = extension.compile_settings(part)
        sources = [os.path.relpath(path, HERE) for path in settings["sources"]]
        if settings["with_cuda"]:
            cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
            modules.append(cpp_extension.CUDAExtension(
                module, sources, extra_link_args=settings["extra_ldflags"],
                extra_compile_args={"cxx": settings["extra_cflags"] + NO_DEBUG, "nvcc": settings["extra_cuda_cflags"]}))
        else:
            modules.append(cpp_extension.CppExtension(module, sources, extra_link_args=settings["extra_ldflags"],
                                                      extra_compile_args={"cxx": settings["extra_cflags"] + NO_DEBUG}))

    class BuildExtensionWithRecord(cpp_extension.BuildExtension):
        """torch's BuildExtension, then the build record beside each module (neuinv.extension.write_record)."""

        def build_extension(self, ext):
            part, module = parts[ext.name], Path(self.get_ext_fullpath(ext.name))
            built = Path(os.path.realpath(extension.jit_library(part)))
            problem = jit_build_problem(extension, built, part)
            if problem is None:
                print(f"neuinv: {ext.name} is the just-in-time build {built} (this torch, these sources and flags)")
                module.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(built, module)
                shutil.copyfile(extension.record_path(built), extension.record_path(module))
                return
            if built.exists():
                print(f"neuinv: compiling {ext.name}: the just-in-time build {built} is not used, {problem}")
            super().build_extension(ext)
            extension.write_record(module, part)

    return f"{VERSION}+{torch_label(torch)}", modules, {"build_ext": BuildExtensionWithRecord}


version, modules, commands = extension_build()
setup(version=version, ext_modules=modules, cmdclass=commands)

"""Build script. Package metadata lives in pyproject.toml. The optional C++ extension (csrc/) is
compiled just in time by `neuinv build-ext` (neuinv/extension.py), not at install time."""
from setuptools import setup

setup()

"""Build script. Package metadata lives in pyproject.toml; this file is the place where
neuinv's optional compiled extension (csrc/) will be declared."""
from setuptools import setup

setup()

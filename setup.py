"""llmjepa's metadata (dependencies, extras, entry points, package layout) lives in pyproject.toml.

This shim only lets tools that still call `python setup.py` build the package."""

from setuptools import setup

setup()

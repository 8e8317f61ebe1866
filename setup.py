"""The compiled journal (``isolane.worker._journal``); everything else is in pyproject.toml.

The extension is optional: without a C compiler the build goes on and isolane uses the Python
journal (``isolane.worker.journal``), which behaves the same, more slowly.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("isolane.worker._journal", ["isolane/worker/_journal.c"],
                             optional=True, extra_compile_args=["-O2"])])

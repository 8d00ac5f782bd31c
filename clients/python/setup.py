"""Generates the gRPC stubs from ../../proto while the package is built."""

import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "_stubs", pathlib.Path(__file__).parent / "yilian" / "_stubs.py"
        )
        stubs = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(stubs)
        stubs.generate(out=pathlib.Path(self.build_lib))


setup(cmdclass={"build_py": BuildWithStubs})

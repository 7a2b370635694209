"""Build the Cython extensions of every package.

Metadata lives in pyproject.toml; this file only declares the compiled modules. Every
``.pyx`` file under a package becomes an extension module of the same dotted name, so a
package adds a compiled module by adding a file, not by editing this one.
"""
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

PACKAGES = ("microrpc", "nanolog", "breakwater", "proclets")
ROOT = Path(__file__).parent


def extensions():
    exts = []
    for package in PACKAGES:
        for pyx in sorted((ROOT / package).rglob("*.pyx")):
            rel = pyx.relative_to(ROOT).with_suffix("")
            exts.append(
                Extension(
                    ".".join(rel.parts),
                    [str(pyx.relative_to(ROOT))],
                    extra_compile_args=["-O2"],
                )
            )
    return exts


setup(
    ext_modules=cythonize(
        extensions(),
        language_level=3,
    ),
)

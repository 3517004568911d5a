"""The build of the optional C encoder ``changelog._speedups`` (changelog/_speedups.c, issue 17).

Everything else (name, version, dependencies, packages) is in setup.cfg. ``optional=True``: where
no C compiler or Python headers are found, the build goes on without it and
``changelog.pipeline.logformat`` uses its Python encoder, which gives the same bytes.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "changelog._speedups",
            ["changelog/_speedups.c"],
            depends=["changelog/_speedups_blake2b.h"],
            optional=True,
            extra_compile_args=["-O2", "-std=c11"],
        )
    ]
)

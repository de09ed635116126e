"""pip install --no-build-isolation .  — builds loom._C with CMake and installs the loom package.

No network: CMake, pybind11 and the compilers come from Debian's packages
(`make deps` installs them), and setuptools from python3-setuptools, which a
virtual environment made with --system-site-packages sees. LOOM_BUILD_DIR
names the CMake build directory (default build-python; pointing it at an
existing build, e.g. build, reuses what is built there).
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        out_dir = os.path.dirname(os.path.abspath(self.get_ext_fullpath(ext.name)))
        build_dir = os.path.abspath(os.environ.get("LOOM_BUILD_DIR", os.path.join(ROOT, "build-python")))
        jobs = os.environ.get("LOOM_JOBS", str(os.cpu_count() or 2))
        configure = ["cmake", "-S", ROOT, "-B", build_dir]
        if not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
            # A new build directory; an existing one keeps its settings.
            configure += ["-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}",
                          "-DLOOM_BUILD_TESTS=OFF"]
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", build_dir, "--target", "loom_python", "-j", jobs])
        # The build writes the module beside the package's sources (python/loom).
        built = glob.glob(os.path.join(ROOT, "python", "loom", "_C*.so"))
        if not built:
            raise RuntimeError("the CMake build did not produce python/loom/_C*.so")
        os.makedirs(out_dir, exist_ok=True)
        shutil.copy2(max(built, key=os.path.getmtime), self.get_ext_fullpath(ext.name))


setup(
    name="loom",
    version="0.1.0",
    description="loom: a deep learning system in C++20, with PyTorch's Python API",
    package_dir={"": "python"},
    packages=find_packages("python", include=["loom", "loom.*"]),
    ext_modules=[Extension("loom._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    # setuptools' scratch space, away from the CMake build directories.
    options={"build": {"build_base": os.path.join("build-python", "setuptools")}},
    python_requires=">=3.9",
    zip_safe=False,
)

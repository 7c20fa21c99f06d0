#!/usr/bin/env python
"""Prepare here what a lent GPU machine needs for the device checks, and say how to run them.

The GPU machines of this workplace (the ``device`` tool) run Python 3.12 with torch, lightning,
torch-geometric, numpy, scipy, pandas and more (:data:`DEVICE_HAS`, read from the tool's KINDS.md on
2026-11-17), but not matgl, ase, pymatgen, phonopy or symfc, and nothing can be fetched there. This
script, run here:

1. downloads the Python 3.12 manylinux wheels of :data:`ROOTS` (this environment's versions) and of
   every dependency that the machine lacks (``pip download --no-deps``, walking ``Requires-Dist``)
   into ``.devkit/whl``; optional dependencies that nothing imported by the checks needs
   (:data:`SKIP`: boto3/botocore, plotly, bibtexparser, sevenn's 41 MB wheel) stay out;
2. copies the base M3GNet (``../shared/models/M3GNet-MP-2021.2.8-PES``) into ``.devkit/models``;
3. writes a small fine-tuning data set (three shared DFT sets, as ``tests/test_finetune_train.py``)
   into ``.devkit/ft_dataset``;
4. checks the size (the working tree that travels is at most 64 MiB) and prints the call.

On the machine, one call of the ``device`` tool runs both GPU checks (about 3 minutes of device time
after the start; results come back under ``$OUT``)::

    run(command="bash benchmarks/device_checks.sh", carry=[".devkit"], timeout_s=480)

``benchmarks/device_checks.sh`` installs the wheels into ``/tmp/site``, runs
``benchmarks/device_checks.py`` (reproducibility of forces, Hessians and fine-tuning under
``deterministic_torch`` on CUDA) and ``benchmarks/hessian_routes.py --device cuda`` (issue 3).
``.devkit/`` is ignored by git.

    python benchmarks/device_kit.py [--kit .devkit]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TDPHONON_SHARED", ROOT.parent / "shared"))
#: what the checks import that the machine lacks (versions: this environment's)
ROOTS = ("matgl", "ase", "pymatgen-core", "phonopy", "symfc", "spglib", "monty", "orjson", "ruamel.yaml")
#: dependencies left out: not imported by the checks, or too large to travel
SKIP = ("boto3", "botocore", "s3transfer", "jmespath", "plotly", "bibtexparser", "sevenn", "torch")
#: the packages of the machines' image ("cuda"), from the device tool's KINDS.md (2026-11-17)
DEVICE_HAS = """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
    numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
    nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
    onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
    pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning
    pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
    sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
    tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers
    toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
    triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
    xxhash yarl zipp
""".split()
PYTHON = ("3.12", "3.12.3")
PLATFORMS = [*(f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)), "manylinux2014_x86_64",
             "manylinux1_x86_64"]
LIMIT_MB = 50  # leaves room for the repository itself under the 64 MiB that travel


def _canon(name: str) -> str:
    from packaging.utils import canonicalize_name

    return canonicalize_name(name)


def download(kit: Path) -> list[Path]:
    """The wheels of :data:`ROOTS` and their missing dependencies, into ``kit/whl``."""
    from packaging.requirements import Requirement

    whl = kit / "whl"
    whl.mkdir(parents=True, exist_ok=True)
    marker_env = {"python_version": PYTHON[0], "python_full_version": PYTHON[1], "sys_platform": "linux",
                  "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                  "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    have = {_canon(n) for n in DEVICE_HAS} | {_canon(n) for n in SKIP}
    queue, done, got = [Requirement(r) for r in ROOTS], set(), []
    while queue:
        req = queue.pop(0)
        name = _canon(req.name)
        if name in done or name in have:
            continue
        done.add(name)
        spec = str(req.specifier)
        try:  # the version tested here, when it satisfies the requirement
            local = metadata.version(req.name)
            if req.specifier.contains(local, prereleases=True):
                spec = f"=={local}"
        except metadata.PackageNotFoundError:
            pass
        plat = [x for p in PLATFORMS for x in ("--platform", p)]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", PYTHON[0], "--implementation", "cp", *plat, "-d", str(whl), f"{req.name}{spec}"]
        subprocess.run(cmd, check=True)
        wheel = next(p for p in whl.glob("*.whl") if _canon(p.name.split("-")[0]) == name)
        got.append(wheel)
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for line in z.read(meta).decode().splitlines():
                if line.startswith("Requires-Dist:"):
                    dep = Requirement(line.split(":", 1)[1].strip())
                    if dep.marker is None or dep.marker.evaluate(marker_env):
                        queue.append(dep)
        print(f"  {wheel.name} ({wheel.stat().st_size / 2**20:.1f} MiB)", flush=True)
    return got


def dataset(kit: Path) -> Path:
    """The three-set fine-tuning data set of the tests, written by ``tdphonon finetune dataset``."""
    out = kit / "ft_dataset"
    if out.exists():
        shutil.rmtree(out)
    sets = [SHARED / "reference" / "phonopy" / "test" / s for s in
            ("phonopy_params_Si.yaml", "phonopy_params_NaCl-fd.yaml.xz", "phonopy_params_Zr3N4.yaml")]
    subprocess.run([sys.executable, "-m", "tdphonon.cli", "finetune", "dataset", *map(str, sets), "--out", str(out),
                    "--n-random", "4", "--held-out", "phonopy_params_Zr3N4", "--val-fraction", "0.0"], check=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kit", default=str(ROOT / ".devkit"))
    args = ap.parse_args(argv)
    kit = Path(args.kit)
    print("wheels:", flush=True)
    download(kit)
    model = SHARED / "models" / "M3GNet-MP-2021.2.8-PES"
    dest = kit / "models" / model.name
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(model, dest)
    dataset(kit)
    size = sum(p.stat().st_size for p in kit.rglob("*") if p.is_file()) / 2**20
    print(f"{kit}: {size:.1f} MiB")
    if size > LIMIT_MB:
        print(f"more than {LIMIT_MB} MiB: the call would not travel; leave out more wheels (SKIP)")
        return 1
    print('device call: run(command="bash benchmarks/device_checks.sh", carry=[".devkit"], timeout_s=480)')
    return 0


if __name__ == "__main__":
    sys.exit(main())

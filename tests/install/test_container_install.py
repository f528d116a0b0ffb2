"""``pip install -e .`` inside NVIDIA's PyTorch container must keep the container's torch, TE and apex.

pip's real resolver decides, offline: a throwaway interpreter environment holds the container's torch,
Transformer Engine and apex (their ``*.dist-info`` metadata, versions as the image reports them), a
local wheel directory offers newer releases of everything (so pip *can* replace torch if the installed
one falls outside a range), and ``pip install --dry-run --report`` says what it would install for the
requirements in setup.py. megatron-core's wheels carry its real requirements (``torch>=2.6.0``, numpy,
packaging), because its range counts as much as ours.

The images and versions are the ones docs/cluster.md ("Container recipe") names.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]

# nvcr.io/nvidia/pytorch:25.09-py3, the documented image (megatron-core's LTS CI base image,
# docker/.ngc_version.lts in core_v0.16.1 and core_r0.19.0).
CONTAINER_25_09 = {
    "torch": "2.9.0a0+50eac811a6.nv25.09",
    "transformer_engine": "2.7.0",
    "apex": "0.1",
}
# nvcr.io/nvidia/pytorch:25.01-py3, the image the launcher used before: its torch is a pre-release of
# 2.6.0, below megatron-core's own torch>=2.6.0, so no range of ours can keep it.
CONTAINER_25_01 = {
    "torch": "2.6.0a0+ecf3bae40a.nv25.01",
    "transformer_engine": "1.14.0",
    "apex": "0.1",
}
CONTAINER_PACKAGES = {"torch", "transformer-engine", "apex"}

# What the wheel directory offers besides the lower bounds of every requirement: newer releases that
# pip would take if the installed ones did not satisfy a range (megatron-core 0.20.0 stands for an
# untested future release that setup.py's upper bound must keep out).
OFFERED = {
    "torch": ["2.14.1"],
    "transformer-engine": ["2.12.0"],
    "megatron-core": ["0.16.1", "0.19.2", "0.20.0"],
    "numpy": ["2.3.5"],
    "packaging": ["25.0"],
}
# megatron-core's runtime requirements (pyproject.toml `dependencies`, the same in core_v0.16.1 and
# core_r0.19.0).
MEGATRON_CORE_REQUIRES = ["torch>=2.6.0", "numpy", "packaging>=24.2"]


def setup_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """``install_requires`` and ``extras_require`` read from setup.py's source (no setuptools run)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"
    )
    kwargs = {
        k.arg: ast.literal_eval(k.value)
        for k in call.keywords
        if k.arg in ("install_requires", "extras_require")
    }
    return kwargs["install_requires"], kwargs["extras_require"]


def _lowest_admitted(spec: SpecifierSet) -> str:
    bounds = [s.version for s in spec if s.operator in (">=", "==", "~=")]
    assert bounds, f"requirement without a lower bound: {spec}"
    return max(bounds)


def _write_dist_info(site: Path, name: str, version: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


def _write_wheel(directory: Path, name: str, version: str, requires: list[str] = ()) -> None:
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    wheel = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    with zipfile.ZipFile(directory / f"{dist}-{version}-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{info}/METADATA", metadata)
        zf.writestr(f"{info}/WHEEL", wheel)
        zf.writestr(f"{info}/RECORD", "")


def _site_packages(env: Path) -> Path:
    out = subprocess.run(
        [str(env / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


def resolve_in_container(tmp_path: Path, container: dict[str, str], requirements: list[str]) -> dict:
    """pip's install report for ``requirements`` in an environment holding ``container``'s packages."""
    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env)
    site = _site_packages(env)
    for name, version in container.items():
        _write_dist_info(site, name, version)

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    offered = {name: list(versions) for name, versions in OFFERED.items()}
    for line in requirements:
        req = Requirement(line)
        offered.setdefault(canonicalize_name(req.name), []).append(_lowest_admitted(req.specifier))
    for name, versions in offered.items():
        for version in sorted(set(versions)):
            requires = MEGATRON_CORE_REQUIRES if name == "megatron-core" else []
            _write_wheel(wheels, name, version, requires)

    # This machine's pip settings (extra indexes, find-links, constraints) must not leak in.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    clean["PIP_CONFIG_FILE"] = os.devnull
    cmd = [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--dry-run"]
    cmd += ["--quiet", "--report", "-", "--no-index", "--find-links", str(wheels), *requirements]
    out = subprocess.run(cmd, capture_output=True, text=True, env=clean, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _installs(report: dict) -> dict[str, str]:
    return {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]
    }


@pytest.mark.slow
@pytest.mark.parametrize("extras", [[], ["gpu"]], ids=["plain", "gpu-extra"])
def test_install_in_the_documented_container_keeps_torch_te_and_apex(tmp_path, extras):
    install_requires, extras_require = setup_requirements()
    requirements = install_requires + [r for extra in extras for r in extras_require[extra]]
    installs = _installs(resolve_in_container(tmp_path, CONTAINER_25_09, requirements))
    assert not CONTAINER_PACKAGES & installs.keys(), installs
    # The resolver did pick the project's requirements, megatron-core at the newest tested release.
    assert installs["megatron-core"] == "0.19.2"
    assert "hydra-core" in installs


@pytest.mark.slow
def test_the_old_image_gets_its_torch_replaced(tmp_path):
    """The control: in 25.01, whose torch is 2.6.0a0+..., pip would install another torch (megatron-core
    itself asks for torch>=2.6.0), which is why the recipe names a newer image."""
    install_requires, _ = setup_requirements()
    installs = _installs(resolve_in_container(tmp_path, CONTAINER_25_01, install_requires))
    assert installs.get("torch") == "2.14.1"


def test_setup_states_the_tested_ranges():
    install_requires, extras_require = setup_requirements()
    specs = {canonicalize_name(Requirement(r).name): Requirement(r).specifier for r in install_requires}
    # The container's pre-release torch (and a stable torch) are inside; megatron-core's tested span is
    # 0.16.1 (requirements-dev.txt) to the release pinned in requirements-compat.txt.
    assert specs["torch"].contains(CONTAINER_25_09["torch"], prereleases=True)
    assert specs["torch"].contains("2.14.1")
    compat_pins = dict(
        line.split("==")
        for line in (ROOT / "requirements-compat.txt").read_text().splitlines()
        if "==" in line
    )
    dev_pins = dict(
        line.split("==") for line in (ROOT / "requirements-dev.txt").read_text().splitlines() if "==" in line
    )
    mcore = specs["megatron-core"]
    assert mcore.contains(dev_pins["megatron-core"]) and mcore.contains(compat_pins["megatron-core"])
    assert not mcore.contains("0.16.0") and not mcore.contains("0.20.0")
    te = Requirement(extras_require["gpu"][0])
    assert canonicalize_name(te.name) == "transformer-engine"
    assert te.specifier.contains(CONTAINER_25_09["transformer_engine"], prereleases=True)

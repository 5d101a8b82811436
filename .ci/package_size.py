"""Build what Lambda and the GPU task receive, offline, and check it against AWS's limits.

There is no Docker engine and no AWS account here, so each deployment artefact is rebuilt from the
same inputs the way its builder would build it:

* Zip functions (``CodeUri`` + ``Handler``): each python layer's requirements are installed with pip
  for CPython 3.12 on manylinux (``--platform manylinux_2_28_<arch> --platform manylinux2014_<arch>
  --only-binary=:all: --no-compile``), the layer and function sources are added the way ``sam build``
  copies them, and code plus layers must stay within Lambda's 250 MB unzipped.
* Container images (``PackageType: Image`` functions, and functions/heavy/Dockerfile for the GPU
  task): the Dockerfile is replayed. COPY takes files from the build context with .dockerignore
  applied; ``pip install`` runs with the Dockerfile's options plus ``--platform`` for the image's
  architecture (sdists it names are first built into wheels with ``pip wheel --no-deps``); ``rm``
  deletes from the layer being built, or only hides files of earlier layers, which still ship. All
  layers plus an allowance for the base image must stay within Lambda's 10 GB. Each image must also
  carry every model its manifest names (with the recorded sha256), no file whose licence forbids
  shipping it, and every shared library that its native code links against.

Where a python3.12 for this machine's architecture exists, image content is byte-compiled as pip
compiles it in the image build, and every handler is imported with nothing but its own layers or
its own image on the path (what Lambda's init does). Sizes go to docs/packaging.md.

Run through .ci/package-size.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import email.parser
import fnmatch
import hashlib
import importlib.util
import json
import mmap
import os
import platform
import posixpath
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
ZIP_LIMIT_BYTES = 262_144_000  # Lambda: 250 MiB unzipped, function code and all its layers together
IMAGE_LIMIT_BYTES = 10_000_000_000  # Lambda: 10 GB uncompressed image, base layers included
ARCHES = {"arm64": "aarch64", "x86_64": "x86_64"}  # template name -> pip's platform name
ARCH_NAMES = {pip_arch: name for name, pip_arch in ARCHES.items()}
PYTHON_VERSION = "3.12"
HEAVY_DOCKERFILE = "functions/heavy/Dockerfile"
HEAVY_NAME = "HeavyJob"
DOC = REPO / "docs" / "packaging.md"
BEGIN_MARK = "<!-- package-size:begin (written by .ci/package-size) -->"
END_MARK = "<!-- package-size:end -->"
# What aws-lambda-builders leaves out when it copies a python source folder (python_pip workflow).
SAM_EXCLUDES = (
    ".aws-sam", ".chalice", ".git", ".gitignore", "*.pyc", "__pycache__", "*.so", ".Python",
    "*.egg-info", "*.egg", "pip-log.txt", "pip-delete-this-directory.txt", "htmlcov", ".tox",
    ".nox", ".coverage", ".cache", ".pytest_cache", ".python-version", ".mypy_cache", ".dmypy.json",
    ".pyre", ".env", ".venv", "venv", "venv.bak", "env.bak", "ENV", "env", ".vscode", ".idea",
)  # fmt: skip
# A comment line in a layer's requirements.txt naming pyproject dependencies the layer leaves out
# on purpose (the model runtimes, which only the image functions run).
LEFT_OUT_DIRECTIVE = "# package-size: leaves out "
# Files that must ship in no layer of any image, whatever deletes them later.
FORBIDDEN_FILES = {
    "shape_predictor_68_face_landmarks.dat": "face_recognition_models' 68-landmark model is licensed for "
    "non-commercial use only",
}
# Native libraries that are never loaded in pixdex's use, so their link needs are not checked.
UNUSED_LIBRARIES = {
    "onnxruntime/capi/libonnxruntime_providers_tensorrt.so": "TensorRT provider: pixdex selects CUDA or CPU",
}

# Libraries every glibc Linux base provides (manylinux wheels may link them without bundling).
SYSTEM_LIBS = frozenset({
    "libc.so.6", "libm.so.6", "libmvec.so.1", "libpthread.so.0", "libdl.so.2", "librt.so.1",
    "libutil.so.1", "libresolv.so.2", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1",
    "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1",
})  # fmt: skip
# CUDA 12.x runtime and cuDNN 9 (nvidia/cuda:12.*-cudnn-runtime-*), and the driver library that the
# NVIDIA container runtime mounts into every GPU container.
CUDA12_LIBS = frozenset({
    "libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12", "libcufft.so.11", "libcurand.so.10",
    "libcusolver.so.11", "libcusparse.so.12", "libnvrtc.so.12", "libnvJitLink.so.12", "libcudnn.so.9",
    "libcuda.so.1",
})  # fmt: skip


class CheckError(Exception):
    """The packaging check cannot run or found an inconsistency (not a size overrun)."""


# ---------------------------------------------------------------- base images


@dataclass(frozen=True)
class BaseImage:
    env: Mapping[str, str]  # environment the base image sets that Dockerfiles use
    workdir: str
    arches: frozenset[str]  # pip architecture names the base image exists for
    libs: frozenset[str]  # shared libraries the base provides
    allowance: int | None  # bytes counted for the base against the limit; None: no limit applies
    lambda_python: bool  # a Lambda runtime image: the handler is imported from LAMBDA_TASK_ROOT
    apt: bool  # apt-get installs packages of the base's own distribution
    note: str


BASE_IMAGES: dict[str, BaseImage] = {
    "public.ecr.aws/lambda/python:3.12": BaseImage(
        env={"LAMBDA_TASK_ROOT": "/var/task", "LAMBDA_RUNTIME_DIR": "/var/runtime"},
        workdir="/var/task",
        arches=frozenset(ARCHES.values()),
        libs=SYSTEM_LIBS,
        allowance=1_000_000_000,
        lambda_python=True,
        apt=False,
        note="AWS's python3.12 base (Amazon Linux 2023) cannot be pulled here: 1 GB is allowed for it",
    ),
    "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04": BaseImage(
        env={},
        workdir="/",
        arches=frozenset({"x86_64", "aarch64"}),
        libs=SYSTEM_LIBS | CUDA12_LIBS,
        allowance=None,
        lambda_python=False,
        apt=True,
        note="CUDA 12.8 runtime with cuDNN 9 on Ubuntu 24.04; AWS Batch sets no image size limit",
    ),
}


# ---------------------------------------------------------------- template


@dataclass
class Layer:
    logical_id: str
    content_uri: Path
    build_method: str | None
    requirements: list[Requirement] = field(default_factory=list)
    requirements_text: str = ""
    left_out: set[str] = field(default_factory=set)  # canonical names


@dataclass
class Function:
    logical_id: str
    name: str  # folder name under functions/, also the name of its optional pyproject extra
    code_uri: Path
    handler: str
    layers: list[str]


@dataclass(frozen=True)
class ImageSpec:
    name: str
    dockerfile: Path
    context: Path
    arches: tuple[str, ...]  # template architecture names
    command: tuple[str, ...] = ()  # the template's ImageConfig.Command (Lambda images)
    model_dir: str | None = None  # the template's PIXDEX_MODEL_DIR for the function


@dataclass
class Measure:
    bytes: int
    packages: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def _load_cfn_yaml() -> Any:
    spec = importlib.util.spec_from_file_location("cfn_yaml", REPO / "tests" / "cfn_yaml.py")
    if spec is None or spec.loader is None:
        raise CheckError("tests/cfn_yaml.py not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ref(value: Any) -> str:
    if isinstance(value, dict) and isinstance(value.get("Ref"), str):
        return str(value["Ref"])
    raise CheckError(f"layer reference {value!r}: expected !Ref <LayerVersion>")


def read_requirements(path: Path, seen: frozenset[Path] = frozenset()) -> tuple[list[Requirement], str]:
    """Requirements of a pip requirements file, following ``-r`` includes; also the flattened text."""
    if path in seen:
        raise CheckError(f"{path}: -r include cycle")
    requirements: list[Requirement] = []
    text_parts: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            included = (path.parent / line.split(None, 1)[1]).resolve()
            reqs, text = read_requirements(included, seen | {path})
            requirements += reqs
            text_parts.append(text)
        elif line.startswith("-"):
            raise CheckError(f"{path}: option {line!r} is not supported by this check")
        else:
            requirements.append(Requirement(line))
            text_parts.append(line)
    return requirements, "\n".join(text_parts)


def read_left_out(path: Path) -> set[str]:
    """Names after the left-out directive (``# package-size: leaves out a b  (why)``)."""
    names: set[str] = set()
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.startswith(LEFT_OUT_DIRECTIVE):
            listed = raw[len(LEFT_OUT_DIRECTIVE) :].split("(", 1)[0]
            names.update(canonicalize_name(n) for n in listed.replace(",", " ").split())
    return names


def _template_env(template: Mapping[str, Any], props: Mapping[str, Any], name: str) -> Any:
    own = props.get("Environment", {}).get("Variables", {})
    if name in own:
        return own[name]
    return template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}).get(name)


def load_project(
    template_path: Path, arches: Sequence[str] = tuple(ARCHES)
) -> tuple[dict[str, Function], dict[str, Layer], list[ImageSpec]]:
    """Zip functions, their layers, and the images (image functions and the GPU task) to build."""
    template = _load_cfn_yaml().load_template(template_path)
    root = template_path.parent
    resources: dict[str, Any] = template["Resources"]
    global_fn = template.get("Globals", {}).get("Function", {})
    global_layers = [_ref(x) for x in global_fn.get("Layers", [])]
    layers: dict[str, Layer] = {}
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::LayerVersion":
            continue
        props = resource.get("Properties", {})
        content = root / str(props["ContentUri"])
        build_method = resource.get("Metadata", {}).get("BuildMethod")
        layer = Layer(logical_id, content, str(build_method) if build_method else None)
        requirements_file = content / "requirements.txt"
        if layer.build_method and layer.build_method.startswith("python") and requirements_file.is_file():
            layer.requirements, layer.requirements_text = read_requirements(requirements_file)
            layer.left_out = read_left_out(requirements_file)
        layers[logical_id] = layer
    functions: dict[str, Function] = {}
    images: list[ImageSpec] = []
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties", {})
        if props.get("PackageType", global_fn.get("PackageType")) == "Image":
            meta = resource.get("Metadata", {})
            if "Dockerfile" not in meta or "DockerContext" not in meta:
                raise CheckError(f"{logical_id}: an image function needs Metadata Dockerfile and DockerContext")
            context = (root / str(meta["DockerContext"])).resolve()
            command = props.get("ImageConfig", {}).get("Command", [])
            model_dir = _template_env(template, props, "PIXDEX_MODEL_DIR")
            images.append(
                ImageSpec(
                    logical_id,
                    context / str(meta["Dockerfile"]),
                    context,
                    tuple(arches),
                    tuple(str(c) for c in command),
                    model_dir if isinstance(model_dir, str) else None,
                )
            )
            continue
        if "CodeUri" not in props:
            continue  # inline code: a few kilobytes, no layers
        code = root / str(props["CodeUri"])
        function_layers = global_layers + [_ref(x) for x in props.get("Layers", [])]
        for layer_id in function_layers:
            if layer_id not in layers:
                raise CheckError(f"{logical_id}: layer {layer_id} is not an AWS::Serverless::LayerVersion")
        functions[logical_id] = Function(logical_id, code.name, code, str(props["Handler"]), function_layers)
    if not functions and not images:
        raise CheckError("template.yaml declares no functions with CodeUri or PackageType Image")
    if "x86_64" in arches and (root / HEAVY_DOCKERFILE).is_file():
        # The GPU instance types of the Batch compute environment are x86_64 only.
        images.append(ImageSpec(HEAVY_NAME, root / HEAVY_DOCKERFILE, root, ("x86_64",)))
    return functions, layers, images


def check_against_pyproject(
    functions: dict[str, Function], layers: dict[str, Layer], pyproject: Path = REPO / "pyproject.toml"
) -> list[str]:
    """Zip functions get pyproject's runtime dependencies (and their extra) through their layers.

    A layer may leave dependencies out only by naming them in its left-out directive; everything a
    layer installs must come from pyproject, pinned the same. (Images install the project itself, so
    pyproject is their list by construction.)
    """
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    base = [Requirement(x) for x in project.get("dependencies", [])]
    extras: dict[str, list[Requirement]] = {
        canonicalize_name(k): [Requirement(x) for x in v] for k, v in project.get("optional-dependencies", {}).items()
    }
    problems: list[str] = []
    for function in functions.values():
        provided: dict[str, Requirement] = {}
        left_out: set[str] = set()
        for layer_id in function.layers:
            left_out |= layers[layer_id].left_out
            for req in layers[layer_id].requirements:
                provided[canonicalize_name(req.name)] = req
        if function.code_uri.joinpath("requirements.txt").is_file():
            for req in read_requirements(function.code_uri / "requirements.txt")[0]:
                provided[canonicalize_name(req.name)] = req
        wanted = base + [
            req
            for req in extras.get(canonicalize_name(function.name), [])
            if canonicalize_name(req.name) != canonicalize_name(project["name"])  # an extra of other extras
        ]
        wanted_names = {canonicalize_name(r.name) for r in wanted}
        for req in wanted:
            name = canonicalize_name(req.name)
            got = provided.get(name)
            if got is None:
                # Only a shared dependency may be left out: an extra named after the function is its own.
                if name not in left_out or req not in base:
                    problems.append(f"{function.logical_id}: {req} (pyproject) is in none of its layers")
            elif got.specifier != req.specifier or got.extras != req.extras or got.marker != req.marker:
                problems.append(f"{function.logical_id}: layers pin {got}, pyproject says {req}")
        for extra_name in sorted(set(provided) - wanted_names):
            problems.append(
                f"{function.logical_id}: layers install {provided[extra_name]}, which pyproject does not list"
            )
        for stale in sorted(left_out - {canonicalize_name(r.name) for r in base}):
            problems.append(f"{function.logical_id}: a layer leaves out {stale}, which pyproject does not list")
        for both in sorted(left_out & set(provided)):
            problems.append(f"{function.logical_id}: {both} is both left out and installed by its layers")
    return problems


# ---------------------------------------------------------------- files and pip


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in SAM_EXCLUDES)


def iter_source_files(root: Path, skip: Iterable[str] = ()) -> Iterator[Path]:
    """Files ``sam build`` copies from a source folder (its exclude list applied at every level)."""
    skipped = set(skip)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _excluded(d))
        for name in sorted(filenames):
            if _excluded(name) or name in skipped:
                continue
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def package_sizes(target: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Bytes per installed distribution (from its RECORD) and the resolved versions."""
    sizes: dict[str, int] = {}
    versions: dict[str, str] = {}
    for dist_info in sorted(target.glob("*.dist-info")):
        name, _, version = dist_info.name[: -len(".dist-info")].partition("-")
        versions[name] = version
        total = 0
        record = dist_info / "RECORD"
        if record.is_file():
            for line in record.read_text(encoding="utf-8").splitlines():
                rel = line.split(",", 1)[0]
                path = target / rel
                if rel and path.is_file():
                    total += path.stat().st_size
        sizes[name] = total
    return sizes, versions


_locks_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}


def _lock(key: str) -> threading.Lock:
    """One lock per cache entry: two images that install the same set share one install."""
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


@dataclass
class Cache:
    root: Path
    refresh: bool = False
    python312: str | None = None  # byte-compiles image content as pip does in the image build
    used: set[Path] = field(default_factory=set)
    _refreshed: set[Path] = field(default_factory=set)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def entry(self, path: Path) -> bool:
        """Marks an entry used; True when it may be reused (it exists and --refresh did not drop it yet)."""
        with self._guard:
            self.used.add(path)
            if self.refresh and path not in self._refreshed:
                self._refreshed.add(path)
                return False
        return path.exists()

    def prune(self) -> list[Path]:
        """Removes entries this run did not use, so the cache stays the size of one run."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        keep = {p.resolve() for p in self.used}
        for group in (self.root, self.root / "wheels"):
            for entry in sorted(group.iterdir()) if group.is_dir() else []:
                if entry.name in ("wheels", "work") and group == self.root:
                    continue
                if entry.resolve() not in keep:
                    if entry.is_dir():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                    removed.append(entry)
        return removed


def pip_flags(arch: str) -> list[str]:
    return [
        "--platform", f"manylinux_2_28_{arch}", "--platform", f"manylinux2014_{arch}",
        "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
        "--no-compile",
    ]  # fmt: skip


def _run(cmd: Sequence[str], what: str) -> None:
    result = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CheckError(f"{what} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")


def pip_install(
    requirements: Sequence[str],
    arch: str,
    cache: Cache,
    *,
    find_links: Sequence[Path] = (),
    no_deps: bool = False,
    compile_bytecode: bool = False,
) -> Path:
    """Install requirements for Lambda python3.12/<arch> into a cached target folder."""
    flags = pip_flags(arch) + (["--no-deps"] if no_deps else [])
    links = [f"{p.name}/{w.name}" for p in find_links for w in sorted(p.glob("*.whl"))]
    compiler = cache.python312 if compile_bytecode else None
    material = "\n".join([*requirements, *flags, *links, f"compile={compiler is not None}"])
    key = hashlib.sha256(material.encode()).hexdigest()[:16]
    target = cache.root / f"{arch}-{key}"
    with _lock(str(target)):
        if cache.entry(target):
            return target
        if target.exists():
            shutil.rmtree(target)
        cache.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.root, prefix="work-") as tmp:
            req_file = Path(tmp) / "requirements.txt"
            req_file.write_text("\n".join(requirements) + "\n", encoding="utf-8")
            staging = Path(tmp) / "target"
            cmd = [
                sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                # --target ignores what this interpreter has installed; its conflict report is noise.
                "--no-warn-conflicts", *flags, "--target", str(staging), "-r", str(req_file),
            ]  # fmt: skip
            for link in find_links:
                cmd += ["--find-links", str(link)]
            _run(cmd, f"pip install for {arch}")
            if compiler is not None:
                # pip compiles what it installs in the image build; a file that does not compile
                # is skipped there too (pip only warns), so the exit status is not checked.
                subprocess.run(
                    [compiler, "-m", "compileall", "-q", "-j", "2", str(staging)],
                    capture_output=True,
                    check=False,
                )
            staging.rename(target)
    return target


def build_wheel(source: str, cache: Cache, material: str, *, from_sdist: bool) -> Path:
    """``pip wheel --no-deps`` of a project folder or an sdist requirement, cached by ``material``."""
    key = hashlib.sha256(material.encode()).hexdigest()[:16]
    out = cache.root / "wheels" / key
    with _lock(str(out)):
        if cache.entry(out) and len(list(out.glob("*.whl"))) == 1:
            return next(out.glob("*.whl"))
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.root, prefix="work-") as tmp:
            staging = Path(tmp) / "wheel"
            cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps"]
            if from_sdist:
                cmd.append("--no-binary=:all:")
            _run([*cmd, "-w", str(staging), source], f"pip wheel {source}")
            wheels = list(staging.glob("*.whl"))
            if len(wheels) != 1:
                raise CheckError(f"pip wheel {source} made {len(wheels)} wheels")
            staging.rename(out)
    return next(out.glob("*.whl"))


def wheel_metadata(wheel: Path) -> tuple[str, list[Requirement], set[str]]:
    """Name, Requires-Dist and Provides-Extra of a wheel."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        message = email.parser.Parser().parsestr(zf.read(name).decode("utf-8"))
    requires = [Requirement(r) for r in message.get_all("Requires-Dist") or []]
    extras: set[str] = {canonicalize_name(e) for e in message.get_all("Provides-Extra") or []}
    return str(message["Name"]), requires, extras


def marker_environment(arch: str, extra: str) -> dict[str, str]:
    return {
        "python_version": PYTHON_VERSION, "python_full_version": f"{PYTHON_VERSION}.0",
        "implementation_name": "cpython", "implementation_version": f"{PYTHON_VERSION}.0",
        "platform_python_implementation": "CPython", "platform_machine": arch, "platform_system": "Linux",
        "sys_platform": "linux", "os_name": "posix", "platform_release": "", "platform_version": "",
        "extra": extra,
    }  # fmt: skip


def project_dependencies(
    name: str, requires: Sequence[Requirement], extras: Iterable[str], arch: str
) -> list[Requirement]:
    """What pip installs for ``project[extras]``: markers evaluated, self-references expanded."""
    wanted = {""} | {canonicalize_name(e) for e in extras}  # "": what the project needs without extras
    done: set[str] = set()
    out: list[Requirement] = []
    while wanted - done:
        extra = sorted(wanted - done)[0]
        done.add(extra)
        for req in requires:
            if req.marker is not None and not req.marker.evaluate(marker_environment(arch, extra)):
                continue
            if canonicalize_name(req.name) == canonicalize_name(name):
                wanted |= {canonicalize_name(e) for e in req.extras}
                continue
            plain = Requirement(str(req))
            plain.marker = None
            if str(plain) not in {str(r) for r in out}:
                out.append(plain)
    return out


# ---------------------------------------------------------------- Dockerfiles


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments dropped as Docker drops them."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.strip().startswith("#") or (not parts and not raw.strip()):
            continue
        if not parts:
            start = number
        line = raw.rstrip()
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        keyword, _, value = " ".join(p.strip() for p in parts).strip().partition(" ")
        out.append(Instruction(keyword.upper(), value.strip(), start))
        parts = []
    if parts:
        raise CheckError(f"line {start}: the file ends inside a continued instruction")
    return out


_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def expand(text: str, variables: Mapping[str, str]) -> str:
    """``$NAME``, ``${NAME}``, ``${NAME:-word}`` and ``${NAME:+word}`` as Docker and sh expand them."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        value = variables.get(name, "")
        if match.group("op") == "-":
            return value or match.group("word")
        if match.group("op") == "+":
            return match.group("word") if value else ""
        return value

    return _VARIABLE.sub(replace, text)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's path patterns: ``*`` and ``?`` stay within a path segment, ``**`` crosses them."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out += re.escape(c)
            else:
                body = pattern[i + 1 : end]
                out += "[" + ("^" + body[1:] if body.startswith("!") else body) + "]"
                i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    """The build context's .dockerignore, matched as Docker matches it (a path or any of its parents)."""

    def __init__(self, text: str) -> None:
        self.patterns: list[tuple[bool, str, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            body = posixpath.normpath(line[1:].strip() if negated else line).lstrip("/")
            self.patterns.append((negated, body, _pattern_regex(body)))

    def excluded(self, rel: str) -> bool:
        parents = rel.split("/")
        candidates = ["/".join(parents[: i + 1]) for i in range(len(parents))]
        result = False
        for negated, _, regex in self.patterns:
            if any(regex.match(c) for c in candidates):
                result = not negated
        return result

    def may_include_below(self, rel_dir: str) -> bool:
        """Whether a negated pattern could re-include something under an excluded folder."""
        for negated, body, _ in self.patterns:
            if not negated:
                continue
            literal = re.split(r"[*?\[]", body, maxsplit=1)[0]
            if literal.startswith(rel_dir + "/") or (rel_dir + "/").startswith(literal) or literal == rel_dir:
                return True
        return False


def context_files(context: Path) -> dict[str, Path]:
    """Files of a build context that .dockerignore lets through, by context-relative path."""
    ignore_file = context / ".dockerignore"
    ignore = DockerIgnore(ignore_file.read_text(encoding="utf-8") if ignore_file.is_file() else "")
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(context):
        rel_dir = Path(dirpath).relative_to(context).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        kept = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if not ignore.excluded(rel) or ignore.may_include_below(rel):
                kept.append(d)
        dirnames[:] = kept
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = Path(dirpath) / name
            if not ignore.excluded(rel) and path.is_file() and not path.is_symlink():
                files[rel] = path
    return files


@dataclass(frozen=True)
class FileRef:
    host: Path
    size: int


class ImageFS:
    """An image's files as layers: what ships (every layer's additions) and what a container sees."""

    def __init__(self) -> None:
        self.visible: dict[str, FileRef] = {}
        self.layers: list[tuple[str, dict[str, FileRef]]] = []
        self.current: dict[str, FileRef] = {}

    def add(self, path: str, ref: FileRef) -> None:
        self.current[posixpath.normpath(path)] = ref

    def view(self) -> dict[str, FileRef]:
        return {**self.visible, **self.current}

    def remove(self, path: str) -> None:
        """Gone if this layer added it; hidden (still shipped in its layer) if an earlier one did."""
        self.current.pop(path, None)
        self.visible.pop(path, None)

    def commit(self, what: str) -> None:
        self.layers.append((what, self.current))
        self.visible.update(self.current)
        self.current = {}

    def shipped(self) -> Iterator[tuple[str, FileRef]]:
        for _, files in self.layers:
            yield from files.items()


def _glob_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in pattern) + r"\Z")


@dataclass
class PipCommand:
    target: str | None = None
    requirements: list[str] = field(default_factory=list)
    requirement_files: list[str] = field(default_factory=list)
    local: list[tuple[str, list[str]]] = field(default_factory=list)  # (image path, extras)
    only_binary: set[str] = field(default_factory=set)
    no_binary: set[str] = field(default_factory=set)
    no_deps: bool = False
    upgrade: bool = False
    compile: bool = True


_PIP_FLAGS = {
    "--no-cache-dir", "--disable-pip-version-check", "-q", "--quiet", "--no-warn-script-location",
    "--no-input", "--no-warn-conflicts", "--root-user-action=ignore",
}  # fmt: skip
_PIP_VALUE_OPTIONS = {"--only-binary", "--no-binary", "--target", "-t", "--requirement", "-r"}
_LOCAL_REQUIREMENT = re.compile(r"^(?P<path>[./][^\[\]]*)(?:\[(?P<extras>[^\]]*)\])?$")


def parse_pip_install(args: Sequence[str], workdir: str) -> PipCommand:
    cmd = PipCommand()
    i = 0
    while i < len(args):
        arg = args[i]
        option, eq, inline = arg.partition("=")
        if arg in _PIP_FLAGS:
            pass
        elif arg == "--no-deps":
            cmd.no_deps = True
        elif arg in ("-U", "--upgrade"):
            cmd.upgrade = True
        elif arg in ("--no-compile", "--compile"):
            cmd.compile = arg == "--compile"
        elif option in _PIP_VALUE_OPTIONS:
            if eq:
                value = inline
            else:
                i += 1
                if i == len(args):
                    raise CheckError(f"pip option {arg} needs a value")
                value = args[i]
            if option in ("--target", "-t"):
                cmd.target = posixpath.join(workdir, value)
            elif option in ("--requirement", "-r"):
                cmd.requirement_files.append(posixpath.join(workdir, value))
            else:
                names = {":all:" if n == ":all:" else canonicalize_name(n) for n in value.split(",") if n}
                (cmd.only_binary if option == "--only-binary" else cmd.no_binary).update(names)
        elif arg.startswith("-"):
            raise CheckError(f"pip option {arg} is not replayed offline: teach .ci/package_size.py about it")
        elif match := _LOCAL_REQUIREMENT.match(arg):
            extras = [e.strip() for e in (match.group("extras") or "").split(",") if e.strip()]
            cmd.local.append((posixpath.join(workdir, match.group("path")), extras))
        else:
            cmd.requirements.append(arg)
        i += 1
    return cmd


@dataclass
class ImageResult:
    name: str
    arch: str
    base_ref: str
    base: BaseImage
    fs: ImageFS
    env: dict[str, str]
    cmd: list[str]
    apt_packages: list[str]
    pip_targets: list[str]
    problems: list[str] = field(default_factory=list)
    packages: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def shipped_bytes(self) -> int:
        return sum(ref.size for _, ref in self.fs.shipped())

    @property
    def visible_bytes(self) -> int:
        return sum(ref.size for ref in self.fs.visible.values())

    @property
    def total_bytes(self) -> int:
        return self.shipped_bytes + (self.base.allowance or 0)

    def python_roots(self) -> list[str]:
        roots = [self.env["LAMBDA_TASK_ROOT"]] if self.base.lambda_python else []
        return roots + [p for p in self.env.get("PYTHONPATH", "").split(":") if p]

    def bytes_under(self, prefix: str) -> int:
        return sum(ref.size for path, ref in self.fs.visible.items() if path.startswith(prefix.rstrip("/") + "/"))


class ImageReplay:
    """Replays one Dockerfile for one architecture into an ImageFS."""

    def __init__(
        self,
        spec: ImageSpec,
        arch: str,
        cache: Cache,
        build_args: Mapping[str, str] | None = None,
        *,
        install: bool = True,
    ):
        self.spec = spec
        self.arch = arch  # pip architecture name
        self.cache = cache
        self.build_args = dict(build_args or {})
        # False: RUN lines are parsed and checked but pip installs nothing (no network needed).
        self.install = install
        self.pip_commands: list[PipCommand] = []
        self.where = spec.dockerfile.relative_to(spec.context).as_posix()
        self.fs = ImageFS()
        self.env: dict[str, str] = {}
        self.args: dict[str, str] = {}
        self.base_ref = ""
        self.base: BaseImage | None = None
        self.workdir = "/"
        self.cmd: list[str] = []
        self.apt_packages: list[str] = []
        self.pip_targets: list[str] = []
        self._context: dict[str, Path] | None = None

    def fail(self, line: int, message: str) -> CheckError:
        return CheckError(f"{self.where}:{line}: {message}")

    @property
    def context(self) -> dict[str, Path]:
        if self._context is None:
            self._context = context_files(self.spec.context)
        return self._context

    def run(self) -> ImageResult:
        instructions = parse_dockerfile(self.spec.dockerfile.read_text(encoding="utf-8"))
        global_args: dict[str, str] = {}
        for ins in instructions:
            handler = getattr(self, f"do_{ins.keyword.lower()}", None)
            if ins.keyword == "ARG":
                self.do_arg(ins, global_args if self.base is None else self.args, global_args)
            elif ins.keyword == "FROM":
                self.do_from(ins, global_args)
            elif self.base is None:
                raise self.fail(ins.line, f"{ins.keyword} before FROM")
            elif ins.keyword in ("LABEL", "USER", "EXPOSE", "STOPSIGNAL", "HEALTHCHECK"):
                continue
            elif handler is None:
                raise self.fail(ins.line, f"{ins.keyword} is not replayed offline: teach .ci/package_size.py")
            else:
                handler(ins)
        if self.base is None:
            raise CheckError(f"{self.where}: no FROM")
        return ImageResult(
            self.spec.name, self.arch, self.base_ref, self.base, self.fs, self.env, self.cmd,
            self.apt_packages, self.pip_targets,
        )  # fmt: skip

    def variables(self) -> dict[str, str]:
        return {**self.args, **self.env}

    def do_arg(self, ins: Instruction, scope: dict[str, str], global_args: Mapping[str, str]) -> None:
        for token in shlex.split(ins.value):
            name, eq, default = token.partition("=")
            if name in self.build_args:
                scope[name] = self.build_args[name]
            elif eq:
                scope[name] = expand(default, {**global_args, **scope, **self.env})
            else:
                scope[name] = global_args.get(name, "")

    def do_from(self, ins: Instruction, global_args: Mapping[str, str]) -> None:
        if self.base is not None:
            raise self.fail(ins.line, "multi-stage builds are not replayed offline")
        tokens = [t for t in expand(ins.value, global_args).split() if not t.startswith("--platform")]
        ref = tokens[0]
        base = BASE_IMAGES.get(ref)
        if base is None:
            raise self.fail(ins.line, f"base image {ref} is unknown: add its environment and libraries to BASE_IMAGES")
        if self.arch not in base.arches:
            raise self.fail(ins.line, f"{ref} does not exist for {self.arch}")
        self.base_ref, self.base = ref, base
        self.env = dict(base.env)
        self.workdir = base.workdir

    def do_env(self, ins: Instruction) -> None:
        tokens = shlex.split(ins.value)
        before = self.variables()  # one ENV line sees the values from before it, as in Docker
        if tokens and "=" not in tokens[0]:
            self.env[tokens[0]] = expand(ins.value.split(None, 1)[1], before)
            return
        for token in tokens:
            name, _, value = token.partition("=")
            self.env[name] = expand(value, before)

    def do_workdir(self, ins: Instruction) -> None:
        self.workdir = posixpath.join(self.workdir, expand(ins.value, self.variables()))

    def do_cmd(self, ins: Instruction) -> None:
        self.cmd = json.loads(ins.value) if ins.value.startswith("[") else ["/bin/sh", "-c", ins.value]

    def do_entrypoint(self, ins: Instruction) -> None:
        raise self.fail(ins.line, "ENTRYPOINT: AWS Batch and Lambda replace CMD; keep the program in CMD")

    def do_copy(self, ins: Instruction) -> None:
        value = ins.value
        tokens = json.loads(value) if value.startswith("[") else value.split()
        flags = [t for t in tokens if t.startswith("--")]
        for flag in flags:
            if not flag.startswith("--chown="):
                raise self.fail(ins.line, f"COPY {flag} needs BuildKit (sam build --use-buildkit)")
        *sources, dest = [expand(t, self.variables()) for t in tokens if not t.startswith("--")]
        if not sources:
            raise self.fail(ins.line, "COPY needs a source and a destination")
        dest_path = posixpath.join(self.workdir, dest)
        into_dir = dest.endswith("/") or len(sources) > 1
        for source in sources:
            rel = posixpath.normpath(source).lstrip("/")
            if rel == ".":
                rel = ""
            if any(c in rel for c in "*?["):
                into_dir = True
                regex = _glob_regex(rel)
                names = {r for r in self.context if regex.match(r)}
                names |= {d for r in self.context for d in _parents(r) if regex.match(d)}
                if not names:
                    raise self.fail(ins.line, f"COPY {source}: nothing in the build context matches")
            else:
                names = {rel}
            for name in sorted(names):
                self._copy_one(ins, name, dest_path, into_dir)
        self.fs.commit(f"COPY {value}")

    def _copy_one(self, ins: Instruction, rel: str, dest: str, into_dir: bool) -> None:
        if rel in self.context:
            target = posixpath.join(dest, posixpath.basename(rel)) if into_dir else dest
            host = self.context[rel]
            self.fs.add(target, FileRef(host, host.stat().st_size))
            return
        prefix = f"{rel}/" if rel else ""
        below = {r: p for r, p in self.context.items() if r.startswith(prefix)}
        if not below:
            raise self.fail(ins.line, f"COPY {rel}: not in the build context (missing, or left out by .dockerignore)")
        for r, host in below.items():
            self.fs.add(posixpath.join(dest, r[len(prefix) :]), FileRef(host, host.stat().st_size))

    def do_run(self, ins: Instruction) -> None:
        if ins.value.startswith("[") or ins.value.startswith("--") or "<<" in ins.value:
            raise self.fail(ins.line, "RUN: only the shell form without BuildKit options or heredocs is replayed")
        lexer = shlex.shlex(expand(ins.value, self.variables()), posix=True, punctuation_chars="&|;")
        lexer.whitespace_split = True
        commands: list[list[str]] = [[]]
        for token in lexer:
            if token == "&&":  # noqa: S105  # a shell operator, not a password
                commands.append([])
            elif set(token) <= set("&|;"):
                raise self.fail(ins.line, f"RUN: {token!r} is not replayed offline; chain commands with &&")
            else:
                commands[-1].append(token)
        for argv in commands:
            if not argv:
                raise self.fail(ins.line, "RUN: empty command")
            self._run_command(ins, argv)
        self.fs.commit(f"RUN {ins.value[:60]}")

    def _run_command(self, ins: Instruction, argv: list[str]) -> None:
        program = argv[0].rsplit("/", 1)[-1]
        if program in ("pip", "pip3") and argv[1:2] == ["install"]:
            self._pip(ins, argv[2:])
        elif re.fullmatch(r"python(3(\.\d+)?)?", program) and argv[1:4] == ["-m", "pip", "install"]:
            self._pip(ins, argv[4:])
        elif program == "rm":
            self._rm(ins, argv[1:])
        elif program == "apt-get" and self.base is not None and self.base.apt:
            if "install" in argv:
                self.apt_packages += [a for a in argv[argv.index("install") + 1 :] if not a.startswith("-")]
        else:
            raise self.fail(ins.line, f"RUN {program} is not replayed offline: teach .ci/package_size.py")

    def _rm(self, ins: Instruction, args: list[str]) -> None:
        flags = "".join(a[1:] for a in args if a.startswith("-"))
        if set(flags) - set("rfR"):
            raise self.fail(ins.line, f"rm -{flags}: only -r and -f are replayed")
        view = self.fs.view()
        nodes = set(view) | {d for p in view for d in _parents(p.lstrip("/"), absolute=True)}
        for pattern in (a for a in args if not a.startswith("-")):
            pattern = posixpath.join(self.workdir, pattern)
            regex = _glob_regex(pattern)
            matched = sorted(n for n in nodes if regex.match(n))
            if not matched and "f" not in flags and any(pattern.startswith(n + "/") for n in nodes):
                raise self.fail(ins.line, f"rm {pattern}: no such file (the build would fail)")
            for node in matched:
                if node not in view and not set(flags) & set("rR"):
                    raise self.fail(ins.line, f"rm {node}: is a directory (needs -r)")
                for path in [p for p in view if p == node or p.startswith(node + "/")]:
                    self.fs.remove(path)

    def _pip(self, ins: Instruction, args: list[str]) -> None:
        cmd = parse_pip_install(args, self.workdir)
        if cmd.target is None:
            raise self.fail(
                ins.line, "pip install without --target: the replay cannot see the base image's site-packages"
            )
        if ":all:" not in cmd.only_binary:
            raise self.fail(ins.line, "pip install needs --only-binary=:all: (no compiler in the image; replayable)")
        self.pip_commands.append(cmd)
        if not self.install:
            return
        view = self.fs.view()
        specs: list[Requirement] = [Requirement(r) for r in cmd.requirements]
        for image_path in cmd.requirement_files:
            ref = view.get(posixpath.normpath(image_path))
            if ref is None:
                raise self.fail(ins.line, f"pip -r {image_path}: not in the image")
            specs += read_requirements(ref.host)[0]
        project_wheels: list[Path] = []
        for image_path, extras in cmd.local:
            wheel = self._project_wheel(ins, posixpath.normpath(image_path), view)
            name, requires, provided = wheel_metadata(wheel)
            unknown = sorted({canonicalize_name(e) for e in extras} - provided)
            if unknown:
                # pip only warns about an extra the project lacks, and the image misses its packages.
                raise self.fail(ins.line, f"{name} has no extra {', '.join(unknown)}")
            if not cmd.no_deps:
                specs += project_dependencies(name, requires, extras, self.arch)
            project_wheels.append(wheel)
        links: list[Path] = []
        for sdist in sorted(cmd.no_binary - {":all:"}):
            found = [s for s in specs if canonicalize_name(s.name) == sdist]
            if not found:
                raise self.fail(ins.line, f"--no-binary {sdist}: not a direct requirement, which the replay needs")
            wheel = build_wheel(str(found[0]), self.cache, f"sdist\n{found[0]}", from_sdist=True)
            links.append(wheel.parent)
        compile_bytecode = cmd.compile
        results: list[Path] = []
        if specs:
            results.append(
                pip_install(
                    [str(s) for s in specs],
                    self.arch,
                    self.cache,
                    find_links=links,
                    no_deps=cmd.no_deps,
                    compile_bytecode=compile_bytecode,
                )
            )
        for wheel in project_wheels:
            results.append(
                pip_install([str(wheel)], self.arch, self.cache, no_deps=True, compile_bytecode=compile_bytecode)
            )
        installed: dict[str, FileRef] = {}
        for result in results:
            for path in sorted(result.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    installed[path.relative_to(result).as_posix()] = FileRef(path, path.stat().st_size)
        target = posixpath.normpath(cmd.target)
        existing = {p[len(target) + 1 :].split("/", 1)[0] for p in view if p.startswith(target + "/")}
        for rel, ref in installed.items():
            top = rel.split("/", 1)[0]
            if top in existing and not cmd.upgrade:
                continue  # pip --target keeps what is there ("Target directory ... already exists")
            self.fs.add(f"{target}/{rel}", ref)
        if target not in self.pip_targets:
            self.pip_targets.append(target)

    def _project_wheel(self, ins: Instruction, image_path: str, view: Mapping[str, FileRef]) -> Path:
        """Builds the wheel of a project folder in the image (as pip would) from its files there."""
        files = {p[len(image_path) + 1 :]: ref for p, ref in view.items() if p.startswith(image_path + "/")}
        if "pyproject.toml" not in files:
            raise self.fail(ins.line, f"pip install {image_path}: no pyproject.toml there")
        digest = hashlib.sha256()
        for rel in sorted(files):
            digest.update(rel.encode() + b"\0" + files[rel].host.read_bytes() + b"\0")
        self.cache.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache.root, prefix="work-") as tmp:
            for rel, ref in files.items():
                place(ref.host, Path(tmp) / "src" / rel)
            return build_wheel(str(Path(tmp) / "src"), self.cache, f"project\n{digest.hexdigest()}", from_sdist=False)


def _parents(rel: str, absolute: bool = False) -> list[str]:
    parts = rel.split("/")[:-1]
    lead = "/" if absolute else ""
    return [lead + "/".join(parts[: i + 1]) for i in range(len(parts))]


def place(src: Path, dst: Path) -> None:
    """A hard link where possible: materialising an image costs no copy of its bytes."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def replay_image(spec: ImageSpec, arch: str, cache: Cache, build_args: Mapping[str, str] | None = None) -> ImageResult:
    result = ImageReplay(spec, arch, cache, build_args).run()
    result.packages, result.versions = visible_package_sizes(result)
    result.problems += check_image(spec, result)
    return result


def visible_package_sizes(result: ImageResult) -> tuple[dict[str, int], dict[str, str]]:
    """Bytes per distribution that a container of the image sees, from each RECORD."""
    sizes: dict[str, int] = {}
    versions: dict[str, str] = {}
    view = result.fs.visible
    for target in result.pip_targets:
        for path, ref in view.items():
            if not (path.startswith(target + "/") and path.endswith(".dist-info/RECORD")):
                continue
            dist_info = path[len(target) + 1 :].split("/", 1)[0]
            name, _, version = dist_info[: -len(".dist-info")].partition("-")
            versions[name] = version
            total = 0
            for line in ref.host.read_text(encoding="utf-8").splitlines():
                rel = line.split(",", 1)[0]
                other = view.get(posixpath.normpath(f"{target}/{rel}")) if rel else None
                total += other.size if other else 0
            sizes[name] = total
    return sizes, versions


# ---------------------------------------------------------------- image checks


def elf_needed(path: Path) -> list[str] | None:
    """DT_NEEDED entries of an ELF file (None when it is not ELF or has no dynamic section)."""
    with path.open("rb") as fh:
        if fh.read(4) != b"\x7fELF":
            return None
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            is64, order = data[4] == 2, "<" if data[5] == 1 else ">"
            if is64:
                shoff = struct.unpack_from(order + "Q", data, 0x28)[0]
                shentsize, shnum = struct.unpack_from(order + "HH", data, 0x3A)
                section_format, dyn_format = order + "IIQQQQIIQQ", order + "qQ"
            else:
                shoff = struct.unpack_from(order + "I", data, 0x20)[0]
                shentsize, shnum = struct.unpack_from(order + "HH", data, 0x2E)
                section_format, dyn_format = order + "IIIIIIIIII", order + "iI"
            sections = [struct.unpack_from(section_format, data, shoff + i * shentsize) for i in range(shnum)]
            dynamic = next((s for s in sections if s[1] == 6), None)  # SHT_DYNAMIC
            if dynamic is None:
                return None
            strtab_offset = sections[dynamic[6]][4]
            entry_size = struct.calcsize(dyn_format)
            names: list[str] = []
            for offset in range(dynamic[4], dynamic[4] + dynamic[5], entry_size):
                tag, value = struct.unpack_from(dyn_format, data, offset)
                if tag == 0:
                    break
                if tag == 1:  # DT_NEEDED
                    start = strtab_offset + value
                    names.append(bytes(data[start : data.find(b"\0", start)]).decode())
            return names


_SHARED_OBJECT = re.compile(r"\.so(\.\d+)*$")


def missing_libraries(files: Mapping[str, FileRef], provided_by_base: frozenset[str]) -> list[str]:
    """Shared objects whose linked libraries are neither in the image nor in its base."""
    present = {posixpath.basename(p) for p in files}
    problems: list[str] = []
    for path, ref in sorted(files.items()):
        if not _SHARED_OBJECT.search(path) or any(path.endswith("/" + u) for u in UNUSED_LIBRARIES):
            continue
        needed = elf_needed(ref.host) or []
        missing = [n for n in needed if n not in present and n not in provided_by_base]
        if missing:
            problems.append(f"{path} links {', '.join(missing)}, found neither in the image nor in its base")
    return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_problems(result: ImageResult, model_dir: str) -> list[str]:
    """Every model of the image's manifest is in the image, with the sha256 the manifest records."""
    view = result.fs.visible
    manifest = view.get(posixpath.join(model_dir, "manifest.json"))
    if manifest is None:
        return [f"no {model_dir}/manifest.json in the image"]
    problems: list[str] = []
    roots = result.python_roots()
    for entry in json.loads(manifest.host.read_text(encoding="utf-8")).get("models", []):
        name = entry.get("name", "?")
        candidates: list[str] = []
        if isinstance(entry.get("file"), str):
            candidates = [posixpath.join(model_dir, entry["file"])]
        elif isinstance(entry.get("package"), str) and isinstance(entry.get("package_file"), str):
            package = entry["package"].replace(".", "/")
            candidates = [posixpath.join(root, package, entry["package_file"]) for root in roots]
        found = next((view[c] for c in candidates if c in view), None)
        if found is None:
            problems.append(f"model {name}: none of {', '.join(candidates) or 'no file named'} is in the image")
            continue
        if isinstance(entry.get("sha256"), str) and _sha256(found.host) != entry["sha256"]:
            problems.append(f"model {name}: {found.host.name} differs from the manifest's sha256")
        tokenizer = entry.get("tokenizer", {}).get("file")
        if isinstance(tokenizer, str) and posixpath.join(model_dir, tokenizer) not in view:
            problems.append(f"model {name}: tokenizer {tokenizer} is not in {model_dir}")
    return problems


def check_image(spec: ImageSpec, result: ImageResult) -> list[str]:
    problems: list[str] = []
    for path, _ in result.fs.shipped():
        reason = FORBIDDEN_FILES.get(posixpath.basename(path))
        if reason:
            hidden = "" if path in result.fs.visible else " (deleted in a later layer, which only hides it)"
            problems.append(f"{path} ships in the image{hidden}: {reason}")
    model_dir = result.env.get("PIXDEX_MODEL_DIR")
    if model_dir is None:
        problems.append("the image sets no PIXDEX_MODEL_DIR")
    else:
        if spec.model_dir is not None and spec.model_dir != model_dir:
            problems.append(f"the template's PIXDEX_MODEL_DIR is {spec.model_dir}, the image's {model_dir}")
        problems += manifest_problems(result, model_dir)
    problems += missing_libraries(result.fs.visible, result.base.libs)
    if result.base.lambda_python:
        command = list(spec.command) or result.cmd
        if not command:
            problems.append("no handler: neither ImageConfig.Command nor CMD names one")
        else:
            module = command[0].rsplit(".", 1)[0].replace(".", "/")
            root = result.env["LAMBDA_TASK_ROOT"]
            if (
                f"{root}/{module}.py" not in result.fs.visible
                and f"{root}/{module}/__init__.py" not in result.fs.visible
            ):
                problems.append(f"handler {command[0]}: {root}/{module}.py is not in the image")
            if spec.command and result.cmd and list(spec.command) != result.cmd:
                problems.append(
                    f"CMD {result.cmd} differs from the template's ImageConfig.Command {list(spec.command)}"
                )
    if result.base.allowance is not None and result.total_bytes > IMAGE_LIMIT_BYTES:
        problems.append(f"{mb(result.total_bytes)} MB with the base image's allowance > {mb(IMAGE_LIMIT_BYTES)} MB")
    return problems


# ---------------------------------------------------------------- import checks


def find_python312() -> str | None:
    """A python3.12 that runs on this machine (a pyenv shim may exist without a 3.12 behind it)."""
    candidates = [os.environ.get("PYTHON312", ""), "python3.12"]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += [str(p) for p in sorted(pyenv_root.glob("versions/3.12*/bin/python3.12"))]
    for candidate in candidates:
        exe = shutil.which(candidate) if candidate and not os.path.isabs(candidate) else candidate
        if not exe or not os.path.exists(exe):
            continue
        probe = subprocess.run(
            [exe, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return exe
    return None


def _import_env(tmp: str, name: str, pythonpath: Sequence[Path], models_dir: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath),
        "PYTHONNOUSERSITE": "1",
        # The layers and images are measured from these folders: bytecode written here would count.
        "PYTHONDONTWRITEBYTECODE": "1",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "packaging-check",
        "AWS_SECRET_ACCESS_KEY": "packaging-check",
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "pixdex",
        "POWERTOOLS_SERVICE_NAME": "pixdex",
        "PIXDEX_ORIGINALS_BUCKET": "packaging-check-originals",
        "PIXDEX_DERIVATIVES_BUCKET": "packaging-check-derivatives",
        "PIXDEX_INDEX_URL": f"sqlite:///{tmp}/index.db",
        "PIXDEX_DATA_DIR": tmp,
        "PIXDEX_MODEL_DIR": str(models_dir),
        "HOME": tmp,
    }


def _probe(python: str, code: str, env: Mapping[str, str], cwd: str) -> str | None:
    # -S: no site-packages of the build machine, so only the layers or the image satisfy an import.
    result = subprocess.run(
        [python, "-S", "-B", "-c", code], cwd=cwd, env=dict(env), capture_output=True, text=True, check=False,
        timeout=300,
    )  # fmt: skip
    return None if result.returncode == 0 else result.stderr[-3000:]


def _handler_probe(handler: str) -> str:
    module, _, attribute = handler.rpartition(".")
    return f"import importlib\nh = getattr(importlib.import_module({module!r}), {attribute!r})\nassert callable(h), h\n"


def import_check(python: str, function: Function, paths: list[Path]) -> str | None:
    """Import the handler with only the function's own code and layers importable, as Lambda does."""
    module = function.handler.rsplit(".", 1)[0]
    if not (function.code_uri / f"{module}.py").is_file():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        env = _import_env(tmp, function.logical_id, [function.code_uri, *paths], REPO / "layers" / "models")
        error = _probe(python, _handler_probe(function.handler), env, tmp)
    return None if error is None else f"{function.logical_id}: {function.handler} fails with only its layers:\n{error}"


def image_import_check(python: str, spec: ImageSpec, result: ImageResult, work: Path) -> str | None:
    """Import the image's program from the image's files alone (materialised as hard links)."""
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix="image-") as root, tempfile.TemporaryDirectory() as tmp:
        for path, ref in result.fs.visible.items():
            place(ref.host, Path(root) / path.lstrip("/"))
        roots = [Path(root) / r.lstrip("/") for r in result.python_roots()]
        models = Path(root) / result.env.get("PIXDEX_MODEL_DIR", "/opt/models").lstrip("/")
        env = _import_env(tmp, spec.name, roots, models)
        if result.base.lambda_python:
            env["LAMBDA_TASK_ROOT"] = str(roots[0])
            code = _handler_probe((list(spec.command) or result.cmd)[0])
            cwd = str(roots[0])
        else:
            program = result.cmd[result.cmd.index("-m") + 1] if "-m" in result.cmd else None
            if program is None:
                return f"{spec.name}: CMD {result.cmd} does not run a module with -m"
            code = f"import importlib\nimportlib.import_module({program!r})\n"
            if "onnxruntime_gpu" in result.versions:
                # The GPU build must be the onnxruntime that imports (the CPU build has no CUDA provider).
                code += (
                    "import onnxruntime as o\n"
                    "assert 'CUDAExecutionProvider' in o.get_available_providers(), o.get_available_providers()\n"
                )
            cwd = tmp
        error = _probe(python, code, env, cwd)
    return None if error is None else f"{spec.name}: its program fails to import from the image alone:\n{error}"


# ---------------------------------------------------------------- report


def mb(n: int) -> str:
    return f"{n / 1_000_000:.1f}"


def _top(packages: Mapping[str, int], n: int = 6) -> str:
    return ", ".join(f"{name} {mb(size)}" for name, size in sorted(packages.items(), key=lambda kv: -kv[1])[:n])


def render(
    functions: dict[str, Function],
    layer_sizes: dict[tuple[str, str], Measure],
    totals: dict[tuple[str, str], int],
    images: Sequence[ImageResult],
    arches: list[str],
    notes: Sequence[str],
) -> str:
    lines = [BEGIN_MARK, "", "Unzipped bytes in MB (10^6), measured by `.ci/package-size`. " + " ".join(notes)]
    if functions:
        lines += [
            "",
            f"Zip functions: the limit is {mb(ZIP_LIMIT_BYTES)} MB (250 MiB) for function code plus all its layers.",
            "",
            "| function | arch | code | layers | total | headroom |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for function in functions.values():
            for arch in arches:
                total = totals[(function.logical_id, arch)]
                layer_total = sum(layer_sizes[(lid, arch)].bytes for lid in function.layers)
                flag = "" if total <= ZIP_LIMIT_BYTES else " **over**"
                lines.append(
                    f"| {function.logical_id} | {arch} | {mb(total - layer_total)} | {mb(layer_total)} "
                    f"({', '.join(function.layers)}) | {mb(total)}{flag} | {mb(ZIP_LIMIT_BYTES - total)} |"
                )
        lines += ["", "| layer | arch | size | largest packages |", "|---|---|---:|---|"]
        for (layer_id, arch), measure in sorted(layer_sizes.items()):
            lines.append(f"| {layer_id} | {arch} | {mb(measure.bytes)} | {_top(measure.packages)} |")
    if images:
        lines += [
            "",
            f"Container images: Lambda's limit is {mb(IMAGE_LIMIT_BYTES)} MB for the whole image. *Layers* is what the",
            "Dockerfile adds (every layer, files that a later layer deletes included); *models* the model folder in",
            "it; *base* the allowance counted for the base image, which cannot be pulled here.",
            "",
            "| image | arch | layers | models | base | total | headroom | largest packages |",
            "|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for r in images:
            limit = r.base.allowance is not None
            allowance = mb(r.base.allowance) if r.base.allowance is not None else "not counted"
            over = " **over**" if limit and r.total_bytes > IMAGE_LIMIT_BYTES else ""
            headroom = mb(IMAGE_LIMIT_BYTES - r.total_bytes) if limit else "no limit"
            models = mb(r.bytes_under(r.env.get("PIXDEX_MODEL_DIR", "/opt/models")))
            lines.append(
                f"| {r.name} | {ARCH_NAMES[r.arch]} | {mb(r.shipped_bytes)} | {models} | {allowance} | "
                f"{mb(r.total_bytes)}{over} | "
                f"{headroom} | {_top(r.packages)} |"
            )
        bases = {r.base_ref: r for r in images}
        lines += [""] + [f"- `{ref}`: {r.base.note}." for ref, r in sorted(bases.items())]
        apt = sorted({p for r in images for p in r.apt_packages})
        if apt:
            lines.append(f"- apt packages from the base's distribution, not counted: {', '.join(apt)}.")
    resolved: dict[str, set[str]] = {}
    for versions in [m.versions for m in layer_sizes.values()] + [r.versions for r in images]:
        for name, version in versions.items():
            resolved.setdefault(name, set()).add(version)
    if resolved:
        pins = ", ".join(f"{name} {'/'.join(sorted(v))}" for name, v in sorted(resolved.items()))
        lines += ["", f"Resolved versions: {pins}"]
    lines += ["", END_MARK]
    return "\n".join(lines)


def write_doc(section: str) -> None:
    text = DOC.read_text(encoding="utf-8") if DOC.is_file() else "# Packaging\n"
    pattern = re.compile(re.escape(BEGIN_MARK) + ".*?" + re.escape(END_MARK), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n## Measured sizes\n\n" + section + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


# ---------------------------------------------------------------- main


def measure_layer(layer: Layer, arch: str, cache: Cache) -> tuple[Measure, Path | None]:
    # python builds copy the folder into python/ next to the installed requirements.
    source = sum(p.stat().st_size for p in iter_source_files(layer.content_uri))
    if not layer.requirements_text:
        return Measure(source), None
    target = pip_install(layer.requirements_text.splitlines(), arch, cache)
    sizes, versions = package_sizes(target)
    return Measure(source + tree_bytes(target), packages=sizes, versions=versions), target


def _host_arch() -> str:
    return {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), ""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--arch", action="append", choices=sorted(ARCHES), help="default: both")
    parser.add_argument("--template", type=Path, default=REPO / "template.yaml")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".venv-sam" / "pkgcache")
    parser.add_argument("--refresh", action="store_true", help="reinstall instead of reusing the cache")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {DOC.relative_to(REPO)}")
    parser.add_argument("--no-import-check", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    arches: list[str] = args.arch or list(ARCHES)

    functions, layers, image_specs = load_project(args.template, arches)
    problems = check_against_pyproject(functions, layers)
    if problems:
        print("layer requirements disagree with pyproject.toml:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    host_arch = _host_arch()
    python = find_python312()
    if python is not None and host_arch not in ARCHES:
        python = None  # a python3.12 of another architecture cannot import the target's wheels
    cache = Cache(args.cache_dir, args.refresh, python)

    used = sorted({lid for f in functions.values() for lid in f.layers})
    layer_jobs = [(lid, arch) for lid in used for arch in arches]
    image_jobs = [(spec, ARCHES[arch]) for spec in image_specs for arch in spec.arches]
    layer_sizes: dict[tuple[str, str], Measure] = {}
    layer_paths: dict[tuple[str, str], Path | None] = {}
    images: list[ImageResult] = []
    # pip spends most of its time unpacking: two workers keep both cores busy, no more.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        layer_futures = {job: pool.submit(measure_layer, layers[job[0]], ARCHES[job[1]], cache) for job in layer_jobs}
        image_futures = [pool.submit(replay_image, spec, arch, cache) for spec, arch in image_jobs]
        for job, future in layer_futures.items():
            layer_sizes[job], layer_paths[job] = future.result()
        images = [future.result() for future in image_futures]

    totals: dict[tuple[str, str], int] = {}
    failures: list[str] = []
    for function in functions.values():
        code = sum(p.stat().st_size for p in iter_source_files(function.code_uri))
        for arch in arches:
            total = code + sum(layer_sizes[(lid, arch)].bytes for lid in function.layers)
            totals[(function.logical_id, arch)] = total
            status = "ok" if total <= ZIP_LIMIT_BYTES else "OVER"
            print(f"{function.logical_id:18} {arch:7} {mb(total):>8} MB  zip    {status}")
            if total > ZIP_LIMIT_BYTES:
                failures.append(f"{function.logical_id} on {arch}: {mb(total)} MB > {mb(ZIP_LIMIT_BYTES)} MB")
    for r in images:
        status = "ok" if not r.problems else "FAIL"
        print(f"{r.name:18} {ARCH_NAMES[r.arch]:7} {mb(r.shipped_bytes):>8} MB  image  {status}")
        failures += [f"{r.name} on {ARCH_NAMES[r.arch]}: {p}" for p in r.problems]
    for (layer_id, arch), path in layer_paths.items():
        if path is not None:
            for problem in missing_libraries(_tree_refs(path), BASE_IMAGES["public.ecr.aws/lambda/python:3.12"].libs):
                failures.append(f"{layer_id} on {arch}: {problem}")

    notes: list[str] = []
    if args.no_import_check:
        notes.append("Imports not checked.")
    elif python is None:
        notes.append("Imports not checked and bytecode not counted (no python3.12 for this machine's architecture).")
    else:
        checked: list[str] = []
        for function in functions.values():
            if host_arch not in arches:
                break
            paths: list[Path] = []
            for lid in function.layers:
                installed = layer_paths[(lid, host_arch)]
                if installed is not None:
                    paths.append(installed)
                paths.append(layers[lid].content_uri)  # sam build copies the folder itself into python/
            error = import_check(python, function, paths)
            failures += [error] if error else []
            checked.append(function.logical_id)
        for r in images:
            if r.arch != ARCHES.get(host_arch):
                continue
            spec = next(s for s in image_specs if s.name == r.name)
            error = image_import_check(python, spec, r, cache.root / "work")
            failures += [error] if error else []
            checked.append(r.name)
        notes.append(
            f"Imported with only their own layers or image, on {host_arch} (python3.12): {', '.join(checked)}; "
            "image content includes the bytecode pip compiles in the image build."
        )

    if not args.arch:
        cache.prune()
    seconds = time.monotonic() - started
    if not args.no_write:
        write_doc(render(functions, layer_sizes, totals, images, arches, notes))
    print(f"{' '.join(notes)} {seconds:.0f} s.")
    for message in failures:
        print(f"FAIL {message}", file=sys.stderr)
    return 1 if failures else 0


def _tree_refs(root: Path) -> dict[str, FileRef]:
    return {
        p.relative_to(root).as_posix(): FileRef(p, p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckError as exc:
        print(f"package-size: {exc}", file=sys.stderr)
        sys.exit(2)

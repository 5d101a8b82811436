"""Build every Lambda function's deployment contents the way Lambda receives them; check 250 MB.

For each function in template.yaml and each architecture, this installs the requirements of every
python layer the function uses with pip for CPython 3.12 on manylinux (``--platform
manylinux_2_28_<arch> --platform manylinux2014_<arch> --only-binary=:all: --no-compile``), adds the
layer and function sources the way ``sam build`` copies them, and adds up the unzipped bytes. A
function whose code plus layers exceeds Lambda's 250 MB unzipped limit fails the check. It also
checks that the layers' requirements carry pyproject.toml's runtime dependencies, and, where a
python3.12 interpreter for this machine's architecture exists, imports each handler with nothing
but its own layers on the path (what Lambda's init does). Sizes go to docs/packaging.md.

Run through .ci/package-size.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 262_144_000  # Lambda: 250 MB unzipped, function code and all layers together
ARCHES = {"arm64": "aarch64", "x86_64": "x86_64"}
PYTHON_VERSION = "3.12"
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


class CheckError(Exception):
    """The packaging check cannot run or found an inconsistency (not a size overrun)."""


@dataclass
class Layer:
    logical_id: str
    content_uri: Path
    build_method: str | None
    requirements: list[Requirement] = field(default_factory=list)
    requirements_text: str = ""


@dataclass
class Function:
    logical_id: str
    name: str  # folder name under functions/, also the name of its optional pyproject extra
    code_uri: Path
    handler: str
    layers: list[str]


@dataclass
class Measure:
    bytes: int
    note: str = ""
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


def load_project(template_path: Path) -> tuple[dict[str, Function], dict[str, Layer]]:
    template = _load_cfn_yaml().load_template(template_path)
    resources: dict[str, Any] = template["Resources"]
    global_layers = [_ref(x) for x in template.get("Globals", {}).get("Function", {}).get("Layers", [])]
    layers: dict[str, Layer] = {}
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::LayerVersion":
            continue
        props = resource.get("Properties", {})
        content = REPO / str(props["ContentUri"])
        build_method = resource.get("Metadata", {}).get("BuildMethod")
        layer = Layer(logical_id, content, str(build_method) if build_method else None)
        requirements_file = content / "requirements.txt"
        if layer.build_method and layer.build_method.startswith("python") and requirements_file.is_file():
            layer.requirements, layer.requirements_text = read_requirements(requirements_file)
        layers[logical_id] = layer
    functions: dict[str, Function] = {}
    for logical_id, resource in resources.items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties", {})
        if "CodeUri" not in props:
            continue  # inline code: a few kilobytes, no layers
        code = REPO / str(props["CodeUri"])
        function_layers = global_layers + [_ref(x) for x in props.get("Layers", [])]
        for layer_id in function_layers:
            if layer_id not in layers:
                raise CheckError(f"{logical_id}: layer {layer_id} is not an AWS::Serverless::LayerVersion")
        functions[logical_id] = Function(logical_id, code.name, code, str(props["Handler"]), function_layers)
    if not functions:
        raise CheckError("template.yaml declares no functions with CodeUri")
    return functions, layers


def check_against_pyproject(
    functions: dict[str, Function], layers: dict[str, Layer], pyproject: Path = REPO / "pyproject.toml"
) -> list[str]:
    """Every runtime dependency (and each function's extra) must reach the function through a layer."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    base = [Requirement(x) for x in project.get("dependencies", [])]
    extras: dict[str, list[Requirement]] = {
        canonicalize_name(k): [Requirement(x) for x in v] for k, v in project.get("optional-dependencies", {}).items()
    }
    problems: list[str] = []
    for function in functions.values():
        provided: dict[str, Requirement] = {}
        for layer_id in function.layers:
            for req in layers[layer_id].requirements:
                provided[canonicalize_name(req.name)] = req
        if function.code_uri.joinpath("requirements.txt").is_file():
            for req in read_requirements(function.code_uri / "requirements.txt")[0]:
                provided[canonicalize_name(req.name)] = req
        wanted = base + [
            req
            for req in extras.get(canonicalize_name(function.name), [])
            if not req.name.startswith(project["name"])  # an extra that only pulls other extras
        ]
        for req in wanted:
            got = provided.get(canonicalize_name(req.name))
            if got is None:
                problems.append(f"{function.logical_id}: {req} (pyproject) is in none of its layers")
            elif got.specifier != req.specifier or got.extras != req.extras or got.marker != req.marker:
                problems.append(f"{function.logical_id}: layers pin {got}, pyproject says {req}")
    return problems


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


def pip_install(requirements: str, arch: str, cache_dir: Path, refresh: bool) -> Path:
    """Install requirements for Lambda python3.12/<arch> into a cached target folder."""
    flags = [
        "--platform", f"manylinux_2_28_{arch}", "--platform", f"manylinux2014_{arch}",
        "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
        "--no-compile",
    ]  # fmt: skip
    key = hashlib.sha256("\n".join([requirements, *flags]).encode()).hexdigest()[:16]
    target = cache_dir / f"{arch}-{key}"
    if target.is_dir() and not refresh:
        return target
    if target.exists():
        shutil.rmtree(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        req_file = Path(tmp) / "requirements.txt"
        req_file.write_text(requirements + "\n", encoding="utf-8")
        staging = Path(tmp) / "target"
        cmd = [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            # --target ignores what this interpreter has installed; its conflict report is noise.
            "--no-warn-conflicts", *flags, "--target", str(staging), "-r", str(req_file),
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise CheckError(f"pip install for {arch} failed:\n{result.stdout}\n{result.stderr}")
        staging.rename(target)
    return target


def measure_models_layer(layer: Layer) -> Measure:
    """Files the models layer ships, plus manifest entries whose built file is not here (yet)."""
    files = list(iter_source_files(layer.content_uri, skip=("Makefile",)))
    present = {p.name for p in files}
    total = sum(p.stat().st_size for p in files)
    missing: list[str] = []
    manifest = layer.content_uri / "manifest.json"
    if manifest.is_file():
        for entry in json.loads(manifest.read_text(encoding="utf-8")).get("models", []):
            name = entry.get("file")
            if isinstance(name, str) and name not in present and isinstance(entry.get("bytes"), int):
                total += entry["bytes"]
                missing.append(name)
    note = f"counts {len(missing)} unbuilt file(s) by manifest size: {', '.join(missing)}" if missing else ""
    return Measure(total, note)


def measure_layer(layer: Layer, arch: str, cache_dir: Path, refresh: bool) -> tuple[Measure, Path | None]:
    if layer.build_method == "makefile":
        return measure_models_layer(layer), None
    # python builds copy the folder into python/ next to the installed requirements.
    source = sum(p.stat().st_size for p in iter_source_files(layer.content_uri))
    if not layer.requirements_text:
        return Measure(source), None
    target = pip_install(layer.requirements_text, arch, cache_dir, refresh)
    sizes, versions = package_sizes(target)
    return Measure(source + tree_bytes(target), packages=sizes, versions=versions), target


def find_python312() -> str | None:
    """A python3.12 that runs on this machine (a pyenv shim may exist without a 3.12 behind it)."""
    candidates = [os.environ.get("PYTHON312", ""), "python3.12"]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += [str(p) for p in sorted(pyenv_root.glob("versions/3.12*/bin/python3.12"))]
    for candidate in candidates:
        exe = shutil.which(candidate) if candidate else None
        if not exe:
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


def import_check(python: str, function: Function, paths: list[Path], models_dir: Path) -> str | None:
    """Import the handler with only the function's own code and layers importable, as Lambda does."""
    module = function.handler.rsplit(".", 1)[0]
    if not (function.code_uri / f"{module}.py").is_file():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join(str(p) for p in [function.code_uri, *paths]),
            "PYTHONNOUSERSITE": "1",
            # The layers are measured from these folders: bytecode written here would count.
            "PYTHONDONTWRITEBYTECODE": "1",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "packaging-check",
            "AWS_SECRET_ACCESS_KEY": "packaging-check",
            "AWS_LAMBDA_FUNCTION_NAME": function.logical_id,
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
        # -S: no site-packages of the build machine, so only the layers can satisfy an import.
        result = subprocess.run(
            [python, "-S", "-B", "-c", f"import {module}"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
    if result.returncode != 0:
        return f"{function.logical_id}: `import {module}` failed with only its layers:\n{result.stderr[-3000:]}"
    return None


def mb(n: int) -> str:
    return f"{n / 1_000_000:.1f}"


def render(
    functions: dict[str, Function],
    layer_sizes: dict[tuple[str, str], Measure],
    totals: dict[tuple[str, str], int],
    arches: list[str],
    import_note: str,
) -> str:
    lines = [
        BEGIN_MARK,
        "",
        f"Unzipped bytes in MB (10^6); the limit is {mb(LIMIT_BYTES)} MB (250 MiB) for function code plus",
        f"all its layers. Measured by `.ci/package-size`. {import_note}",
        "",
        "| function | arch | code | layers | total | headroom |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for function in functions.values():
        for arch in arches:
            total = totals[(function.logical_id, arch)]
            layer_total = sum(layer_sizes[(lid, arch)].bytes for lid in function.layers)
            code = total - layer_total
            flag = "" if total <= LIMIT_BYTES else " **over**"
            lines.append(
                f"| {function.logical_id} | {arch} | {mb(code)} | {mb(layer_total)} ({', '.join(function.layers)})"
                f" | {mb(total)}{flag} | {mb(LIMIT_BYTES - total)} |"
            )
    lines += ["", "| layer | arch | size | largest packages | note |", "|---|---|---:|---|---|"]
    for (layer_id, arch), measure in sorted(layer_sizes.items()):
        top = sorted(measure.packages.items(), key=lambda kv: -kv[1])[:6]
        biggest = ", ".join(f"{name} {mb(size)}" for name, size in top)
        lines.append(f"| {layer_id} | {arch} | {mb(measure.bytes)} | {biggest} | {measure.note} |")
    resolved: dict[str, set[str]] = {}
    for measure in layer_sizes.values():
        for name, version in measure.versions.items():
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--arch", action="append", choices=sorted(ARCHES), help="default: both")
    parser.add_argument("--template", type=Path, default=REPO / "template.yaml")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".venv-sam" / "pkgcache")
    parser.add_argument("--refresh", action="store_true", help="reinstall instead of reusing the cache")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {DOC.relative_to(REPO)}")
    parser.add_argument("--no-import-check", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    arches: list[str] = args.arch or list(ARCHES)

    functions, layers = load_project(args.template)
    problems = check_against_pyproject(functions, layers)
    if problems:
        print("layer requirements disagree with pyproject.toml:", *problems, sep="\n  ", file=sys.stderr)
        return 1

    used = sorted({lid for f in functions.values() for lid in f.layers})
    jobs = [(lid, arch) for lid in used for arch in arches]
    layer_sizes: dict[tuple[str, str], Measure] = {}
    layer_paths: dict[tuple[str, str], Path | None] = {}
    # pip spends most of its time unpacking: two workers keep both cores busy, no more.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            job: pool.submit(measure_layer, layers[job[0]], ARCHES[job[1]], args.cache_dir, args.refresh)
            for job in jobs
        }
        for job, future in futures.items():
            layer_sizes[job], layer_paths[job] = future.result()

    totals: dict[tuple[str, str], int] = {}
    over: list[str] = []
    for function in functions.values():
        code = sum(p.stat().st_size for p in iter_source_files(function.code_uri))
        for arch in arches:
            total = code + sum(layer_sizes[(lid, arch)].bytes for lid in function.layers)
            totals[(function.logical_id, arch)] = total
            status = "ok" if total <= LIMIT_BYTES else "OVER"
            print(f"{function.logical_id:18} {arch:7} {mb(total):>7} MB  {status}")
            if total > LIMIT_BYTES:
                over.append(f"{function.logical_id} on {arch}: {mb(total)} MB > {mb(LIMIT_BYTES)} MB")

    failures: list[str] = []
    host_arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), ""
    )
    python = None if args.no_import_check else find_python312()
    if args.no_import_check:
        import_note = "Handler imports not checked."
    elif python is None or host_arch not in arches:
        import_note = "Handler imports not checked (no python3.12 for this machine's architecture)."
    else:
        import_note = f"Handlers imported with only their layers on {host_arch} (python3.12)."
        for function in functions.values():
            paths: list[Path] = []
            models_dir = REPO / "layers" / "models"
            for lid in function.layers:
                layer = layers[lid]
                if layer.build_method == "makefile":
                    models_dir = layer.content_uri
                    continue
                installed = layer_paths[(lid, host_arch)]
                if installed is not None:
                    paths.append(installed)
                # CoreLayer: sam build copies the folder itself into python/.
                paths.append(layer.content_uri)
            error = import_check(python, function, paths, models_dir)
            if error:
                failures.append(error)

    seconds = time.monotonic() - started
    section = render(functions, layer_sizes, totals, arches, import_note)
    if not args.no_write:
        write_doc(section)
    print(f"{import_note} {seconds:.0f} s.")
    for message in over + failures:
        print(f"FAIL {message}", file=sys.stderr)
    return 1 if over or failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CheckError as exc:
        print(f"package-size: {exc}", file=sys.stderr)
        sys.exit(2)

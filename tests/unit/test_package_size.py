"""The offline image builder of .ci/package_size.py: Dockerfile replay, build context, image checks.

.ci/package-size replays the real Dockerfiles with pip (network, minutes); these tests pin down the
parts that decide what it counts and what it refuses, on small contexts built here, without pip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
LAMBDA_BASE = "public.ecr.aws/lambda/python:3.12"


@pytest.fixture(scope="module")
def ps() -> ModuleType:
    spec = importlib.util.spec_from_file_location("package_size", REPO / ".ci" / "package_size.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["package_size"] = module  # dataclasses look their module up while the class body runs
    spec.loader.exec_module(module)
    return module


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def replay(ps: ModuleType, context: Path, dockerfile: str, **kwargs: Any) -> Any:
    write(context, {"Dockerfile": dockerfile})
    spec = ps.ImageSpec("Fn", context / "Dockerfile", context, ("x86_64",), **kwargs)
    return ps.ImageReplay(spec, "x86_64", ps.Cache(context / ".cache"), install=False).run()


# ---------------------------------------------------------------- parsing and build context


def test_dockerfile_lines_join_and_comments_drop(ps: ModuleType) -> None:
    text = '# top\nFROM a:1\n\nRUN one \\\n    # inside\n    && two\ncmd ["x"]\n'
    assert [(i.keyword, i.value, i.line) for i in ps.parse_dockerfile(text)] == [
        ("FROM", "a:1", 2),
        ("RUN", "one && two", 4),
        ("CMD", '["x"]', 7),
    ]
    with pytest.raises(ps.CheckError, match="ends inside"):
        ps.parse_dockerfile("RUN a \\\n")


def test_variables_expand_as_docker_and_sh_expand_them(ps: ModuleType) -> None:
    env = {"A": "1", "EMPTY": ""}
    assert ps.expand("$A ${A} ${B:-two} ${EMPTY:-three} ${A:+set} ${B:+unset}x $Bx", env) == "1 1 two three set x "


def test_dockerignore_matches_a_path_or_any_parent_and_the_last_pattern_wins(ps: ModuleType) -> None:
    ignore = ps.DockerIgnore(
        "*\n!pyproject.toml\n!layers/core/\n**/__pycache__\n**/*.pyc\nlayers/models/README.md\n!functions\n"
    )
    # functions/x.pyc: "!functions" comes after "**/*.pyc", and the last matching pattern wins.
    included = ["pyproject.toml", "layers/core/pixdex/a.py", "functions/analyze/app.py", "functions/x.pyc"]
    excluded = [
        ".venv/lib/x.py", "README.md", "layers/deps/requirements.txt", "layers/models/README.md",
        "layers/core/pixdex/__pycache__/a.cpython-312.pyc", "layers/core/x.pyc", ".git/config",
    ]  # fmt: skip
    assert [p for p in included if ignore.excluded(p)] == []
    assert [p for p in excluded if not ignore.excluded(p)] == []
    assert ignore.may_include_below("layers") and not ignore.may_include_below(".venv")
    doublestar = ps.DockerIgnore("**/x.txt\n")
    assert doublestar.excluded("x.txt") and doublestar.excluded("a/b/x.txt") and not doublestar.excluded("ax.txt")


def test_the_repository_context_holds_only_what_the_dockerfiles_copy(ps: ModuleType) -> None:
    files = ps.context_files(REPO)
    tops = {rel.split("/", 1)[0] for rel in files}
    assert tops <= {"pyproject.toml", "README.md", "layers", "functions"}
    assert {rel.split("/")[1] for rel in files if rel.startswith("layers/")} <= {"core", "models"}
    assert not [rel for rel in files if "__pycache__" in rel or rel.endswith(".pyc")]
    assert "layers/models/README.md" not in files and "layers/models/manifest.json" in files


def test_copy_follows_docker_semantics(ps: ModuleType, tmp_path: Path) -> None:
    write(tmp_path, {"a.txt": "a", "b.txt": "bb", "src/x.py": "x", "src/sub/y.py": "yy", "skip/z": "z"})
    write(tmp_path, {".dockerignore": "skip\n"})
    result = replay(
        ps,
        tmp_path,
        f"FROM {LAMBDA_BASE}\nCOPY src/ /app/\nCOPY a.txt b.txt /files/\nCOPY a.txt /one/renamed\n"
        "COPY s*/ /glob/\nWORKDIR rel\nCOPY b.txt here/\n",
    )
    assert {path: ref.size for path, ref in result.fs.visible.items()} == {
        "/app/x.py": 1, "/app/sub/y.py": 2, "/files/a.txt": 1, "/files/b.txt": 2, "/one/renamed": 1,
        "/glob/x.py": 1, "/glob/sub/y.py": 2, "/var/task/rel/here/b.txt": 2,
    }  # fmt: skip
    for missing in ("nothere.txt", "skip/z"):
        with pytest.raises(ps.CheckError, match="not in the build context"):
            replay(ps, tmp_path, f"FROM {LAMBDA_BASE}\nCOPY {missing} /x/\n")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ADD a.txt /x", "ADD is not replayed"),
        ("FROM alpine:3", "multi-stage"),
        ("COPY --from=build /a /b", "BuildKit"),
        ("RUN --mount=type=cache,target=/c true", "BuildKit"),
        ("RUN true || false", "chain commands with &&"),
        ("RUN curl -o /x http://example.com", "RUN curl is not replayed"),
        ("RUN apt-get install -y x", "RUN apt-get is not replayed"),
        ("RUN pip install --only-binary=:all: numpy", "without --target"),
        ("RUN pip install --target /var/task numpy", "--only-binary=:all:"),
        ("RUN pip install --only-binary=:all: --index-url http://x -t /v numpy", "--index-url is not replayed"),
        ("RUN rm -x /a", "only -r and -f"),
        ('ENTRYPOINT ["python"]', "keep the program in CMD"),
    ],
)
def test_what_the_replay_cannot_follow_fails_loudly(ps: ModuleType, tmp_path: Path, line: str, message: str) -> None:
    write(tmp_path, {"a.txt": "a"})
    with pytest.raises(ps.CheckError, match=message):
        replay(ps, tmp_path, f"FROM {LAMBDA_BASE}\n{line}\n")


def test_arguments_reach_from_and_later_lines(ps: ModuleType, tmp_path: Path) -> None:
    dockerfile = (
        "ARG BASE=public.ecr.aws/lambda/python:3.12\nFROM ${BASE}\nARG WHERE=/opt/a\nARG BASE\n"
        'ENV TOP=${WHERE} NEXT=${TOP}/b\nENV AFTER=${TOP}/c\nENV LEGACY value with spaces\nCMD ["h.x"]\n'
    )
    result = replay(ps, tmp_path, dockerfile)
    assert result.base_ref == LAMBDA_BASE
    # Within one ENV line the earlier value counts (none here), as Docker does it.
    assert (result.env["TOP"], result.env["NEXT"], result.env["AFTER"]) == ("/opt/a", "/b", "/opt/a/c")
    assert result.env["LEGACY"] == "value with spaces"
    write(tmp_path, {"Dockerfile": dockerfile})
    spec = ps.ImageSpec("Fn", tmp_path / "Dockerfile", tmp_path, ("x86_64",))
    other = ps.ImageReplay(spec, "x86_64", ps.Cache(tmp_path / "c"), {"WHERE": "/srv"}, install=False).run()
    assert other.env["AFTER"] == "/srv/c"
    with pytest.raises(ps.CheckError, match="unknown"):
        replay(ps, tmp_path, "FROM python:3.12-slim\n")


def test_pip_install_lines_are_read_option_by_option(ps: ModuleType) -> None:
    cmd = ps.parse_pip_install(
        [
            "--no-cache-dir", "--only-binary=:all:", "--no-binary", "Face_Recognition.Models,x", "-t", "lib",
            "/tmp/src[faces, local]", "./other", "numpy>=2", "-r", "reqs.txt", "--no-deps", "-U",
        ],
        "/work",
    )  # fmt: skip
    assert cmd.target == "/work/lib" and cmd.requirement_files == ["/work/reqs.txt"]
    assert cmd.local == [("/tmp/src", ["faces", "local"]), ("/work/./other", [])]
    assert cmd.requirements == ["numpy>=2"]
    assert cmd.only_binary == {":all:"} and cmd.no_binary == {"face-recognition-models", "x"}
    assert cmd.no_deps and cmd.upgrade and cmd.compile


def test_project_dependencies_are_what_pip_installs_for_the_extras(ps: ModuleType) -> None:
    requires = [
        ps.Requirement(r)
        for r in (
            "numpy>=1.26", "tomli; python_version < '3.11'", "aarch-only; platform_machine == 'aarch64'",
            "dlib-bin>=20; extra == 'faces'", "moto; extra == 'local'", "pixdex[local]; extra == 'dev'",
        )
    ]  # fmt: skip
    names = [str(r) for r in ps.project_dependencies("pixdex", requires, ["faces"], "x86_64")]
    assert names == ["numpy>=1.26", "dlib-bin>=20"]
    names = [str(r) for r in ps.project_dependencies("pixdex", requires, ["dev"], "aarch64")]
    assert names == ["numpy>=1.26", "aarch-only", "moto"]


def test_wheel_metadata_names_requirements_and_extras(ps: ModuleType, tmp_path: Path) -> None:
    wheel = tmp_path / "p-1.0-py3-none-any.whl"
    metadata = "Metadata-Version: 2.1\nName: p\nVersion: 1.0\nRequires-Dist: a>=1\nProvides-Extra: Fast_Path\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("p-1.0.dist-info/METADATA", metadata)
    name, requires, extras = ps.wheel_metadata(wheel)
    assert (name, [str(r) for r in requires], extras) == ("p", ["a>=1"], {"fast-path"})


# ---------------------------------------------------------------- layers: what ships, what is seen


def test_rm_removes_within_a_layer_and_only_hides_across_layers(ps: ModuleType, tmp_path: Path) -> None:
    fs = ps.ImageFS()
    ref = ps.FileRef(tmp_path, 10)
    fs.add("/a/x", ref)
    fs.add("/a/y", ref)
    fs.remove("/a/x")
    fs.commit("RUN one")
    assert set(fs.visible) == {"/a/y"} and [p for p, _ in fs.shipped()] == ["/a/y"]

    write(tmp_path, {"big.bin": b"0" * 1000, "small.txt": "s"})
    result = replay(
        ps,
        tmp_path,
        f"FROM {LAMBDA_BASE}\nCOPY big.bin small.txt /data/\nRUN rm -rf /data/b*.bin /not/there\n",
    )
    assert set(result.fs.visible) == {"/data/small.txt"}
    assert result.shipped_bytes == 1001  # the deleted file still ships in the COPY layer
    with pytest.raises(ps.CheckError, match="no such file"):
        replay(ps, tmp_path, f"FROM {LAMBDA_BASE}\nCOPY small.txt /data/\nRUN rm /data/other.txt\n")
    with pytest.raises(ps.CheckError, match="is a directory"):
        replay(ps, tmp_path, f"FROM {LAMBDA_BASE}\nCOPY small.txt /data/\nRUN rm -f /data\n")


def _lambda_image(ps: ModuleType, context: Path, manifest: dict[str, Any], extra: str = "") -> Any:
    write(context, {"models/m.onnx": b"model", "models/manifest.json": json.dumps(manifest), "app.py": "h = 1\n"})
    dockerfile = (
        f"FROM {LAMBDA_BASE}\nENV PIXDEX_MODEL_DIR=/opt/models\nCOPY models/ /opt/models/\n"
        f'COPY app.py ${{LAMBDA_TASK_ROOT}}/\n{extra}CMD ["app.h"]\n'
    )
    write(context, {"Dockerfile": dockerfile})
    spec = ps.ImageSpec("Fn", context / "Dockerfile", context, ("x86_64",), ("app.h",), "/opt/models")
    return spec, ps.ImageReplay(spec, "x86_64", ps.Cache(context / ".cache"), install=False).run()


def test_a_complete_image_passes_the_image_checks(ps: ModuleType, tmp_path: Path) -> None:
    digest = hashlib.sha256(b"model").hexdigest()
    spec, result = _lambda_image(ps, tmp_path, {"models": [{"name": "m", "file": "m.onnx", "sha256": digest}]})
    assert ps.check_image(spec, result) == []
    assert result.total_bytes == result.shipped_bytes + ps.BASE_IMAGES[LAMBDA_BASE].allowance


def test_image_checks_find_missing_models_forbidden_files_and_a_missing_handler(ps: ModuleType, tmp_path: Path) -> None:
    manifest = {
        "models": [
            {"name": "m", "file": "m.onnx", "sha256": "0" * 64},
            {"name": "gone", "file": "gone.onnx"},
            {"name": "ocr", "package": "rapidocr", "package_file": "models/det.onnx"},
            {"name": "txt", "file": "m.onnx", "tokenizer": {"file": "vocab.txt"}},
        ]
    }
    write(tmp_path, {"shape_predictor_68_face_landmarks.dat": b"nc"})
    spec, result = _lambda_image(
        ps,
        tmp_path,
        manifest,
        "COPY shape_predictor_68_face_landmarks.dat /var/task/frm/models/\n"
        "RUN rm -f /var/task/frm/models/shape_predictor_68_face_landmarks.dat /var/task/app.py\n",
    )
    problems = ps.check_image(spec, result)
    assert problems == [
        "/var/task/frm/models/shape_predictor_68_face_landmarks.dat ships in the image (deleted in a later layer, "
        "which only hides it): face_recognition_models' 68-landmark model is licensed for non-commercial use only",
        "model m: m.onnx differs from the manifest's sha256",
        "model gone: none of /opt/models/gone.onnx is in the image",
        "model ocr: none of /var/task/rapidocr/models/det.onnx is in the image",
        "model txt: tokenizer vocab.txt is not in /opt/models",
        "handler app.h: /var/task/app.py is not in the image",
    ]


def test_template_and_image_must_agree_on_handler_and_model_folder(ps: ModuleType, tmp_path: Path) -> None:
    spec, result = _lambda_image(ps, tmp_path, {"models": []})
    other = ps.ImageSpec(spec.name, spec.dockerfile, spec.context, spec.arches, ("app.other",), "/srv/models")
    assert ps.check_image(other, result) == [
        "the template's PIXDEX_MODEL_DIR is /srv/models, the image's /opt/models",
        "CMD ['app.h'] differs from the template's ImageConfig.Command ['app.other']",
    ]


# ---------------------------------------------------------------- native libraries


def _extension_module() -> Path:
    path = Path(getattr(math, "__file__", ""))
    if not path.is_file() or ".so" not in path.name:
        pytest.skip("math is built into this interpreter, not an extension module")
    return path


def test_elf_needed_lists_the_linked_libraries(ps: ModuleType, tmp_path: Path) -> None:
    path = _extension_module()
    needed = ps.elf_needed(path)
    assert needed is not None and "libc.so.6" in needed
    readelf = shutil.which("readelf")
    if readelf:
        out = subprocess.run([readelf, "-d", str(path)], capture_output=True, text=True, check=True).stdout
        assert needed == [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]
    (tmp_path / "text.so").write_text("not elf")
    assert ps.elf_needed(tmp_path / "text.so") is None


def test_libraries_missing_from_image_and_base_are_reported(ps: ModuleType, tmp_path: Path) -> None:
    path = _extension_module()
    needed = ps.elf_needed(path)
    files = {"/var/task/m.cpython-312-x86_64-linux-gnu.so": ps.FileRef(path, 1)}
    assert ps.missing_libraries(files, frozenset(needed)) == []
    (tmp_path / "blank").write_text("")  # the vendored copies only need their names here
    vendored = {**files, **{f"/var/task/m.libs/{n}": ps.FileRef(tmp_path / "blank", 0) for n in needed}}
    assert ps.missing_libraries(vendored, frozenset()) == []
    (problem,) = ps.missing_libraries(files, frozenset(needed[1:]))
    assert problem.startswith("/var/task/m.cpython-312-x86_64-linux-gnu.so links " + needed[0])
    unused = {f"/opt/pixdex/{name}": ps.FileRef(path, 1) for name in ps.UNUSED_LIBRARIES}
    assert ps.missing_libraries(unused, frozenset()) == []


# ---------------------------------------------------------------- cache


def test_cache_keeps_only_what_the_last_run_used(ps: ModuleType, tmp_path: Path) -> None:
    cache = ps.Cache(tmp_path)
    for name in ("x86_64-old", "x86_64-new", "wheels/old", "wheels/new"):
        (tmp_path / name).mkdir(parents=True)
    assert cache.entry(tmp_path / "x86_64-new") and cache.entry(tmp_path / "wheels" / "new")
    removed = cache.prune()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == ["wheels/old", "x86_64-old"]
    refreshing = ps.Cache(tmp_path, refresh=True)
    assert not refreshing.entry(tmp_path / "x86_64-new")  # rebuilt once per run
    assert refreshing.entry(tmp_path / "x86_64-new")

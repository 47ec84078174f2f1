"""The images ``ovsam everything`` works on, where their results go, and what is already done.

Layout: a single image's results go straight into ``--out``; for a folder, each image's go to
``--out/<file name>/`` (``photos/a.png`` -> ``out/a.png/``), so ``a.png`` and ``a.jpg`` get
folders of their own. Two images whose names differ only in case (``a.png``, ``A.PNG``) would
share a folder on a case-insensitive file system (macOS, Windows), and so would two differing
only in Unicode normalisation (``café.png`` with a composed or a decomposed ``é``, as
macOS's APFS and HFS+ compare names): such a folder is refused with the clashing names.
Only the images directly in the folder are processed; subfolders are counted, not searched,
and macOS's ``._NAME`` metadata files (:data:`APPLE_DOUBLE`) are passed over.

Resuming: ``--out/settings.json`` records the settings the results were made with, and each
``masks.json`` its own. A run with other settings than those recorded (or over results
without recorded settings, made by an older ovsam) is refused unless ``--overwrite`` is
given; otherwise an image is skipped when its ``masks.json`` was made with these settings
from this very image (so an interrupted ``--overwrite`` run resumes too). ``masks.json``
records the sha256 of the image file it was made from: a result of another image (an image
replaced under the same name, or another image sent to the same ``--out``) or without that
record is redone.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ovsam.cli.preflight import check_output
from ovsam.errors import InputError
from ovsam.fileio import json_safe
from ovsam.image_io import APPLE_DOUBLE
from ovsam.outputs import RESULT_FILES
from ovsam.run_settings import read_settings, settings_changes
from ovsam.weight_sources import sha256_file

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SETTINGS_FILE = "settings.json"
RESULT_FILE = "masks.json"
OVERLAY_FILE = "overlay.png"
OVERWRITE_HINT = "choose another --out, or pass --overwrite to recompute every image"

Job = tuple[Path, Path]  # (image file, its output folder)
Settings = Mapping[str, Any]


def list_jobs(source: Path, out: Path) -> list[Job]:
    """``(image, output folder)`` pairs for an image file (``out`` itself) or for every image
    file directly in a folder (``out / image.name``), sorted by name.

    Raises :class:`InputError` for a missing source, a folder without images, ``out`` or an
    image's output folder equal to the input folder, an output folder that cannot be created
    (:func:`check_output`), or names that differ only in case or Unicode normalisation
    (:func:`folder_key`)."""
    if source.is_file():
        return [(source, out)]
    if not source.is_dir():
        raise InputError(f"no such image file or folder: {source}")
    check_output(out, is_file=False)  # first: resolving a loop of links raises
    root = source.resolve()
    if out.resolve() == root:
        raise InputError(
            f"--out must not be the input folder {source}: each image's results go to a folder "
            "named after its file"
        )
    written = ovsam_outputs(source)
    images = sorted(  # a broken link too: it is named as failed, not passed over
        p
        for p in source.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not p.name.startswith(APPLE_DOUBLE)
        and (p.is_file() or not p.exists())
        and p not in written
    )
    if not images:
        besides = ""
        if written:
            names = ", ".join(p.name for p in written)
            besides = f" besides {names}, which an earlier ovsam run wrote there"
        raise InputError(
            f"folder {source} holds no images{besides} ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    by_key: dict[str, list[str]] = {}
    for image in images:
        by_key.setdefault(folder_key(image.name), []).append(image.name)
    clashes = [names for names in by_key.values() if len(names) > 1]
    if clashes:
        raise InputError(clash_message(source, clashes))
    jobs = [(image, out / image.name) for image in images]
    for image, folder in jobs:
        check_output(folder, is_file=False)
        if folder.resolve() == root:
            raise InputError(
                f"the results of {image.name} would go to the input folder {source} itself "
                "(--out is the folder above it), replacing its files: choose another --out"
            )
    return jobs


def folder_key(name: str) -> str:
    """``name`` as a case- and normalisation-insensitive file system compares it: Unicode's
    canonical caseless form, NFD(casefold(NFD(name)))."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def clash_message(source: Path, clashes: Sequence[Sequence[str]]) -> str:
    """Why the images of ``source`` are refused: each group in ``clashes`` names images that
    would share one output folder. Names that differ in Unicode normalisation look alike, so
    the message then shows every name escaped (``ascii``)."""
    normalisation = any(
        len({unicodedata.normalize("NFC", name) for name in names}) < len(names)
        for names in clashes
    )
    if normalisation:
        how = "case or Unicode normalisation (composed or decomposed accents)"
        system, show = "case- or normalisation-insensitive (macOS)", ascii
    else:
        how, system, show = "case", "case-insensitive", str
    listed = "; ".join("/".join(show(name) for name in names) for names in clashes)
    return (
        f"images in {source} whose names differ only in {how} would share an output folder "
        f"on a {system} file system: {listed} (rename them)"
    )


# Pictures ovsam writes into an --out folder, by the result file written beside them:
# ``everything`` on one image (masks.json) and ``segment`` (result.json).
_WRITTEN_BESIDE = {
    RESULT_FILE: (OVERLAY_FILE,),
    RESULT_FILES["json"]: (RESULT_FILES["mask"], RESULT_FILES["overlay"]),
}


def ovsam_outputs(folder: Path) -> list[Path]:
    """The pictures in ``folder`` that an ovsam run wrote there (an overlay or mask beside its
    result file), which a folder run skips rather than segmenting its own outputs."""
    if not folder.is_dir():
        return []
    written = (
        folder / name
        for result, names in _WRITTEN_BESIDE.items()
        if (folder / result).is_file()
        for name in names
        if (folder / name).is_file()
    )
    return list(dict.fromkeys(written))  # overlay.png once, whichever run wrote it


def subfolder_count(source: Path, out: Path) -> int:
    """How many subfolders of the input folder ``source`` are not searched (``out`` aside)."""
    if not source.is_dir():
        return 0
    target = out.resolve()
    return sum(1 for p in source.iterdir() if p.is_dir() and p.resolve() != target)


def file_sha256(path: Path) -> str | None:
    """sha256 of the file at ``path`` (hex), None when it cannot be read."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def read_result(folder: Path) -> dict[str, Any] | None:
    """``folder/masks.json`` as a dict; None when there is no readable result (redone)."""
    try:
        result = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def finished_jobs(
    jobs: Sequence[Job], out: Path, settings: Settings, overwrite: bool
) -> tuple[list[Job], list[Job]]:
    """``(done, changed)``: the jobs whose ``masks.json`` was made with ``settings`` from the
    image file as it is now, beside its overlay (to skip; none with ``overwrite``), and those
    made with ``settings`` from another image, an unreadable one or with no image sha256
    recorded (to redo), after refusing to resume over results made with other settings.
    Nothing is changed on disk here (see :func:`forget_results`).

    Raises :class:`InputError` (one line) when ``out/settings.json`` records other settings
    or is unreadable, or, without it, when a job's ``masks.json`` was made with other (or
    unrecorded) settings; ``overwrite`` allows both."""
    if overwrite:
        return [], []
    path = out / SETTINGS_FILE
    recorded = path.is_file()
    settings = json_safe(dict(settings))  # compared with saved ones as written (settings_changes)
    if recorded:
        saved = read_settings(path, OVERWRITE_HINT)
        if saved != settings:
            raise InputError(
                f"{out} holds results made with other settings "
                f"({settings_changes(saved, settings)}): {OVERWRITE_HINT}"
            )
    done, changed = [], []
    for job in jobs:
        result = read_result(job[1])
        if result is None or not (job[1] / OVERLAY_FILE).is_file():
            continue  # never finished (or failed, or its overlay lost): redone
        saved = result.get("settings")
        saved = saved if isinstance(saved, dict) else {}
        if saved == settings:
            digest = file_sha256(job[0])  # None: unreadable, redone (and reported) below
            same = digest is not None and result.get("image_sha256") == digest
            (done if same else changed).append(job)
        elif not recorded:
            why = settings_changes(saved, settings) if saved else "not recorded: an older ovsam"
            raise InputError(
                f"{job[1] / RESULT_FILE} was made with other settings ({why}): {OVERWRITE_HINT}"
            )
    # the others (failed, or left by an interrupted --overwrite run) are redone too
    return done, changed


def forget_results(folder: Path) -> None:
    """Remove a job's old ``masks.json`` and ``overlay.png`` before it is (re)done, so that a
    redo that fails (an unreadable image) or is interrupted never leaves the results of
    another image or of other settings (``--overwrite``) behind."""
    for name in (RESULT_FILE, OVERLAY_FILE):
        (folder / name).unlink(missing_ok=True)

"""Class vocabularies: the built-in lists, user lists (Python lists; text files and the command
line: :mod:`ovsam.vocab.loading`), synonyms.

A :class:`Vocabulary` is an ordered tuple of classes; each class has a display name and one or
more synonyms (the text bank scores a class by its best synonym). Built-in lists live in
``ovsam/vocab/data`` (provenance and licences in the README there):

========================  =======  =====================================================
name                      classes  what
========================  =======  =====================================================
``coco``                  80       COCO 2017 (category ids 1..90 kept in ``info``)
``coco_base``             48       OV-COCO seen classes (the OVR-CNN split)
``coco_novel``            17       OV-COCO unseen classes
``coco_ov``               65       base + novel (the OV-COCO evaluation vocabulary)
``lvis``                  1,203    LVIS v1, frequency r/c/f (337/461/405), official synonyms
``lvis_base``             866      LVIS common + frequent (seen in OV-LVIS training)
``lvis_rare``             337      LVIS rare (novel in OV-LVIS)
``imagenet1k``            1,000    ImageNet-1k, open_clip's clean names
``imagenet21k``           21,843   ImageNet-21k (fall 2011) synsets, WordNet lemmas
========================  =======  =====================================================

LVIS synonyms follow the official OV-SAM bank (``tools/gen_cls.py``, 1203 x 2 x 768): the
dataset's class name split by :func:`split_synonyms`, one name per class except
``tape_(sticky_cloth_or_paper)`` (split at ``_or_`` into ``tape (sticky cloth`` and
``paper)``), so the official checkpoints see the bank they were trained with. The display name
is the dataset name with spaces (``bow (weapon)``) and LVIS's own synonym lists are kept in
``info[i]["lvis_synonyms"]``. COCO classes have one name each: the official COCO bank uses
synonym lists (up to 17 per class) that only its repository ships, not a package this project
may read, so a COCO bank built here differs from the official one.

User names are compared as CLIP reads them (:func:`ovsam.clip.class_names.token_key`: cleaned
text, lower case, white space and punctuation spacing ignored), so names that would get the same
token ids in two classes are refused as duplicates. The built-in ``imagenet1k`` keeps open_clip's
two repeated names (``missile`` and ``sunglasses``, each in two classes; see the data README).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ovsam.clip.class_names import check_distinct_names
from ovsam.errors import InputError

DATA_DIR = Path(__file__).resolve().parent / "data"
MAX_CLASSES = 50_000
TEMPLATE_KINDS = ("vild", "openai", "simple", "none")


@dataclass(frozen=True)
class Vocabulary:
    """Ordered classes: ``classes[i]`` is the display name, ``synonyms[i]`` the names embedded
    for it (first = display name, except LVIS's official lower-cased split: see the module
    docstring), ``info[i]`` dataset metadata (``id``, ``split``, ``frequency``, ``wnid``,
    ``lvis_synonyms`` where known)."""

    name: str
    classes: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    info: tuple[Mapping[str, Any], ...]

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, name: str) -> int:
        """Position of the class whose display name is ``name``."""
        try:
            return self.classes.index(name)
        except ValueError:
            raise InputError(f"{name!r} is not a class of vocabulary {self.name!r}") from None

    @property
    def metadata(self) -> tuple[Mapping[str, Any], ...]:
        """Alias of :attr:`info`: per-class dataset metadata (``id``, ``split``, ...)."""
        return self.info

    def subset(
        self,
        keep: Sequence[int] | Callable[[Mapping[str, Any]], bool],
        name: str | None = None,
    ) -> Vocabulary:
        """The classes at the positions ``keep`` (in that order), or, when ``keep`` is a
        callable, those whose ``info`` satisfies it (in vocabulary order)."""
        if callable(keep):
            rows = [i for i, info in enumerate(self.info) if keep(info)]
        else:
            rows = [int(i) for i in keep]
            bad = [i for i in rows if not -len(self) <= i < len(self)]
            if bad:
                raise InputError(
                    f"class index {bad[0]} is out of range for vocabulary {self.name!r} "
                    f"({len(self)} classes)"
                )
            if len(set(r % len(self) for r in rows)) != len(rows):
                raise InputError(f"subset of {self.name!r} repeats a class index")
        return Vocabulary(
            name if name is not None else f"{self.name}_subset",
            tuple(self.classes[i] for i in rows),
            tuple(self.synonyms[i] for i in rows),
            tuple(self.info[i] for i in rows),
        )

    def fingerprint(self) -> str:
        """sha256 over names and synonyms (changes whenever any name changes)."""
        payload = json.dumps([self.classes, self.synonyms], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def comma_synonyms(entry: str) -> tuple[str, ...]:
    """A user's class entry read as the command line reads it: synonyms separated by commas,
    stripped, empty ones and repeats dropped, case kept (``"cup, mug"`` -> ``("cup", "mug")``)."""
    return tuple(dict.fromkeys(p.strip() for p in entry.split(",") if p.strip()))


def split_synonyms(name: str) -> tuple[str, ...]:
    """The official OV-SAM rule (``tools/gen_cls.py``): split at ``_or_``, ``/`` and ``,``;
    underscores become spaces; strip; lower case; duplicates dropped."""
    parts = name.replace("_or_", ",").replace("/", ",").split(",")
    cleaned = (p.replace("_", " ").strip().lower() for p in parts)
    return tuple(dict.fromkeys(p for p in cleaned if p))


def category_vocabulary(name: str, categories: Sequence[str]) -> Vocabulary:
    """A dataset's category names as a vocabulary embedded the way the official OV-SAM banks
    are: each class keeps its name as given (``aerosol_can``: predictions match the
    annotations) and is embedded with :func:`split_synonyms` of it (``aerosol can``). Two
    categories that CLIP reads alike (``person`` and ``Person``) are refused: their embeddings
    would be equal and the second could never be predicted."""
    names = tuple(categories)
    synonyms = tuple(split_synonyms(n) or (n,) for n in names)
    check_distinct_names(synonyms, [f"category {n!r}" for n in names])
    return Vocabulary(name, names, synonyms, tuple({} for _ in names))


def name_key(name: str) -> str:
    """How one class name is matched against another source's (a model's seen classes, a
    dataset's categories): underscores as spaces, whitespace collapsed, lower case
    (``"Traffic_Light"`` and ``"traffic  light"`` -> ``"traffic light"``)."""
    return " ".join(name.replace("_", " ").split()).lower()


def _spaced(names: Sequence[str]) -> tuple[str, ...]:
    """Dataset names with underscores as spaces, stripped; empty ones and repeats dropped."""
    cleaned = (n.replace("_", " ").strip() for n in names)
    return tuple(dict.fromkeys(n for n in cleaned if n))


def _from_rows(name: str, rows: Sequence[Mapping[str, Any]], lvis: bool = False) -> Vocabulary:
    """Dataset rows (``name``, ``synonyms``, metadata) as a vocabulary: display name = the name
    with spaces; synonyms = the name and its ``synonyms``, or for ``lvis`` the official split
    of the name (:func:`split_synonyms`), the name and its synonyms then in
    ``info["lvis_synonyms"]``."""
    classes, synonyms, info = [], [], []
    for row in rows:
        names = _spaced([row["name"], *row["synonyms"]])
        classes.append(names[0])
        synonyms.append(split_synonyms(row["name"]) if lvis else names)
        meta = {k: v for k, v in row.items() if k not in ("name", "synonyms")}
        info.append((meta | {"lvis_synonyms": names}) if lvis else meta)
    return Vocabulary(name, tuple(classes), tuple(synonyms), tuple(info))


def _read_data(file: str) -> dict[str, Any]:
    path = DATA_DIR / file
    raw = gzip.decompress(path.read_bytes()) if file.endswith(".gz") else path.read_bytes()
    return json.loads(raw)


_SUBSETS: dict[str, tuple[str, Callable[[Mapping[str, Any]], bool]]] = {
    "coco_base": ("coco", lambda info: info["split"] == "base"),
    "coco_novel": ("coco", lambda info: info["split"] == "novel"),
    "coco_ov": ("coco", lambda info: info["split"] != "none"),
    "lvis_base": ("lvis", lambda info: info["frequency"] != "r"),
    "lvis_rare": ("lvis", lambda info: info["frequency"] == "r"),
}
_FILES = {
    "coco": "coco.json",
    "lvis": "lvis.json",
    "imagenet1k": "imagenet1k.json",
    "imagenet21k": "imagenet21k.json.gz",
}
BUILTIN_VOCABULARIES = (*_FILES, *_SUBSETS)


@cache
def builtin_vocabulary(name: str) -> Vocabulary:
    """A built-in vocabulary by name (see the module docstring)."""
    if name in _SUBSETS:
        parent, keep = _SUBSETS[name]
        return builtin_vocabulary(parent).subset(keep, name)
    if name not in _FILES:
        raise InputError(
            f"unknown vocabulary {name!r}; give a built-in one ({', '.join(BUILTIN_VOCABULARIES)}), a "
            "text file (one class per line) or a list of class names (['cat', 'dog, puppy'])"
        )
    return _from_rows(name, _read_data(_FILES[name])["classes"], lvis=name == "lvis")


def vocabulary_from_names(
    entries: Sequence[str],
    name: str = "custom",
    max_classes: int = MAX_CLASSES,
    where: str = "entry",
    positions: Sequence[int] | None = None,
) -> Vocabulary:
    """A vocabulary from class strings; commas separate synonyms (``"cat, kitty"``).

    Raises :class:`InputError` for an empty list, an empty entry, a name CLIP cannot embed as
    written (no visible character, or CLIP's special tokens in it), a name given in two entries
    (display names and synonyms alike, compared as CLIP reads them: ``"cup, mug"`` then
    ``"Mug"``, ``"hot-dog"`` then ``"Hot - dog"``), or more than ``max_classes`` classes.
    Messages cite ``where`` numbers (``positions``, default 1..N).
    """
    if isinstance(entries, str):
        entries = [entries]
    classes: list[tuple[str, ...]] = []
    numbers = positions if positions is not None else range(1, len(entries) + 1)
    places = [f"{where} {position}" for position in numbers]
    for place, entry in zip(places, entries, strict=True):
        if not isinstance(entry, str):
            raise InputError(f"class names must be strings, got {type(entry).__name__} at {place}")
        names = comma_synonyms(entry)
        if not names:
            raise InputError(f"{place} is an empty class name")
        classes.append(names)
    if not classes:
        raise InputError("vocabulary is empty: give at least one class name")
    if len(classes) > max_classes:
        raise InputError(f"vocabulary has {len(classes)} classes; the limit is {max_classes}")
    check_distinct_names(classes, places)
    return Vocabulary(
        name, tuple(c[0] for c in classes), tuple(classes), tuple({} for _ in classes)
    )


def _lvis_categories(annotations: str | Path | Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if not isinstance(annotations, Mapping):
        try:
            annotations = json.loads(Path(annotations).read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read LVIS annotations {annotations}: {exc}") from exc
    categories = annotations.get("categories") if isinstance(annotations, Mapping) else None
    if not categories or not isinstance(categories, list):
        raise InputError("LVIS annotations have no 'categories' list")
    for index, category in enumerate(categories):
        where = f"LVIS category {index}" + (
            f" (id {category.get('id')!r})" if isinstance(category, Mapping) else ""
        )
        if not isinstance(category, Mapping):
            raise InputError(f"{where} is a {type(category).__name__}, not an object")
        missing = [k for k in ("id", "name", "frequency") if k not in category]
        if missing:
            raise InputError(f"{where} lacks the field(s) {', '.join(missing)}")
        synonyms = category.get("synonyms", [])
        if (
            not isinstance(category["id"], int)
            or not isinstance(category["name"], str)
            or not isinstance(synonyms, list)
            or not all(isinstance(n, str) for n in synonyms)
        ):
            raise InputError(
                f"{where}: expected an integer id, a string name and a list of string synonyms"
            )
        if not category["name"].replace("_", " ").strip():  # was an IndexError
            raise InputError(f"{where}: name {category['name']!r} has no visible character")
        if category["frequency"] not in ("r", "c", "f"):
            raise InputError(
                f"{where}: frequency {category['frequency']!r} is not 'r', 'c' or 'f' "
                "(rare, common, frequent)"
            )
    return sorted(categories, key=lambda c: c["id"])


def lvis_vocabulary_from_annotations(annotations: str | Path | Mapping[str, Any]) -> Vocabulary:
    """The vocabulary (names, ids, r/c/f) in an LVIS annotation file's ``categories``, with
    synonyms as the built-in ``lvis`` has them (the official split of each name; the file's
    synonyms in ``info["lvis_synonyms"]``); categories that CLIP reads alike are refused."""
    rows = [
        {
            "name": c["name"],
            "synonyms": c.get("synonyms", []),
            "id": c["id"],
            "frequency": c["frequency"],
        }
        for c in _lvis_categories(annotations)
    ]
    vocabulary = _from_rows("lvis", rows, lvis=True)
    check_distinct_names(vocabulary.synonyms, [f"category {n!r}" for n in vocabulary.classes])
    return vocabulary


def lvis_frequencies_from_annotations(
    annotations: str | Path | Mapping[str, Any],
) -> dict[int, str]:
    """``{category_id: "r" | "c" | "f"}`` from an LVIS annotation file (the OV-LVIS split)."""
    return {c["id"]: c["frequency"] for c in _lvis_categories(annotations)}


@cache
def prompt_templates(kind: str = "vild") -> tuple[str, ...]:
    """Prompt ensembles: ``vild`` (14, the official OV-SAM bank), ``openai`` (80, CLIP's
    ImageNet ensemble), ``simple`` (7), ``none`` (the bare name)."""
    if kind == "none":
        return ("{}",)
    if kind not in TEMPLATE_KINDS:
        raise InputError(
            f"unknown template set {kind!r}; choose one of {', '.join(TEMPLATE_KINDS)}"
        )
    return tuple(_read_data("templates.json")["templates"][kind])

"""Text-embedding banks: class names x prompt templates → one L2-normalised vector per name.

``build_text_bank(model, classes, templates)`` embeds every synonym of every class with every
template (``"a photo of a {}."`` ...), averages the template embeddings of each synonym and
L2-normalises the mean (the ViLD / OpenAI prompt ensemble). A class scores the maximum cosine
over its synonyms, as the official OV-SAM classifier does.

Banks are built in batches of synonyms (memory stays bounded for ImageNet-21k's ~21K names;
token tensors are cut after the last end-of-text token of each batch, which the causal mask and
EOT pooling make exact) and cached under ``<cache dir>/text_banks/<key>.safetensors``, where the
key hashes the model architecture, the weights' identity, the names and the templates: any
change rebuilds, and concurrent writers are safe (each writes a temporary file and renames it
into place). A name whose prompt in any template is too long for CLIP's 77-token context is
refused (the tokenizer would cut it silently). A bank's class names are a vocabulary's display
names (``classes``), or the first synonym of each class for plain lists.
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Formatter

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ovsam.clip.class_names import check_distinct_names
from ovsam.clip.model import CLIP
from ovsam.clip.tokenizer import get_tokenizer, tokenize
from ovsam.errors import InputError
from ovsam.fileio import atomic_write_bytes
from ovsam.weights import cache_dir

ClassNames = Sequence[str | Sequence[str]]
# 2: prompts holding token 0 ('!') are no longer cut short (banks of format 1 may be wrong).
BANK_FORMAT = "ovsam-text-bank-2"


@dataclass(frozen=True)
class TextBank:
    """``embeddings``: ``TxD`` unit vectors, one per synonym; ``class_index``: ``T`` class ids;
    ``synonyms``: each class's embedded names, when known (:func:`build_text_bank` sets them)."""

    names: tuple[str, ...]
    embeddings: torch.Tensor
    class_index: torch.Tensor
    key: str
    synonyms: tuple[tuple[str, ...], ...] | None = None

    def __post_init__(self) -> None:
        """Refuse a bank that could not label anything: no classes, rows that do not pair
        up with class ids in ``range(len(names))``, or NaN / infinite embeddings."""
        if not self.names:
            raise InputError("text bank has no classes: give at least one class name")
        rows = self.embeddings.shape[0] if self.embeddings.dim() == 2 else -1
        if rows < 1 or self.class_index.shape != (rows,):
            raise InputError(
                f"text bank embeddings must be TxD with one class id each; got embeddings "
                f"{tuple(self.embeddings.shape)} and class ids {tuple(self.class_index.shape)}"
            )
        if not bool(torch.isfinite(self.embeddings).all()):
            raise InputError("text bank embeddings hold NaN or infinite values")
        ids = self.class_index
        integer = ids.dtype in (torch.int32, torch.int64)
        if not integer or int(ids.min()) < 0 or int(ids.max()) >= len(self.names):
            raise InputError(
                f"text bank class ids must be int32/int64 in [0, {len(self.names)}), "
                f"got {ids.dtype} ids in [{ids.min().item()}, {ids.max().item()}]"
            )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def similarity(self, regions: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``NxC`` of ``NxD`` region embeddings (normalised here) with each
        class: the maximum over the class's synonyms."""
        if regions.shape[-1] != self.dim:
            raise InputError(
                f"region embeddings have {regions.shape[-1]} dims but the text bank has {self.dim}"
            )
        bank = self.embeddings.to(regions.device, regions.dtype)
        per_synonym = F.normalize(regions, dim=-1) @ bank.T
        out = per_synonym.new_full((regions.shape[0], len(self.names)), float("-inf"))
        index = self.class_index.to(regions.device).expand_as(per_synonym)
        return out.scatter_reduce(1, index, per_synonym, reduce="amax")


def _class_lists(classes: ClassNames) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Display names and synonym lists of ``classes``: a vocabulary's ``classes`` and
    ``synonyms``, or, for a list, its strings and synonym lists (display = first synonym; a
    name in two classes is refused, see :func:`~ovsam.clip.class_names.check_distinct_names`)."""
    if isinstance(classes, str):
        raise InputError(
            f"classes must be a list of names or a Vocabulary, not a string: pass [{classes!r}] "
            "for one class"
        )
    synonyms = getattr(classes, "synonyms", None)
    raw = synonyms if synonyms is not None else classes
    lists = []
    for i, item in enumerate(raw):
        if not isinstance(item, str) and (
            isinstance(item, bytes) or not isinstance(item, Iterable)
        ):
            raise InputError(
                f"class {i} must be a name or a list of synonyms (strings), got {item!r}"
            )
        names = (item,) if isinstance(item, str) else tuple(item)
        if not all(isinstance(n, str) for n in names):
            bad = next(n for n in names if not isinstance(n, str))
            raise InputError(f"class {i}: a synonym must be a string, got {bad!r}")
        if not names or not all(n.strip() for n in names):
            raise InputError(f"class {i} has an empty name")
        lists.append(names)
    if not lists:
        raise InputError("vocabulary is empty: give at least one class name")
    if synonyms is None:  # a vocabulary's names were checked when it was made
        check_distinct_names(lists, [f"class {i}" for i in range(len(lists))])
    display = getattr(classes, "classes", None) if synonyms is not None else None
    return tuple(n.strip() for n in display or [s[0] for s in lists]), lists


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """``templates`` as a tuple; :class:`InputError` naming the first one that is not a format
    string with exactly one ``{}`` field (``"a {} of {color}"``, ``"a {0}"``, ``"a {} {"``)."""
    if isinstance(templates, str):
        raise InputError(
            f"templates must be a list of format strings, not a string: pass [{templates!r}] "
            "for one template"
        )
    templates = tuple(templates)
    if not templates:
        raise InputError("no prompt templates given")
    for template in templates:
        try:
            fields = [
                (name, spec, conversion)
                for _, name, spec, conversion in Formatter().parse(template)
                if name is not None
            ]
            if len(fields) == 1 and fields[0][0] == "":
                template.format("x")
        except (ValueError, LookupError, AttributeError, TypeError) as exc:
            message = f"template {template!r} is not a valid format string: {exc}"
            raise InputError(message) from None
        if fields != [("", "", None)]:
            raise InputError(
                f"each template needs exactly one '{{}}' placeholder: {template!r} (a plain one: "
                "no index, name, conversion or format spec)"
            )
    return templates


def check_context(names: Sequence[str], templates: Sequence[str], context_length: int) -> None:
    """Refuse (:class:`InputError`) a name whose prompt in some template does not fit CLIP's
    text context: the tokenizer would cut it, so names that differ only at the end would get
    the same embedding. Every template is counted with the name in it, as the name can merge
    with the text around it (``"y."`` then ``"."``). (The built-in vocabularies need at most
    24 tokens of 77; ImageNet-21k's 40,742 names x the 14 ViLD templates take ~7 s on two CPU
    cores; a vocabulary checked lately is not counted again, e.g. by the server and then by
    its bank.)"""
    _check_context(tuple(names), tuple(templates), context_length)


def check_vocabulary_context(
    classes: ClassNames, templates: Sequence[str], context_length: int
) -> None:
    """:func:`check_context` of every synonym of ``classes`` (as for :func:`build_text_bank`),
    e.g. when a vocabulary is given, before any model is loaded or bank built."""
    check_context(_embedded_names(_class_lists(classes)[1]), templates, context_length)


def _embedded_names(synonyms: Sequence[Sequence[str]]) -> list[str]:
    """Every synonym of every class, in the order of the bank's rows."""
    return [name.strip() for names in synonyms for name in names]


@functools.lru_cache(maxsize=16)
def _check_context(names: tuple[str, ...], templates: tuple[str, ...], context_length: int) -> None:
    tokenizer = get_tokenizer()
    for name in names:
        counts = [tokenizer.count(template.format(name)) for template in templates]
        worst = max(range(len(templates)), key=counts.__getitem__)
        if counts[worst] > context_length:
            short = name if len(name) <= 40 else f"{name[:37]}..."
            raise InputError(
                f"class name {short!r} is too long: {len(tokenizer.encode(name))} tokens, "
                f"{counts[worst]} in the prompt {templates[worst]!r}; CLIP's text context "
                f"holds {context_length}"
            )


def text_tower_fingerprint(model: CLIP) -> str:
    """sha256 over the text tower's parameters (identifies weights with no known file hash).

    Remembered on ``model`` while every text tensor is the same memory at the same version
    (torch counts in-place changes: a load, an optimizer step; not for tensors made in
    inference mode, which are hashed every time); hashing RN50x16's takes ~0.6 s. Changes made
    through ``.data`` escape the count: after such edits pass :func:`build_text_bank` a
    ``weights_id`` of your own.
    """
    tensors = [(k, v) for k, v in model.state_dict().items() if not k.startswith("visual.")]
    version = tuple((k, v.data_ptr(), v._version, v.dtype, v.device) for k, v in tensors)
    remembered = getattr(model, "_text_fingerprint", None)
    if remembered is not None and remembered[0] == version:
        return remembered[1]
    digest = hashlib.sha256()
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    if not any(v.is_inference() for _, v in tensors):  # those keep no version count
        model._text_fingerprint = (version, digest.hexdigest())
    return digest.hexdigest()


def bank_key(
    model: CLIP, weights_id: str, synonyms: Sequence[Sequence[str]], templates: Sequence[str]
) -> str:
    """Cache key: sha256 of (format, architecture, text tower dtype, weights id, names,
    templates). The dtype counts: an fp16 tower embeds otherwise than an fp32 one with the
    same (fp16-exact) weights, which have the same fingerprint."""
    dtype = next(p.dtype for n, p in model.named_parameters() if not n.startswith("visual."))
    payload = json.dumps(
        [BANK_FORMAT, repr(model.config), str(dtype), weights_id, [list(s) for s in synonyms],
         list(templates)]
    )  # fmt: skip
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@torch.inference_mode()
def encode_prompts(model: CLIP, texts: Sequence[str]) -> torch.Tensor:
    """``NxD`` normalised embeddings of ``texts``. Token tensors are cut after the last
    end-of-text token (the largest id, so each row's argmax); id 0 is a real token (``!``)."""
    tokens = tokenize(list(texts), model.config.text.context_length)
    length = int(tokens.argmax(dim=1).max()) + 1
    device = next(model.parameters()).device
    return model.encode_text(tokens[:, :length].to(device), normalize=True).float().cpu()


class BuildStopped(Exception):
    """A text bank's build was stopped between batches: its ``stop()`` said so."""


def _embed_synonyms(
    model: CLIP,
    names: Sequence[str],
    templates: Sequence[str],
    batch_texts: int,
    progress: bool,
    stop: Callable[[], bool] | None,
) -> torch.Tensor:
    """``len(names) x D``: each name's normalised template ensemble. A name given twice
    (ImageNet-21k has 9% of such synonyms) is embedded once, and names are embedded shortest
    first, so that a batch, cut at its longest prompt, holds little padding."""
    tokenizer = get_tokenizer()
    distinct = sorted(dict.fromkeys(names), key=tokenizer.count)
    per_batch = max(1, batch_texts // len(templates))
    out = torch.empty(len(distinct), model.embed_dim)
    bar = tqdm(total=len(distinct), unit="name", desc="text bank", disable=not progress)
    for start in range(0, len(distinct), per_batch):
        if stop is not None and stop():
            bar.close()
            raise BuildStopped(f"text bank build stopped after {start} of {len(distinct)} names")
        chunk = distinct[start : start + per_batch]
        texts = [template.format(name) for name in chunk for template in templates]
        parts = range(0, len(texts), batch_texts)  # one name's templates may be more than that
        emb = torch.cat([encode_prompts(model, texts[i : i + batch_texts]) for i in parts])
        emb = emb.view(len(chunk), len(templates), -1)
        out[start : start + len(chunk)] = F.normalize(emb.mean(dim=1), dim=-1)
        bar.update(len(chunk))
    bar.close()
    row = {name: i for i, name in enumerate(distinct)}
    return out[[row[name] for name in names]]


def _read_cached(
    path: Path, key: str, names: tuple[str, ...], synonyms: list[tuple[str, ...]]
) -> TextBank | None:
    """The bank cached under ``key``, its classes named ``names`` (the key covers what is
    embedded, not the display names: a vocabulary with other display names but the same
    synonyms shares the file); None when missing, unreadable or damaged (safetensors keeps
    no checksum: rows that are not finite unit vectors, or class ids other than one per
    synonym of ``synonyms``, are damage)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            if (fh.metadata() or {}).get("key") != key:
                return None
            embeddings, class_index = fh.get_tensor("embeddings"), fh.get_tensor("class_index")
            bank = TextBank(names, embeddings, class_index, key, tuple(synonyms))
    except Exception:  # noqa: BLE001 - an unreadable cache file is rebuilt, not fatal
        return None
    norms = torch.linalg.vector_norm(bank.embeddings.float(), dim=1)
    unit = bool(((norms - 1).abs() < 1e-3).all())  # False for NaN too
    return bank if unit and torch.equal(bank.class_index, _class_index(synonyms)) else None


def _class_index(synonyms: Sequence[Sequence[str]]) -> torch.Tensor:
    """The class id of each synonym's row."""
    return torch.tensor([i for i, names in enumerate(synonyms) for _ in names])


def build_text_bank(
    model: CLIP,
    classes: ClassNames,
    templates: Sequence[str] = ("a photo of a {}.",),
    *,
    weights_id: str | None = None,
    batch_texts: int = 512,
    cache: bool | Path = True,
    progress: bool = True,
    stop: Callable[[], bool] | None = None,
) -> TextBank:
    """Embed ``classes`` (a list of names or synonym lists, or a vocabulary with ``.classes``
    and ``.synonyms``; a bare string is refused).

    ``weights_id`` names the weights in the cache key (e.g. the checkpoint's sha256); by
    default the text tower's parameters are hashed. ``cache``: True for the default cache
    directory, a directory path, or False to skip the cache (a cache that cannot be written
    is skipped with a warning: the bank is built again next time). ``batch_texts`` bounds the
    number of prompts encoded at once. ``stop`` is asked before each batch: when it answers
    True the build ends with :class:`BuildStopped` (nothing is cached).
    """
    display, synonyms = _class_lists(classes)
    templates = check_templates(templates)
    if isinstance(batch_texts, bool) or not isinstance(batch_texts, int) or batch_texts < 1:
        raise InputError(f"batch_texts must be a positive integer, got {batch_texts!r}")
    key = bank_key(model, weights_id or text_tower_fingerprint(model), synonyms, templates)
    path = None
    if cache:
        folder = cache_dir() / "text_banks" if cache is True else Path(cache)
        path = folder / f"{key}.safetensors"
        if path.is_file() and (hit := _read_cached(path, key, display, synonyms)) is not None:
            return hit
    flat = _embedded_names(synonyms)
    check_context(flat, templates, model.config.text.context_length)
    embeddings = _embed_synonyms(model, flat, templates, batch_texts, progress, stop)
    class_index = _class_index(synonyms)
    bank = TextBank(display, embeddings, class_index, key, tuple(synonyms))
    if path is not None:
        _save_bank(path, key, embeddings, class_index)
    return bank


def _save_bank(path: Path, key: str, embeddings: torch.Tensor, class_index: torch.Tensor) -> None:
    """Cache a bank at ``path``; a cache that cannot be written (read-only, not a folder) is
    a warning, not a failure: the embeddings were computed and are returned all the same."""
    from safetensors.torch import save

    # serialised in memory, then written by ovsam (an OSError, such as a full disk, is ours
    # to catch: safetensors' own file writing raises its SafetensorError instead)
    data = save(
        {"embeddings": embeddings, "class_index": class_index},
        {"key": key, "format": BANK_FORMAT},
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        warnings.warn(
            f"text bank not cached ({path.parent}: {exc.strerror or exc}); it is built again "
            "next time",
            stacklevel=3,
        )

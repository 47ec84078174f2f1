"""Where CLIP weights come from: OpenAI's releases and open_clip's LAION ConvNeXt models.

Each (architecture, tag) pair maps to a registered :class:`ovsam.weights.WeightsSpec`, so
``create_model("RN50x16", pretrained="openai")`` resolves, downloads into the cache and
verifies exactly like the SAM weights. OpenAI's URLs carry the file's sha256 in their path,
which is checked after download. The open_clip files on Hugging Face are not pinned: their
sha256 is published there (in each file's Git LFS pointer) but could not be read from where
this registry was written, so a download is only checked by loading it strictly, which
rejects a truncated or wrong file, not a changed one.
"""

from __future__ import annotations

from pathlib import Path

from ovsam.errors import InputError
from ovsam.weights import (
    UrlSource,
    WeightsSpec,
    get_weights_spec,
    register_weights,
    weights_file,
)

_OPENAI_URL = "https://openaipublic.azureedge.net/clip/models/{sha}/{file}"
_OPENAI = {
    "RN50": "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
    "RN101": "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599",
    "RN50x4": "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd",
    "RN50x16": "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa",
    "RN50x64": "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c",
    "ViT-B-32": "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    "ViT-B-16": "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
    "ViT-L-14": "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
    "ViT-L-14-336": "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
}
_OPENAI_FILES = {"ViT-L-14-336": "ViT-L-14-336px.pt"}
_HF_URL = "https://huggingface.co/laion/{repo}/resolve/main/open_clip_pytorch_model.bin"
_LAION = {
    (
        "convnext_base_w",
        "laion2b_s13b_b82k_augreg",
    ): "CLIP-convnext_base_w-laion2B-s13B-b82K-augreg",
    ("convnext_base_w_320", "laion_aesthetic_s13b_b82k_augreg"): (
        "CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K-augreg"
    ),
    (
        "convnext_large_d",
        "laion2b_s26b_b102k_augreg",
    ): "CLIP-convnext_large_d.laion2B-s26B-b102K-augreg",
    ("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup"): (
        "CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup"
    ),
    ("convnext_xxlarge", "laion2b_s34b_b82k_augreg_soup"): (
        "CLIP-convnext_xxlarge-laion2B-s34B-b82K-augreg-soup"
    ),
}

PRETRAINED: dict[tuple[str, str], str] = {}
for _arch, _sha in _OPENAI.items():
    _file = _OPENAI_FILES.get(_arch, f"{_arch}.pt")
    PRETRAINED[(_arch, "openai")] = register_weights(
        WeightsSpec(
            name=f"clip_{_arch}_openai",
            filename=f"clip_{_file}",
            sha256=_sha,
            size=None,
            sources=(UrlSource(_OPENAI_URL.format(sha=_sha, file=_file)),),
            license="MIT",
            description=f"OpenAI CLIP {_arch} (TorchScript archive, fp16)",
        )
    ).name
for (_arch, _tag), _repo in _LAION.items():
    PRETRAINED[(_arch, _tag)] = register_weights(
        WeightsSpec(
            name=f"clip_{_arch}_{_tag}",
            filename=f"clip_{_arch}_{_tag}.bin",
            sha256=None,
            size=None,
            sources=(UrlSource(_HF_URL.format(repo=_repo)),),
            license="MIT",
            description=f"open_clip {_arch} trained on LAION ({_tag})",
        )
    ).name


def list_pretrained(arch: str | None = None) -> list[tuple[str, str]]:
    """Registered ``(architecture, tag)`` pairs, optionally for one architecture."""
    return [key for key in PRETRAINED if arch is None or key[0] == arch]


def clip_weights_file(arch: str, weights: str | Path) -> Path | None:
    """The local file that ``weights`` names for CLIP ``arch``, or None when it names registered
    weights. A registered tag wins over a file of the same name; a ``Path`` is always a file;
    any other string is a file when it exists or looks like a path by the rule ``--checkpoint``
    uses (:func:`ovsam.checkpoint.looks_like_path`), else a tag (an unknown one:
    :func:`pretrained_weights_name` lists the known)."""
    if isinstance(weights, Path):
        return weights
    if (arch, weights) in PRETRAINED:
        return None
    from ovsam.checkpoint import looks_like_path  # imports torch: only when a path is possible

    path = Path(weights)
    return path if path.is_file() or looks_like_path(weights) else None


def pretrained_weights_name(arch: str, tag: str) -> str:
    """Weights-registry name of ``arch`` trained as ``tag``; :class:`InputError` if unknown."""
    name = PRETRAINED.get((arch, tag))
    if name is None:
        tags = ", ".join(t for a, t in PRETRAINED if a == arch) or "none"
        raise InputError(f"no pretrained weights {tag!r} for CLIP {arch}; known tags: {tags}")
    return name


def clip_weights_sha256(arch: str, weights: str | Path) -> str | None:
    """sha256 of the CLIP weights ``weights`` names for ``arch`` (see :func:`clip_weights_file`):
    a file's content (hashed once per version of it), a registered tag's registered digest or,
    for weights registered without one (the LAION ones), the digest of the cached download;
    None when there is neither, and for a missing file."""
    from ovsam.clip.config import canonical_name
    from ovsam.weights_cache import remembered_sha256

    arch = canonical_name(arch)
    path = clip_weights_file(arch, weights)
    if path is None:
        spec = get_weights_spec(pretrained_weights_name(arch, str(weights)))
        if spec.sha256 is not None:
            return spec.sha256
        path = weights_file(spec)
    return remembered_sha256(path) if path.is_file() else None

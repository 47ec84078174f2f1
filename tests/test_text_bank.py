"""Text-embedding banks (ensembles, synonyms, cache) and zero-shot region classification."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ovsam.clip.text_bank as text_bank
from ovsam.clip.config import CLIPConfig, VisionConfig, get_clip_config
from ovsam.clip.model import CLIP
from ovsam.clip.region_classifier import classify_regions, crop_regions
from ovsam.clip.text_bank import build_text_bank
from ovsam.clip.tokenizer import get_tokenizer, tokenize
from ovsam.errors import InputError

TINY = CLIPConfig(
    32,
    VisionConfig("vit", 64, (2,), 64, 16),
    replace(get_clip_config("RN50").text, width=64, heads=1, layers=2),
    True,
)
TEMPLATES = ("a photo of a {}.", "there is a {} in the scene")


@pytest.fixture()
def model() -> CLIP:
    torch.manual_seed(0)
    return CLIP(TINY).eval()


def _reference_embedding(model: CLIP, name: str, templates: tuple[str, ...]) -> torch.Tensor:
    with torch.inference_mode():  # full 77-token sequences, no trimming
        emb = model.encode_text(tokenize([t.format(name) for t in templates]), normalize=True)
    return F.normalize(emb.mean(dim=0), dim=-1)


def test_bank_is_the_normalised_template_ensemble(model: CLIP, tmp_path: Path) -> None:
    bank = build_text_bank(
        model, ["cat", ("dog", "puppy")], TEMPLATES, cache=tmp_path, progress=False
    )
    assert bank.names == ("cat", "dog") and len(bank) == 2
    assert bank.embeddings.shape == (3, 32) and bank.class_index.tolist() == [0, 1, 1]
    for row, name in enumerate(["cat", "dog", "puppy"]):
        torch.testing.assert_close(
            bank.embeddings[row], _reference_embedding(model, name, TEMPLATES), atol=1e-5, rtol=1e-5
        )
    # a region equal to a synonym's embedding scores cosine 1 for its class
    sims = bank.similarity(bank.embeddings[2:3] * 3.0)
    assert sims.argmax().item() == 1 and sims[0, 1].item() == pytest.approx(1.0, abs=1e-5)


def test_a_prompt_with_token_0_keeps_its_end_token(model: CLIP) -> None:
    # "!" before other punctuation is id 0, a real token: rows are not cut at the zero count
    name = "!@# !@#"
    assert get_tokenizer().encode(name).count(0) == 2
    bank = build_text_bank(model, [name, "cat"], TEMPLATES, cache=False, progress=False)
    for row, synonym in enumerate([name, "cat"]):
        torch.testing.assert_close(
            bank.embeddings[row],
            _reference_embedding(model, synonym, TEMPLATES),
            atol=1e-5,
            rtol=1e-5,
        )


def test_bank_names_are_a_vocabularys_display_names(model: CLIP) -> None:
    from ovsam.vocab import builtin_vocabulary

    lvis = builtin_vocabulary("lvis")
    pair = lvis.subset([lvis.index("tape (sticky cloth or paper)"), lvis.index("Band Aid")])
    bank = build_text_bank(model, pair, TEMPLATES, cache=False, progress=False)
    assert bank.names == ("tape (sticky cloth or paper)", "Band Aid")
    assert bank.class_index.tolist() == [0, 0, 1]  # 'tape (sticky cloth', 'paper)', 'band aid'
    torch.testing.assert_close(
        bank.embeddings[1], _reference_embedding(model, "paper)", TEMPLATES), atol=1e-5, rtol=1e-5
    )


def test_cache_hit_and_rebuild_on_any_change(
    model: CLIP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = text_bank.encode_prompts

    def counting(m: CLIP, texts: list[str]) -> torch.Tensor:
        calls.append(len(texts))
        return real(m, texts)

    monkeypatch.setattr(text_bank, "encode_prompts", counting)
    first = build_text_bank(model, ["cat", "dog"], TEMPLATES, cache=tmp_path, progress=False)
    assert calls and len(list(tmp_path.glob("*.safetensors"))) == 1
    calls.clear()
    hit = build_text_bank(model, ["cat", "dog"], TEMPLATES, cache=tmp_path, progress=False)
    assert calls == [] and hit.key == first.key
    torch.testing.assert_close(hit.embeddings, first.embeddings)
    (tmp_path / "a-file").write_text("x")  # a cache that cannot be written: a warning only
    with pytest.warns(UserWarning, match=r"text bank not cached \(.*a-file/sub: Not a directory"):
        unwritten = build_text_bank(
            model, ["cat", "dog"], TEMPLATES, cache=tmp_path / "a-file" / "sub", progress=False
        )  # a read-only $OVSAM_CACHE_DIR failed every labelled command after embedding
    torch.testing.assert_close(unwritten.embeddings, first.embeddings)
    keys = {first.key}
    for names, templates in ((["cat", "cow"], TEMPLATES), (["cat", "dog"], TEMPLATES[:1])):
        calls.clear()
        keys.add(build_text_bank(model, names, templates, cache=tmp_path, progress=False).key)
        assert calls
    with torch.no_grad():
        model.ln_final.bias.add_(0.01)  # other weights, same architecture
    calls.clear()
    keys.add(build_text_bank(model, ["cat", "dog"], TEMPLATES, cache=tmp_path, progress=False).key)
    assert calls and len(keys) == 4
    assert (
        build_text_bank(
            model, ["cat", "dog"], TEMPLATES, weights_id="sha-x", cache=tmp_path, progress=False
        ).key
        not in keys
    )


def test_the_text_fingerprint_is_remembered_until_a_text_weight_changes(model: CLIP) -> None:
    first = text_bank.text_tower_fingerprint(model)
    model._text_fingerprint = (model._text_fingerprint[0], "remembered")
    assert text_bank.text_tower_fingerprint(model) == "remembered"  # not hashed again
    with torch.no_grad():
        next(model.visual.parameters()).add_(1.0)  # the image tower is not hashed
    assert text_bank.text_tower_fingerprint(model) == "remembered"
    with torch.no_grad():
        model.token_embedding.weight[0, 0] += 1.0
    changed = text_bank.text_tower_fingerprint(model)
    assert changed not in ("remembered", first) and len(changed) == 64
    with torch.inference_mode():  # no version count to rely on: hashed every time
        made_in_inference = CLIP(TINY)
    assert len(text_bank.text_tower_fingerprint(made_in_inference)) == 64
    assert not hasattr(made_in_inference, "_text_fingerprint")


def test_display_names_share_the_bank_of_the_same_synonyms(
    model: CLIP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """eval names LVIS classes 'aerosol_can', the built-in list 'aerosol can': the same
    synonyms are embedded once and each caller gets its own names."""
    from ovsam.vocab import Vocabulary

    def vocabulary(display: str) -> Vocabulary:
        return Vocabulary("v", (display, "cat"), (("aerosol can",), ("cat",)), ({}, {}))

    first = build_text_bank(model, vocabulary("aerosol_can"), TEMPLATES, cache=tmp_path)
    monkeypatch.setattr(text_bank, "encode_prompts", None)  # a rebuild would fail
    for display in ("aerosol can", "aerosol_can"):
        hit = build_text_bank(model, vocabulary(display), TEMPLATES, cache=tmp_path)
        assert hit.names == (display, "cat") and hit.key == first.key
        assert torch.equal(hit.embeddings, first.embeddings)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1


def test_batches_are_bounded_and_concurrent_writers_are_safe(
    model: CLIP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    real = text_bank.encode_prompts
    monkeypatch.setattr(
        text_bank, "encode_prompts", lambda m, t: (sizes.append(len(t)), real(m, t))[1]
    )
    names = [f"thing {i}" for i in range(50)]
    banks = []
    threads = [
        threading.Thread(
            target=lambda: banks.append(
                build_text_bank(
                    model, names, TEMPLATES, batch_texts=16, cache=tmp_path, progress=False
                )
            )
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(banks) == 3 and max(sizes) <= 16
    sizes.clear()  # more templates than a batch holds: each name's are split
    build_text_bank(model, names[:2], TEMPLATES, batch_texts=1, cache=False, progress=False)
    assert sizes == [1] * 2 * len(TEMPLATES)
    assert [p.name for p in tmp_path.iterdir()] == [f"{banks[0].key}.safetensors"]
    reread = build_text_bank(model, names, TEMPLATES, cache=tmp_path, progress=False)
    torch.testing.assert_close(reread.embeddings, banks[0].embeddings)


def test_a_list_naming_one_class_twice_is_refused_as_clip_reads_it(model: CLIP) -> None:
    """Plain lists get the vocabularies' rule: the same token ids in two classes are refused
    (the two classes would have one embedding); a name repeated within a class is kept."""
    with pytest.raises(InputError, match=r"duplicate class name 'Cat' \(class 0 and class 2\)$"):
        build_text_bank(model, ["cat", "dog", "Cat"], cache=False)
    with pytest.raises(
        InputError,
        match=r"'Hot - dog' \(class 0 and class 1\): the same tokens as 'hot-dog'$",
    ):
        build_text_bank(model, [("hot-dog", "sausage"), ("frank", "Hot - dog")], cache=False)
    with pytest.raises(InputError, match=r"class 1\) contains CLIP's special token"):
        build_text_bank(model, ["cat", "dog <|endoftext|>"], cache=False)
    with pytest.raises(InputError, match=r"class 0\) has no visible character"):
        build_text_bank(model, ["\u200b"], cache=False)
    bank = build_text_bank(model, [("cat", "Cat"), "dog"], cache=False, progress=False)
    assert bank.names == ("cat", "dog") and bank.class_index.tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("a {} of {color}", "exactly one '\\{\\}' placeholder: 'a \\{\\} of \\{color\\}'"),
        ("a {0} and {}", "exactly one '\\{\\}' placeholder: 'a \\{0\\} and \\{\\}'"),
        ("a {!r}", "exactly one '\\{\\}' placeholder: 'a \\{!r\\}' \\(a plain one"),
        ("a {:>30}", "exactly one '\\{\\}' placeholder: 'a \\{:>30\\}'"),
        ("a {} {", "template 'a \\{\\} \\{' is not a valid format string: Single '\\{'"),
        ("a {:d}", "template 'a \\{:d\\}' is not a valid format string: Unknown format code"),
        ("a {!z}", "template 'a \\{!z\\}' is not a valid format string: Unknown conversion"),
    ],
)
def test_templates_that_do_not_format_one_name_are_refused(template: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        text_bank.check_templates(["a photo of a {}.", template])


def test_a_template_with_escaped_braces_is_accepted() -> None:
    assert text_bank.check_templates(["{} {{}}"]) == ("{} {{}}",)  # formats as 'cat {}'


def test_names_too_long_for_the_context_are_refused(model: CLIP) -> None:
    stem = "very " * 68  # one token each
    names = [stem + "red mug", stem + "blue mug"]  # would be cut to the same prompts
    with pytest.raises(InputError) as info:
        build_text_bank(model, names, TEMPLATES, cache=False, progress=False)
    message = str(info.value)
    assert "class name 'very very very very very very very ve...' is too long" in message
    assert "70 tokens, 78 in the prompt 'there is a {} in the scene'" in message
    assert "CLIP's text context holds 77" in message
    fits = "very " * 74 + "mug"  # 75 tokens + start/end: exactly the context
    assert len(build_text_bank(model, [fits], ["{}"], cache=False, progress=False)) == 1
    with pytest.raises(InputError, match="76 tokens, 78 in the prompt '\\{\\}'"):
        build_text_bank(model, ["very " + fits], ["{}"], cache=False, progress=False)


def test_a_vocabulary_checked_lately_is_not_counted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[str] = []
    real = get_tokenizer()

    class Counting:
        def count(self, text: str) -> int:
            counted.append(text)
            return real.count(text)

    monkeypatch.setattr(text_bank, "get_tokenizer", Counting)
    text_bank._check_context.cache_clear()
    names = ["checked-once quokka", "checked-once numbat"]
    text_bank.check_context(names, TEMPLATES, 77)
    assert len(counted) == 4
    text_bank.check_context(tuple(names), list(TEMPLATES), 77)  # the same, spelled otherwise
    assert len(counted) == 4
    text_bank.check_context(names, TEMPLATES[:1], 77)  # other templates: counted
    assert len(counted) == 6


def test_every_template_is_counted_with_the_name_in_it() -> None:
    from ovsam.vocab import prompt_templates

    # 'y.' merges with the '.' ending some templates: longest empty template != longest prompt
    name = "x " * 66 + "y."
    with pytest.raises(InputError) as info:
        text_bank.check_context([name], prompt_templates("vild"), 77)
    assert "68 tokens, 78 in the prompt 'There is a small {} in the scene.'" in str(info.value)
    text_bank.check_context([name[2:]], prompt_templates("vild"), 77)  # one token less fits


@pytest.mark.parametrize(
    "name",
    ["coco", "lvis", "imagenet1k", pytest.param("imagenet21k", marks=pytest.mark.slow)],
)
def test_builtin_vocabularies_fit_the_context(name: str) -> None:
    from ovsam.vocab import builtin_vocabulary, prompt_templates

    every = [t for kind in ("vild", "openai", "simple") for t in prompt_templates(kind)]
    synonyms = builtin_vocabulary(name).synonyms
    # every prompt is counted: ImageNet-21k's 40,742 names with the 14 ViLD ones (~10 s: slow)
    templates = prompt_templates("vild") if name == "imagenet21k" else every
    text_bank.check_context([n for s in synonyms for n in s], templates, 77)


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10, 10, 60, 50], [70, 20, 150, 110], [0, 80, 40, 120]], dtype=np.float32)
    masks = np.zeros((3, 120, 160), dtype=bool)
    masks[0, 15:45, 15:55] = True
    masks[1, 30:100, 80:140] = True
    masks[2, 90:120, 0:30] = True
    return image, boxes, masks


def test_region_whose_embedding_is_a_class_text_ranks_first(model: CLIP) -> None:
    image, boxes, masks = _scene()
    with torch.inference_mode():
        crops = crop_regions(image, boxes, 64, masks)
        regions = model.encode_image(crops, normalize=True)
    # a bank whose class k *is* region k's embedding (plus distractors)
    bank = text_bank.TextBank(
        ("a", "b", "c", "d"),
        F.normalize(torch.cat([regions, torch.randn(1, 32)]), dim=-1),
        torch.arange(4),
        "test",
    )
    labels = classify_regions(model, image, bank, boxes=boxes, masks=masks, top_k=2, batch_size=2)
    assert labels.top_indices[:, 0].tolist() == [0, 1, 2]
    assert labels.probs.shape == (3, 4) and torch.allclose(labels.probs.sum(-1), torch.ones(3))
    assert [top[0][0] for top in labels.top_k()] == ["a", "b", "c"] and len(labels.top_k()[0]) == 2
    # boxes derived from the masks give the same crops as the masks' tight boxes
    tight = classify_regions(model, image, bank, masks=masks, top_k=1)
    assert tight.top_indices.shape == (3, 1)
    for regions in ({"boxes": np.zeros((0, 4))}, {"masks": masks[:0]}, {"boxes": []}):
        none = classify_regions(model, image, bank, top_k=2, **regions)
        assert none.probs.shape == (0, 4) and none.top_indices.shape == (0, 2)
        assert none.top_k() == []


def test_mask_background_blanks_pixels_outside_the_mask() -> None:
    image, boxes, masks = _scene()
    plain = crop_regions(image, boxes[:1], 64)
    blanked = crop_regions(image, boxes[:1], 64, masks[:1])
    corner = blanked[0, :, 10, 3]  # in the box, outside the mask: mean colour (~0 normalised)
    assert corner.abs().max().item() < 0.02 and plain[0, :, 10, 3].abs().max().item() > 0.02


@pytest.mark.parametrize("expand", [0.0, -1.0, float("nan"), float("inf")])
def test_expand_must_be_a_finite_positive_scale(model: CLIP, expand: float) -> None:
    image, boxes, _ = _scene()
    message = f"expand must be a finite number > 0 \\(1: the box itself\\), got {expand}"
    with pytest.raises(InputError, match=message):
        crop_regions(image, boxes, 64, expand=expand)
    bank = build_text_bank(model, ["cat"], cache=False, progress=False)
    for regions in (boxes, np.zeros((0, 4))):  # refused even with no region to crop
        with pytest.raises(InputError, match=message):
            classify_regions(model, image, bank, boxes=regions, expand=expand)
    assert crop_regions(image, boxes, 64, expand=1.5).shape == (3, 3, 64, 64)


def test_region_input_errors(model: CLIP) -> None:
    image, boxes, masks = _scene()
    bank = build_text_bank(model, ["cat"], cache=False, progress=False)
    with pytest.raises(InputError, match="lies entirely outside the 160x120 image"):
        classify_regions(model, image, bank, boxes=[[200, 10, 250, 50]])
    empty = masks.copy()
    empty[1] = False
    with pytest.raises(InputError, match="mask 1 is empty"):
        classify_regions(model, image, bank, masks=empty)
    with pytest.raises(InputError, match="give boxes or masks"):
        classify_regions(model, image, bank)
    other = text_bank.TextBank(("x",), torch.ones(1, 8), torch.zeros(1, dtype=torch.long), "k")
    with pytest.raises(InputError, match="text bank has 8 dims but the CLIP model embeds 32"):
        classify_regions(model, image, other, boxes=boxes)
    for bad in ({"batch_size": 0}, {"top_k": True}):  # range() / topk errors before
        with pytest.raises(InputError, match=f"{next(iter(bad))} must be an integer >= 1"):
            classify_regions(model, image, bank, boxes=boxes, **bad)


@pytest.mark.parametrize(
    ("names", "embeddings", "ids", "message"),
    [
        ((), torch.zeros(0, 8), torch.zeros(0).long(), "text bank has no classes"),
        (("a", "b"), torch.ones(8), torch.arange(2), r"must be TxD with one class id each"),
        (
            ("a", "b"),
            torch.ones(2, 8),
            torch.arange(3),
            r"embeddings \(2, 8\) and class ids \(3,\)",
        ),
        (
            ("a", "b"),
            torch.ones(2, 8),
            torch.tensor([0, 2]),
            r"int32/int64 in \[0, 2\).*in \[0, 2\]",
        ),
        (("a", "b"), torch.ones(2, 8), torch.tensor([0.0, 1.0]), r"got torch.float32 ids"),
        (("a", "b"), torch.ones(2, 8), torch.tensor([False, True]), r"int32/int64 .* torch.bool"),
    ],
)
def test_a_bank_that_cannot_label_is_refused(
    names: tuple[str, ...], embeddings: torch.Tensor, ids: torch.Tensor, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        text_bank.TextBank(names, embeddings, ids, "k")

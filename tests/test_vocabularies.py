"""Built-in vocabularies (exact published counts and splits), user vocabularies, templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovsam.errors import InputError
from ovsam.vocab import (
    BUILTIN_VOCABULARIES,
    load_vocabulary,
    lvis_frequencies_from_annotations,
    lvis_vocabulary_from_annotations,
    prompt_templates,
    split_synonyms,
)

# OV-COCO novel classes (OVR-CNN split, as listed by the official OV-SAM configs)
OV_COCO_NOVEL = {
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard",
    "skateboard", "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors",
}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("coco", 80),
        ("coco_base", 48),
        ("coco_novel", 17),
        ("coco_ov", 65),
        ("lvis", 1203),
        ("lvis_base", 866),
        ("lvis_rare", 337),
        ("imagenet1k", 1000),
        ("imagenet21k", 21843),
    ],
)
def test_builtin_counts(name: str, count: int) -> None:
    assert name in BUILTIN_VOCABULARIES
    assert len(load_vocabulary(name)) == count


def test_coco_split_and_ids() -> None:
    coco = load_vocabulary("coco")
    assert set(load_vocabulary("coco_novel").classes) == OV_COCO_NOVEL
    assert not set(load_vocabulary("coco_base").classes) & OV_COCO_NOVEL
    assert coco.classes[:3] == ("person", "bicycle", "car") and coco.classes[-1] == "toothbrush"
    assert coco.info[coco.index("traffic light")]["id"] == 10 and coco.info[-1]["id"] == 90


def test_lvis_frequencies_and_synonyms() -> None:
    lvis = load_vocabulary("lvis")
    counts = {f: sum(i["frequency"] == f for i in lvis.info) for f in "rcf"}
    assert counts == {"r": 337, "c": 461, "f": 405}
    first = lvis.index("aerosol can")
    assert lvis.synonyms[first] == ("aerosol can", "spray can") and lvis.info[first]["id"] == 1


def test_imagenet_names() -> None:
    assert load_vocabulary("imagenet1k").classes[:2] == ("tench", "goldfish")
    in21k = load_vocabulary("imagenet21k")
    assert in21k.info[0]["wnid"] == "n00004475" and in21k.synonyms[0] == ("organism", "being")


def test_lvis_vocabulary_read_from_annotation_categories(tmp_path: Path) -> None:
    annotations = {
        "categories": [
            {"id": 7, "name": "zebra_crossing", "synonyms": ["crosswalk"], "frequency": "r"},
            {"id": 2, "name": "apple", "synonyms": ["apple"], "frequency": "f"},
        ]
    }
    vocab = lvis_vocabulary_from_annotations(annotations)
    assert vocab.classes == ("apple", "zebra crossing") and vocab.synonyms[1] == (
        "zebra crossing",
        "crosswalk",
    )
    assert lvis_frequencies_from_annotations(annotations) == {2: "f", 7: "r"}
    with pytest.raises(InputError, match="lack the field\\(s\\) frequency"):
        lvis_frequencies_from_annotations({"categories": [{"id": 1, "name": "x"}]})
    with pytest.raises(InputError, match="no 'categories'"):
        lvis_vocabulary_from_annotations({"images": []})


def test_custom_vocabularies_from_lists_and_files(tmp_path: Path) -> None:
    vocab = load_vocabulary(["cat, kitty", "Golden Retriever", " mug "])
    assert vocab.classes == ("cat", "Golden Retriever", "mug") and vocab.synonyms[0] == (
        "cat",
        "kitty",
    )
    path = tmp_path / "pets.txt"
    path.write_text("# my pets\ncat, kitty\n\ndog\n", encoding="utf-8")
    from_file = load_vocabulary(path)
    assert from_file.name == "pets" and from_file.classes == ("cat", "dog")
    assert load_vocabulary(str(path)).fingerprint() == from_file.fingerprint()
    assert (
        load_vocabulary(["cat", "dogs"]).fingerprint()
        != load_vocabulary(["cat", "dog"]).fingerprint()
    )


def test_vocabulary_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="vocabulary is empty"):
        load_vocabulary([])
    path = tmp_path / "dup.txt"
    path.write_text("cat\n# comment\ndog\nCat, kitty\n", encoding="utf-8")
    with pytest.raises(InputError, match="duplicate class name 'Cat' \\(lines 1 and 4\\)"):
        load_vocabulary(path)
    with pytest.raises(InputError, match="entry 2 is an empty class name"):
        load_vocabulary(["cat", " , "])
    with pytest.raises(InputError, match="unknown vocabulary 'cooc'"):
        load_vocabulary("cooc")
    with pytest.raises(InputError, match="3 classes; the limit is 2"):
        load_vocabulary(["a", "b", "c"], max_classes=2)


def test_templates_and_synonym_rule() -> None:
    assert len(prompt_templates("vild")) == 14 and prompt_templates("vild")[0] == "a photo of a {}."
    assert (
        len(prompt_templates("openai")) == 80
        and prompt_templates("openai")[0] == "a bad photo of a {}."
    )
    assert len(prompt_templates("simple")) == 7 and prompt_templates("none") == ("{}",)
    assert all(
        t.count("{}") == 1 for kind in ("vild", "openai", "simple") for t in prompt_templates(kind)
    )
    with pytest.raises(InputError, match="unknown template set"):
        prompt_templates("fancy")
    assert split_synonyms("Bow_(weapon)_or_arc/Bow, bow") == ("bow (weapon)", "arc", "bow")

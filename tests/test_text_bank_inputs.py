"""Text banks refuse malformed classes, templates and batch sizes by name, and a cache that
cannot be written costs the cache file, never the bank."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ovsam.clip.model import CLIP
from ovsam.clip.text_bank import build_text_bank
from ovsam.errors import InputError
from test_text_bank import TINY


@pytest.fixture()
def model() -> CLIP:
    torch.manual_seed(0)
    return CLIP(TINY).eval()


def test_bank_input_errors(model: CLIP) -> None:
    with pytest.raises(InputError, match="vocabulary is empty"):
        build_text_bank(model, [], cache=False)
    with pytest.raises(InputError, match="exactly one '\\{\\}' placeholder"):
        build_text_bank(model, ["cat"], ["a photo"], cache=False)
    with pytest.raises(InputError, match="class 1 has an empty name"):
        build_text_bank(model, ["cat", " "], cache=False)
    with pytest.raises(InputError, match=r"not a string: pass \['cat'\] for one class"):
        build_text_bank(model, "cat", cache=False)  # not the classes 'c', 'a', 't'
    # bytes read as a tuple of ints ("empty name"), a number or None as a TypeError from
    # inside, one template string as the templates 'a', ' ', 'p', ...
    for classes, message in (
        ([b"cat", "dog"], r"class 0 must be a name or a list of synonyms \(strings\), got b'cat'"),
        (["cat", 1], "class 1 must be a name or a list of synonyms"),
        ([None], "class 0 must be a name or a list of synonyms"),
        ([["cat", ["kitty"]]], r"class 0: a synonym must be a string, got \['kitty'\]"),
    ):
        with pytest.raises(InputError, match=message):
            build_text_bank(model, classes, cache=False)
    with pytest.raises(InputError, match=r"not a string: pass \['a \{\}'\] for one template"):
        build_text_bank(model, ["cat"], "a {}", cache=False)
    for batch in (0, 2.5, True):
        with pytest.raises(InputError, match="batch_texts must be a positive integer"):
            build_text_bank(model, ["cat"], cache=False, batch_texts=batch)


FULL_DISK_SCRIPT = """
import resource, signal, sys, warnings
from dataclasses import replace
import torch
from ovsam.clip.config import CLIPConfig, VisionConfig, get_clip_config
from ovsam.clip.model import CLIP
from ovsam.clip.text_bank import build_text_bank
text = replace(get_clip_config("RN50").text, width=64, heads=1, layers=2)
model = CLIP(CLIPConfig(32, VisionConfig("vit", 64, (2,), 64, 16), text, True)).eval()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails: EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))  # as a full disk does (ENOSPC)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    bank = build_text_bank(model, ["cat", "dog"], ("a {}",), cache=sys.argv[1], progress=False)
print(bank.names, [str(w.message) for w in caught])
"""


def test_a_full_disk_loses_the_cache_file_not_the_bank(tmp_path: Path) -> None:
    """safetensors' own file writing raised its SafetensorError (no OSError) on a full disk:
    the bank just embedded (hours for ImageNet-21k) was lost with a traceback."""
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("('cat', 'dog') ['text bank not cached (")
    assert "File too large" in done.stdout and list(tmp_path.iterdir()) == []


def test_a_damaged_cache_file_is_rebuilt_and_dtype_is_part_of_the_key(
    model: CLIP, tmp_path: Path
) -> None:
    """safetensors keeps no checksum: a file whose header survived but whose rows did not
    (NaN, not unit) was served as the bank. An fp16 text tower embeds otherwise than an fp32
    one with the same fp16-exact weights (the same fingerprint): they shared a file."""
    from safetensors.torch import load_file, save_file

    first = build_text_bank(model, ["cat", "dog"], cache=tmp_path, progress=False)
    (path,) = tmp_path.glob("*.safetensors")
    metadata = {"key": first.key}
    for damage in (float("nan"), 0.5):
        tensors = load_file(path)
        tensors["embeddings"][1] *= damage
        save_file(tensors, path, metadata=metadata)
        again = build_text_bank(model, ["cat", "dog"], cache=tmp_path, progress=False)
        torch.testing.assert_close(again.embeddings, first.embeddings)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    fp32 = build_text_bank(model, ["cat", "dog"], cache=tmp_path, progress=False, weights_id="w")
    fp16 = build_text_bank(
        model.half(), ["cat", "dog"], cache=tmp_path, progress=False, weights_id="w"
    )
    assert fp16.key != fp32.key


def test_a_build_asked_to_stop_ends_between_batches_and_caches_nothing(
    model: CLIP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server's build for a client that hung up ran to the end (minutes for a large
    vocabulary), holding a build thread for nobody."""
    import ovsam.clip.text_bank as text_bank

    batches: list[int] = []
    real = text_bank.encode_prompts
    monkeypatch.setattr(
        text_bank, "encode_prompts", lambda m, t: (batches.append(len(t)), real(m, t))[1]
    )
    names = [f"thing {i}" for i in range(10)]
    with pytest.raises(text_bank.BuildStopped, match="stopped after 4 of 10 names"):
        build_text_bank(
            model, names, ["{}"], batch_texts=2, cache=tmp_path, progress=False,
            stop=lambda: len(batches) == 2,
        )  # fmt: skip
    assert batches == [2, 2] and not list(tmp_path.iterdir())
    bank = build_text_bank(
        model, names, ["{}"], batch_texts=2, cache=False, progress=False, stop=lambda: False
    )
    assert len(batches) == 2 + 5 and bank.embeddings.shape[0] == 10


def test_a_cached_file_whose_rows_do_not_fit_the_vocabulary_is_rebuilt(
    model: CLIP, tmp_path: Path
) -> None:
    """A file under the right key with 3 rows for 4 synonyms (or rows given to the wrong
    classes) was served as it was: only unit norms and one row per class were checked."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    classes = [["cat", "kitty"], ["dog", "puppy"]]
    first = build_text_bank(model, classes, cache=tmp_path, progress=False)
    (path,) = tmp_path.iterdir()
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata()
    for embeddings, class_index in (
        (tensors["embeddings"][:3], torch.tensor([0, 0, 1])),  # a synonym's row missing
        (tensors["embeddings"], torch.tensor([0, 1, 1, 0])),  # rows given to other classes
    ):
        save_file({"embeddings": embeddings, "class_index": class_index}, str(path), metadata)
        again = build_text_bank(model, classes, cache=tmp_path, progress=False)
        assert again.class_index.tolist() == [0, 0, 1, 1]
        assert again.synonyms == first.synonyms == (("cat", "kitty"), ("dog", "puppy"))
        torch.testing.assert_close(again.embeddings, first.embeddings)
    hit = build_text_bank(model, classes, cache=tmp_path, progress=False)  # read, not built
    assert hit.synonyms == first.synonyms


def test_a_repeated_synonym_is_embedded_once_and_short_names_share_batches(
    model: CLIP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ImageNet-21k embeds 9% of its synonyms twice or more, and batches in class order
    were padded to their longest prompt: about a third of a 3-hour build was waste."""
    import ovsam.clip.text_bank as text_bank
    from ovsam.vocab import Vocabulary

    batches: list[list[str]] = []
    real = text_bank.encode_prompts
    monkeypatch.setattr(
        text_bank, "encode_prompts", lambda m, t: (batches.append(list(t)), real(m, t))[1]
    )
    long = "a very long name of a thing"
    synonyms = (("cell", long), ("cell", "jail"), ("x",))  # "cell" in two classes, as in 21k
    vocabulary = Vocabulary("v", ("cell", "cell", "x"), synonyms, ({},) * 3)
    bank = build_text_bank(model, vocabulary, ["{}"], batch_texts=2, cache=False, progress=False)
    assert batches == [["cell", "jail"], ["x", long]]  # shortest first, "cell" once
    alone = [build_text_bank(model, [n], ["{}"], cache=False, progress=False) for n in (
        "cell", long, "cell", "jail", "x")]  # fmt: skip
    for row, single in zip(bank.embeddings, alone, strict=True):
        torch.testing.assert_close(row, single.embeddings[0], atol=1e-5, rtol=0)
    assert bank.class_index.tolist() == [0, 0, 1, 1, 2]

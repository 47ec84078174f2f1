"""Why weights could not be had is kept: in the one-line error of a missing recognition (or
OV-SAM) file, and on stderr even for the last source tried."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ovsam.assets import SAMPLE_BOX, SAMPLE_PHOTO
from ovsam.cli.main import main
from ovsam.errors import WeightsUnavailableError
from ovsam.ov.checkpoints import resolve_all
from ovsam.weights import UrlSource, download_weights, get_weights_spec
from weights_helpers import register, toy_spec


def test_the_last_source_failure_is_said_too(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gone = UrlSource((tmp_path / "gone").as_uri())
    with pytest.raises(WeightsUnavailableError):
        download_weights(toy_spec((gone,)), cache_dir_override=tmp_path / "cache", progress=True)
    assert f"ovsam: {gone.url} failed (URLError: " in capsys.readouterr().err


def test_missing_weights_keep_the_first_source_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path / "cache"))
    first, second = (UrlSource((tmp_path / f / "toy.bin").as_uri()) for f in ("first", "second"))
    register(monkeypatch, toy_spec((first, second)))
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_all(["toy"], "weights missing", progress=False)
    message = str(info.value)
    assert message.startswith("weights missing: toy could not be obtained (file: URLError: ")
    assert "No such file or directory" in message and "second" not in message  # the first
    assert message.endswith("; get them with 'ovsam download toy'")


def test_the_first_failure_names_its_host() -> None:
    from ovsam.weights import SourcesFailed

    failures = [("https://example.org/a/b/c.pt", "URLError: x"), ("b", "c")]
    assert SourcesFailed("all failed", failures).first_source_failure() == (
        "example.org",
        "URLError: x",
    )
    assert SourcesFailed("local", [("file:///x/y.pt", "gone")]).first_source_failure() == (
        "file",
        "gone",
    )
    assert SourcesFailed("none", []).first_source_failure() is None


def test_each_distinct_reason_is_said_once_with_every_host_it_came_from() -> None:
    from ovsam.ov.checkpoints import source_failures_text

    offline = "URLError: <urlopen error [Errno -2] Name or service not known>"
    failures = [("a.org", offline), ("b.org", offline), ("a.org", offline),
                ("c.org", "HTTP Error 404: Not Found"), ("d.org", "URLError: " + "x " * 100)]  # fmt: skip
    assert source_failures_text(failures, width=64) == (  # reasons shortened, hosts not
        f"a.org, b.org: {offline}; c.org: HTTP Error 404: Not Found; "
        "d.org: URLError: " + "x " * 25 + "..."
    )
    assert source_failures_text([]) == ""


def test_missing_weights_from_several_hosts_name_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, the four official OV-SAM files fail at three hosts for one reason: the error
    names all three, not only the first file's host."""
    from ovsam.weights import SourcesFailed

    hosts = {"a": "https://one.org/a.pt", "b": "https://two.org/b.pt", "c": "https://one.org/c",
             "d": "http://three.net/d"}  # fmt: skip

    def offline(name: str, progress: bool = True) -> Path:
        raise SourcesFailed(f"could not obtain weights {name!r}", [(hosts[name], "no network")])

    monkeypatch.setattr("ovsam.ov.checkpoints.resolve_weights", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_all(list(hosts), "OV-SAM weights missing", progress=False)
    assert str(info.value) == (
        "OV-SAM weights missing: a, b, c, d could not be obtained (one.org, two.org, three.net: "
        "no network); get them with 'ovsam download a b c d'"
    )


def test_segment_says_why_recognition_weights_are_missing(
    tmp_path: Path, mobilesam_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setenv("OVSAM_CACHE_DIR", str(tmp_path / "cache"))  # after the fixture
    gone = UrlSource((tmp_path / "gone" / "RN50x16.pt").as_uri())
    register(monkeypatch, replace(get_weights_spec("clip_RN50x16_openai"), sources=(gone,)))
    box = [str(v) for v in SAMPLE_BOX]
    argv = ["segment", str(SAMPLE_PHOTO), "--box", *box, "--out", str(tmp_path / "out"),
            "--checkpoint", str(mobilesam_checkpoint), "--vocab", "lvis"]  # fmt: skip
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(
        "ovsam segment: error: no recognition weights: clip_RN50x16_openai could not be "
        "obtained (file: URLError: <urlopen error [Errno 2] No such file or directory"
    )
    assert "get them with 'ovsam download clip_RN50x16_openai'" in last

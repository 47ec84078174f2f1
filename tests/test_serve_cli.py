"""``ovsam serve`` limit options: they reach the app's settings, bad values exit 2 before any
model is loaded, ``--help`` lists them; and :class:`ServeSettings` itself refuses bad limits."""

from __future__ import annotations

import socket
import sys
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import ovsam.serve.app as serve_app  # noqa: E402
from ovsam.cli.main import build_parser, main  # noqa: E402
from ovsam.cli.serve_cmd import build_settings  # noqa: E402
from ovsam.errors import InputError  # noqa: E402
from ovsam.serve.engine import MissingRecognizer  # noqa: E402
from ovsam.serve.schemas import MAX_NAMES, MAX_POINTS  # noqa: E402
from ovsam.serve.settings import LimitError, ServeSettings  # noqa: E402

MIB = 1024 * 1024
LIMIT_FLAGS = {
    "--max-upload-mb": "20",
    "--max-body-mb": "8",
    "--max-pixels": "40000000",
    "--max-points": "64",
    "--max-vocabulary": "25000",
    "--max-name-chars": "200",
    "--max-custom-vocabularies": "16",
    "--cache-size": "16",
    "--cache-mb": "1024",
    "--masks-per-image": "32",
}


class Captured:
    """What ``ovsam serve`` handed to the engine factory and to uvicorn (app, bound port)."""

    def __init__(self) -> None:
        self.settings: ServeSettings | None = None
        self.app: FastAPI | None = None
        self.port: int | None = None


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    """Replace the model loading and uvicorn by recorders (nothing is loaded or served)."""
    seen = Captured()

    def engine(settings: ServeSettings) -> object:
        seen.settings = settings
        return SimpleNamespace(
            recognizer=MissingRecognizer("no recognition weights: none here"),
            model_name=settings.model, score_name="predicted_iou",
        )  # fmt: skip

    def serve(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
        seen.app = server.config.app
        seen.port = sockets[0].getsockname()[1]

    monkeypatch.setattr(serve_app, "default_engine", engine)
    monkeypatch.setattr(uvicorn.Server, "run", serve)
    return seen


def test_help_lists_limit_flags_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in LIMIT_FLAGS.items():
        assert flag in text
        assert f"(default {default})" in text, flag


def test_flags_reach_the_served_app(captured: Captured) -> None:
    argv = ["serve", "--port", "0", "--max-upload-mb", "3", "--max-body-mb", "2", "--max-pixels", "5000",
            "--max-points", "7", "--max-vocabulary", "9", "--max-name-chars", "11",
            "--max-custom-vocabularies", "4", "--cache-size", "5", "--cache-mb", "6",
            "--masks-per-image", "8", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    settings, app = captured.settings, captured.app
    assert settings is not None and app is not None and settings.device == "cpu"
    assert (settings.max_upload_bytes, settings.max_body_bytes) == (3 * MIB, 2 * MIB)
    assert (settings.max_pixels, settings.max_points) == (5000, 7)
    assert (settings.max_vocabulary, settings.max_name_chars) == (9, 11)
    assert settings.max_custom_vocabularies == 4
    store = app.state.store
    assert (store.max_images, store.max_bytes, store.masks_per_image) == (5, 6 * MIB, 8)
    assert app.state.vocabularies.settings is settings
    # the served app enforces them
    client = TestClient(app)
    r = client.post("/v1/vocabularies", content=b" " * (2 * MIB + 1))
    assert r.status_code == 413 and str(2 * MIB) in r.json()["error"]["message"]
    r = client.post("/v1/images", files={"file": ("a.png", b"x" * (4 * MIB), "image/png")})
    assert r.status_code == 413 and str(3 * MIB) in r.json()["error"]["message"]


def test_the_terminal_says_whether_masks_get_labels(
    captured: Captured, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without recognition weights the page still segments; the terminal says why there are
    no labels (not only ``/v1/health``)."""
    assert main(["serve", "--port", "0", "--labels"]) == 0
    out = capsys.readouterr().out
    assert "ovsam: no labels: no recognition weights: none here\n" in out


def test_defaults_are_the_settings_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert build_settings(args) == ServeSettings()
    for flags in (["--clip", "RN50"], ["--clip-weights", "mine.pt"]):  # were ignored
        assert build_settings(build_parser().parse_args(["serve", *flags])).labels


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--max-upload-mb", "0", "from 1 to 2048 (MiB), got 0"),
        ("--max-body-mb", "99999999", "from 1 to 2048 (MiB), got 99999999"),
        ("--max-pixels", "-5", "got -5"),
        ("--max-points", str(MAX_POINTS + 1), f"from 1 to {MAX_POINTS}, got {MAX_POINTS + 1}"),
        ("--max-vocabulary", str(MAX_NAMES + 1), f"from 1 to {MAX_NAMES}"),
        ("--max-name-chars", "0", "got 0"),
        ("--max-custom-vocabularies", "0", "got 0"),
        ("--cache-size", "0", "got 0"),
        ("--cache-mb", "-1", "(MiB), got -1"),
        ("--masks-per-image", "0", "got 0"),
    ],
)
def test_bad_limit_exits_2_naming_the_flag(
    captured: Captured, capsys: pytest.CaptureFixture[str], flag: str, value: str, expected: str
) -> None:
    assert main(["serve", flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"ovsam serve: error: {flag} must be"), err
    assert expected in err
    assert captured.settings is None and captured.app is None  # refused before loading a model


def test_non_integer_limit_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--max-points", "1.5"])
    assert exit_info.value.code == 2
    assert "argument --max-points: invalid int value: '1.5'" in capsys.readouterr().err


def test_fastapi_refusing_uploads_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """FastAPI raises a RuntimeError when the app declares its upload route without a usable
    python-multipart: one line naming it and the extra, exit 2; other RuntimeErrors propagate."""

    def refuse(*_: object) -> FastAPI:
        raise RuntimeError(
            'Form data requires "python-multipart" to be installed. \n'
            'You can install "python-multipart" with: \n\npip install python-multipart\n'
        )

    monkeypatch.setattr(serve_app, "create_app", refuse)
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("ovsam serve: error: the web server needs the [serve] extra (FastAPI: ")
    assert '"python-multipart"' in err and err.endswith("pip install 'ovsam[serve]'\n")

    def fail(*_: object) -> FastAPI:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(serve_app, "create_app", fail)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        main(["serve", "--port", "0"])


def test_missing_multipart_is_refused_before_the_model_loads(
    captured: Captured, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for module in ("python_multipart", "multipart"):  # neither is importable
        monkeypatch.setitem(sys.modules, module, None)
    assert main(["serve"]) == 2
    assert capsys.readouterr().err == (
        "ovsam serve: error: the web server needs the [serve] extra (python-multipart is "
        "missing): pip install 'ovsam[serve]'\n"
    )
    assert captured.settings is None and captured.app is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_points", 0), ("max_points", MAX_POINTS + 1), ("max_vocabulary", MAX_NAMES + 1),
     ("max_upload_bytes", -1), ("max_body_bytes", 0), ("max_pixels", 2.5),
     ("cache_images", True), ("cache_bytes", 0), ("max_custom_vocabularies", 0),
     ("masks_per_image", "3"), ("max_name_chars", 0)],
)  # fmt: skip
def test_settings_refuse_bad_limits(name: str, value: object) -> None:
    with pytest.raises(LimitError, match=f"^{name} must be an integer from 1 to ") as info:
        ServeSettings(**{name: value})  # type: ignore[arg-type]
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)
    assert info.value.name == name


def test_settings_bounds_are_inclusive() -> None:
    top = ServeSettings(max_points=MAX_POINTS, max_vocabulary=MAX_NAMES, max_custom_vocabularies=1)
    assert (top.max_points, top.max_vocabulary) == (MAX_POINTS, MAX_NAMES)
    with pytest.raises(LimitError, match=f"from 1 to {MAX_POINTS}, got {MAX_POINTS + 1}$"):
        ServeSettings(max_points=MAX_POINTS + 1)


@pytest.mark.parametrize("port", ["70000", "-1", "65536"])
def test_port_out_of_range_is_a_usage_error(
    captured: Captured, capsys: pytest.CaptureFixture[str], port: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", port])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == (  # one line: not argparse's usage block above it
        f"ovsam serve: error: argument --port: must be from 0 to 65535, got {port} "
        "(ovsam serve --help lists the options)\n"
    )
    assert captured.settings is None


def test_busy_port_is_one_line_before_the_model_loads(
    captured: Captured, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert "serving" not in out
    assert err.startswith(f"ovsam serve: error: cannot listen on 127.0.0.1:{port}: ")
    assert err.count("\n") == 1 and "in use" in err, err
    assert captured.settings is None and captured.app is None  # refused before loading a model


def test_a_port_held_by_a_server_still_loading_is_busy() -> None:
    """Two ``ovsam serve`` starting together: the second fails at once, not after its model."""
    from ovsam.cli.serve_cmd import listen_sockets
    from ovsam.errors import InputError

    (first,) = listen_sockets("127.0.0.1", 0)
    with first, pytest.raises(InputError, match="cannot listen on 127.0.0.1:.*in use"):
        listen_sockets("127.0.0.1", first.getsockname()[1])


def test_every_address_of_the_host_is_served_on_one_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """As uvicorn binds every address of ``--host`` (``localhost``: 127.0.0.1 and ::1)."""
    from ovsam.cli import serve_cmd

    def two_addresses(host: str, port: int, **kwargs: object) -> list[tuple]:
        kind = socket.SOCK_STREAM
        return [(socket.AF_INET, kind, 6, "", (a, port)) for a in ("127.0.0.1", "127.0.0.2")]

    monkeypatch.setattr(serve_cmd.socket, "getaddrinfo", two_addresses)
    sockets = serve_cmd.listen_sockets("twohomed", 0)
    try:
        names = [s.getsockname() for s in sockets]
        assert [n[0] for n in names] == ["127.0.0.1", "127.0.0.2"] and names[0][1] == names[1][1]
    finally:
        for sock in sockets:
            sock.close()
    taken = socket.socket()
    taken.bind(("127.0.0.2", 0))
    taken.listen()
    with taken, pytest.raises(serve_cmd.InputError, match="cannot listen on twohomed:"):
        serve_cmd.listen_sockets("twohomed", taken.getsockname()[1])


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv4_and_ipv6_addresses_share_one_port_and_accept_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``localhost`` as many systems resolve it: 127.0.0.1 and ::1, bound for real."""
    from ovsam.cli import serve_cmd

    resolve = socket.getaddrinfo

    def both(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        hosts = ("127.0.0.1", "::1") if host == "localhost" else (host,)
        return [info for h in hosts for info in resolve(h, port, *args, **kwargs)]

    monkeypatch.setattr(serve_cmd.socket, "getaddrinfo", both)
    sockets = serve_cmd.listen_sockets("localhost", 0)
    try:
        families = [s.family for s in sockets]
        assert families == [socket.AF_INET, socket.AF_INET6]
        port = sockets[0].getsockname()[1]
        assert sockets[1].getsockname()[:2] == ("::1", port)
        assert sockets[1].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        for host in ("127.0.0.1", "::1"):
            with socket.create_connection((host, port), timeout=5):
                pass  # queued until uvicorn serves
    finally:
        for sock in sockets:
            sock.close()


def test_port_0_serves_on_a_free_port_and_says_which(
    captured: Captured, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--port", "0"]) == 0
    assert captured.port is not None and captured.port > 0
    assert f"on http://127.0.0.1:{captured.port}/ " in capsys.readouterr().out


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_host_is_printed_in_brackets(
    captured: Captured, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--host", "::1", "--port", "0"]) == 0
    assert f"on http://[::1]:{captured.port}/ " in capsys.readouterr().out


def test_default_recognizer_says_how_to_get_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    import ovsam.clip.factory as clip_factory
    from ovsam.errors import WeightsUnavailableError
    from ovsam.serve.app import default_recognizer
    from ovsam.serve.recognition import ClipRecognizer

    off = default_recognizer(ServeSettings())
    assert not off.available and off.message.startswith("labels are off: masks come without")

    def offline(name: str, **_: object) -> None:
        raise WeightsUnavailableError(f"could not obtain weights {name!r} from any source")

    monkeypatch.setattr(clip_factory, "resolve_weights", offline)
    missing = default_recognizer(ServeSettings(labels=True))
    assert not missing.available and "ovsam download clip_RN50x16_openai" in missing.message
    laion = ServeSettings(
        labels=True, clip_model="convnext_base_w", clip_weights="laion2b_s13b_b82k_augreg"
    )
    assert (
        "download clip_convnext_base_w_laion2b_s13b_b82k_augreg'"  # was clip_..._openai
        in default_recognizer(laion).message
    )

    def no_source(name: str, **_: object) -> None:  # the resolver's own advice, kept alone
        raise WeightsUnavailableError(f"... add it with 'ovsam download {name} --from FILE'")

    monkeypatch.setattr(clip_factory, "resolve_weights", no_source)
    told = default_recognizer(ServeSettings(labels=True)).message
    assert told.endswith("add it with 'ovsam download clip_RN50x16_openai --from FILE'")
    random = default_recognizer(ServeSettings(random_recognition=True, clip_model="RN50"))
    assert isinstance(random, ClipRecognizer) and "labels are meaningless" in random.message
    assert random.random_weights and not off.random_weights and not missing.random_weights

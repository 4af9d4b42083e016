"""`pixart serve`: the Gradio app driven in a real headless Chromium, on a tiny offline pipeline folder.

The server runs once per module, as a user starts it (`python -m pixart serve --model ... --port ...`);
each test opens a fresh page. The browser is the system Chromium (Debian package `chromium`, which
setup.sh installs): without it, or without playwright, the browser tests skip and say why.
"""

from __future__ import annotations

import contextlib
import html
import importlib
import importlib.util
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from tiny_models import save_tiny_pipeline

pytest.importorskip("gradio")

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium phones home at start, and a closed network refuses it.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LONG_PROMPT = " ".join(["red circle"] * 80)  # about 160 tokens: over the 120-token limit
TIMEOUT_MS = 60_000


def browser_missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (install it with `apt-get install chromium`, or run ./setup.sh)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


def browser_test(function):
    """Marked `browser`, and skipped (with the reason) where no headless Chromium can be driven."""
    reason = browser_missing()
    return pytest.mark.browser(pytest.mark.skipif(reason is not None, reason=reason or "")(function))


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost, whatever *_proxy says


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-pixart")


@pytest.fixture(scope="module")
def server(model_folder, tmp_path_factory):
    """The URL of `pixart serve` on a free port, started once for the module and stopped after it."""
    root = tmp_path_factory.mktemp("serve")
    port = free_port()
    log_path = root / "serve.log"
    # Gradio's cache goes in the test's folder, not in the machine's /tmp/gradio.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_TEMP_DIR": str(root / "gradio")}
    command = [sys.executable, "-m", "pixart", "serve", "--model", str(model_folder), "--port", str(port)]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*command, "--out", str(root / "out")], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"pixart serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with NO_PROXY.open(url, timeout=5):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"pixart serve did not answer on {url} in 180s:\n{log_path.read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server)
    page.locator("#generate").wait_for()
    yield page
    page.close()


def fill_and_generate(page, prompt: str, *, steps: str = "2", seed: str = "7", size: str | None = None) -> str:
    """Fill the form, press Generate, wait for the answer and return the notice's text."""
    from playwright.sync_api import expect

    page.locator("#prompt textarea").fill(prompt)
    page.locator("#steps input").fill(steps)
    page.locator("#random-seed input").uncheck()
    page.locator("#seed input").fill(seed)
    if size is not None:
        page.locator("#size textarea, #size input").first.fill(size)
    page.locator("#generate").click()
    notice = page.locator("#notice")
    expect(notice).to_contain_text(re.compile("Generated|Cannot generate"), timeout=TIMEOUT_MS)
    return notice.inner_text()


def gallery_images(page) -> list[dict]:
    """Each shown image's natural size, caption and address, as the browser decoded it."""
    images = page.locator("#gallery img")
    images.first.wait_for()
    return [
        img.evaluate("e => ({width: e.naturalWidth, height: e.naturalHeight, alt: e.alt, src: e.src})")
        for img in images.all()
    ]


def assert_no_traceback(page) -> None:
    body = page.locator("body").inner_text()
    assert "Traceback" not in body and 'File "' not in body


@browser_test
def test_prompt_to_images_with_their_settings_and_download(page):
    page.locator("#aspect input").click()
    page.get_by_role("option", name="0.5 (24x44)").click()  # the bucket table, labelled with its sizes
    page.locator("#num-images input[type=number]").fill("2")
    page.locator("#num-images input[type=number]").press("Enter")
    notice = fill_and_generate(page, "a red circle", steps="3", seed="7")

    assert "Generated 2 image(s)" in notice
    images = gallery_images(page)
    assert [(i["width"], i["height"]) for i in images] == [(44, 24), (44, 24)]
    assert images[0]["alt"].startswith("seed 7 · folder · 3 steps · cfg 4.5 · 24x44")
    assert images[1]["alt"].startswith("seed 8 ")
    details = page.locator("#details").inner_text()
    assert "a red circle" in details and "7" in details and "24x44" in details
    assert page.locator("#seed input").input_value() == "7"

    # What the gallery serves is the PNG outputs.write_images wrote: its metadata carries the settings.
    png = Image.open(io.BytesIO(page.request.get(images[0]["src"]).body()))
    assert png.size == (44, 24)
    meta = json.loads(png.text["parameters"])
    assert (meta["prompt"], meta["seed"], meta["steps"], meta["size"]) == ("a red circle", 7, 3, [24, 44])
    links = page.locator("#files a[download]")
    assert links.count() == 2 and "seed7" in links.first.get_attribute("download")
    assert_no_traceback(page)


@browser_test
def test_random_seed_is_shown_so_the_image_can_be_remade(page):
    page.locator("#prompt textarea").fill("a blue square")
    page.locator("#steps input").fill("2")
    page.locator("#generate").click()  # "random seed" is on by default
    seed = gallery_images(page)[0]["alt"].split(" · ")[0].removeprefix("seed ")
    assert page.locator("#seed input").input_value() == seed


@browser_test
def test_empty_prompt_generates_unconditionally_and_says_so(page):
    notice = fill_and_generate(page, "")
    assert "unconditionally" in notice
    assert [(i["width"], i["height"]) for i in gallery_images(page)] == [(32, 32)]
    assert "(unconditional)" in gallery_images(page)[0]["alt"]


@browser_test
@pytest.mark.parametrize(
    ("steps", "size", "message"),
    [
        ("0", None, "steps must lie in 1..1000, got 0"),
        ("5000", None, "steps must lie in 1..1000, got 5000"),
        ("2", "4x770", "each side of the size must lie in 8..4096"),
        ("2", "9000x9000", "each side of the size must lie in 8..4096"),
    ],
)
def test_bad_settings_are_answered_in_the_page(page, steps, size, message):
    notice = fill_and_generate(page, "a cat", steps=steps, size=size)
    assert "Cannot generate" in notice and message in notice
    assert page.locator("#notice").is_visible()
    assert page.locator("#gallery img").count() == 0
    assert_no_traceback(page)


@browser_test
def test_the_prompt_and_an_error_show_as_typed(page):
    """Shown through Markdown, "&amp;" showed as "&" and a URL became a link whose text kept the escaping
    backslashes ("https://example\\.com"); markup stays text, as before."""
    from playwright.sync_api import expect

    notice = fill_and_generate(page, "a cat", size="see https://evil.example/x")
    assert "https://evil.example/x" in notice and page.locator("#notice a").count() == 0
    typed = "logo of AT&amp;T, see https://example.com/cat.png <3 <b>bold</b>"
    page.locator("#size textarea, #size input").first.fill("")
    fill_and_generate(page, typed)  # returns on the refusal's notice still shown: wait for this one's
    expect(page.locator("#notice")).to_contain_text("Generated 1 image(s)")
    details = page.locator("#details")
    assert typed in details.inner_text() and details.locator("a, b").count() == 0
    assert_no_traceback(page)


@browser_test
def test_the_stop_button_ends_a_long_request_and_keeps_what_it_made(page):
    from playwright.sync_api import expect

    page.locator("#prompt textarea").fill("a cat")
    page.locator("#steps input").fill("999")
    page.locator("#num-images input[type=number]").fill("8")
    page.locator("#num-images input[type=number]").press("Enter")
    page.locator("#generate").click()
    notice = page.locator("#notice")
    deadline = time.time() + 120
    while not re.search("Stopped|Generated|Cannot", notice.inner_text()) and time.time() < deadline:
        page.locator("#stop").click()  # until the request has begun: a Stop before it stops nothing
        time.sleep(0.3)
    expect(notice).to_contain_text("Stopped as asked")
    assert_no_traceback(page)


@browser_test
def test_closing_the_tab_stops_its_request(browser, server, tmp_path_factory):
    """A closed tab's request ran to its end (8 images at 999 steps here, about 9 s on a CPU) while the next
    tab's waited; closing it now stops it at the next step (no image of its first batch was written)."""
    from playwright.sync_api import expect

    out = next(tmp_path_factory.getbasetemp().glob("serve*/out"))  # the server fixture's --out
    before = set(out.rglob("*.png"))
    first = browser.new_page()
    first.goto(server)
    first.locator("#prompt textarea").fill("a long one")
    first.locator("#steps input").fill("999")
    first.locator("#num-images input[type=number]").fill("8")
    first.locator("#num-images input[type=number]").press("Enter")
    first.locator("#generate").click()
    time.sleep(1.5)  # under way: the first batch of 4 takes about 4 s
    first.close()
    second = browser.new_page()
    second.set_default_timeout(TIMEOUT_MS)
    second.goto(server)
    fill_and_generate(second, "a short one")
    expect(second.locator("#notice")).to_contain_text("Generated 1 image(s)")
    made = [path for path in set(out.rglob("*.png")) - before if "long-one" in path.name]
    assert len(made) < 8, made  # stopped: unstopped, all 8 were written before the second request ran
    second.close()


@browser_test
def test_a_refused_request_keeps_the_seed_it_was_given(page):
    """A request refused before its seed was drawn emptied the seed box, and the next click drew a random
    seed unasked."""
    notice = fill_and_generate(page, "a cat", seed="-5")
    assert "Cannot generate" in notice and "the seed must lie in 0.." in notice
    assert page.locator("#seed input").input_value() == "-5"


@browser_test
def test_long_prompt_is_truncated_and_the_dropped_tokens_are_counted(page, model_folder):
    from pixart.generate import TextToImage

    expected = TextToImage.from_path(model_folder).text_encoder.encode([LONG_PROMPT]).dropped[0]
    assert expected > 0
    notice = fill_and_generate(page, LONG_PROMPT)
    assert f"{expected} tokens were dropped" in notice and "longer than 120 tokens" in notice
    assert [(i["width"], i["height"]) for i in gallery_images(page)] == [(32, 32)]


def test_choices_come_from_the_model(model_folder):
    from pixart.app import aspect_choices, sampler_choices
    from pixart.generate import TextToImage

    pipe = TextToImage.from_path(model_folder)
    labels = dict((key, label) for label, key in aspect_choices(pipe))
    assert labels["1.0"] == "1.0 (32x32)" and labels["0.5"] == "0.5 (24x44)"
    assert sampler_choices(pipe) == ["dpm-solver++", "sa-solver", "ddim", "iddpm", "euler", "folder"]


def test_a_restarted_server_continues_the_numbering(model_folder, tmp_path):
    from pixart.app import Studio
    from pixart.generate import TextToImage

    pipe = TextToImage.from_path(model_folder)
    out = tmp_path / "out"
    (out / "00007").mkdir(parents=True)  # a request of the server's previous life
    (out / "00007" / "0000-a-red-circle-seed5.png").write_bytes(b"earlier")
    studio = Studio(pipe, out)  # what the restarted server makes
    reply = studio.request("a dog", None, "1.0", None, None, 2, 4.5, 5, False, 1)
    assert [Path(f).parent.name for f in reply.files] == ["00008"]
    assert (out / "00007" / "0000-a-red-circle-seed5.png").read_bytes() == b"earlier"
    (out / "00009").mkdir()  # another server on the same --out took the next number meanwhile
    reply = studio.request("a dog", None, "1.0", None, None, 2, 4.5, 5, False, 1)
    assert [Path(f).parent.name for f in reply.files] == ["00010"]


def test_refusals_and_a_blank_negative_prompt_match_the_command(model_folder, tmp_path):
    from pixart.app import Studio
    from pixart.generate import TextToImage

    studio = Studio(TextToImage.from_path(model_folder), tmp_path)
    reply = studio.request("a dog", None, "1.0", None, "ddim", 1, 4.5, 5, False, 1)
    assert "Cannot generate" in reply.notice and "needs at least 10 steps" in reply.notice and not reply.files
    reply = studio.request("a dog", "   ", "1.0", None, None, 2, 4.5, 5, False, 1)
    assert json.loads(Path(reply.files[0]).with_suffix(".json").read_text())["negative"] is None


def test_no_model_trains_the_demo_model_first(tmp_path, monkeypatch, capsys):
    cli_main = importlib.import_module("pixart.cli.main")
    from pixart.cli import serve

    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_main(argv):
        calls.append(argv)
        (tmp_path / serve.DEMO_MODEL).mkdir(parents=True)
        (tmp_path / serve.DEMO_MODEL / "model.json").write_text("{}")
        return 0

    monkeypatch.setattr(cli_main, "main", fake_main)
    assert serve.demo_model() == serve.DEMO_MODEL
    assert calls == [["demo"]]
    assert "no model given; training the embedded demo model first with `pixart demo`" in capsys.readouterr().out
    assert serve.demo_model() == serve.DEMO_MODEL and calls == [["demo"]]  # trained once, then reused


def test_a_failed_demo_is_a_user_error(tmp_path, monkeypatch):
    cli_main = importlib.import_module("pixart.cli.main")
    from pixart.cli import serve

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_main, "main", lambda argv: 1)
    with pytest.raises(cli_main.UserError, match="pass --model"):
        serve.demo_model()
    # stopped by Ctrl-C, the demo said so and that the same command continues it; "did not leave a model ...
    # pass --model DIR instead" after that contradicted it (review)
    monkeypatch.setattr(cli_main, "main", lambda argv: 130)
    with pytest.raises(SystemExit) as stopped:
        serve.demo_model()
    assert stopped.value.code == 130


def test_serve_refuses_a_bad_out_before_loading_anything(tmp_path, capsys):
    from pixart.cli import main

    (tmp_path / "taken").write_text("a file, not a folder")
    code = main(["serve", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "taken")])
    assert code == 2
    error = capsys.readouterr().err
    assert "--out" in error and "no-such-model" not in error  # the out folder is checked first


def demo_must_not_train():
    raise AssertionError("the 10-minute demo would train before the bad option is reported")


def test_serve_refuses_a_bad_port_host_or_device_before_loading(tmp_path, capsys, monkeypatch):
    """A bad --port failed only after the model loaded (with no --model, after the demo had trained)."""
    from pixart.cli import main, serve

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(serve, "demo_model", demo_must_not_train)
    for port in ("99999", "-1", "0"):
        assert main(["serve", "--port", port, "--out", str(tmp_path / "out")]) == 2
        assert f"--port {port} is not a TCP port: choose one in 1-65535" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        model = ["--model", str(tmp_path / "no-such-model")]  # the model is looked at after the address
        assert main(["serve", *model, "--port", str(port)]) == 2
        assert f"port {port} on 127.0.0.1 is in use (another server?): choose another --port" in capsys.readouterr().err
    assert main(["serve", *model, "--host", "192.0.2.1"]) == 2  # TEST-NET-1: no machine's own address
    assert "--host 192.0.2.1 is not an address of this machine: use 127.0.0.1" in capsys.readouterr().err
    assert main(["serve", *model, "--host", "no-such-host.invalid"]) == 2
    assert "--host no-such-host.invalid is not an address or a name this machine can resolve" in capsys.readouterr().err
    assert main(["serve", *model, "--device", "nonsense"]) == 2
    assert "--device 'nonsense' is not a device" in capsys.readouterr().err
    for host in ("::1", "::"):  # gradio's URL has no brackets: an httpx traceback once the model had loaded
        assert main(["serve", *model, "--host", host]) == 2
        assert f"--host {host}: IPv6 addresses are not served; use 127.0.0.1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before the out folder was made


def test_serve_refuses_an_out_holding_files_it_would_serve(tmp_path, capsys, monkeypatch):
    """Gradio serves everything under --out: `--out ~` published a home folder, keys and all."""
    from pixart.cli import main, serve

    monkeypatch.setattr(serve, "demo_model", demo_must_not_train)
    out = tmp_path / "home"
    (out / ".ssh").mkdir(parents=True)
    (out / "secret.txt").write_text("AWS_SECRET=hunter2")
    (out / "00001").mkdir()  # a request folder of an earlier server is fine ...
    (out / "00001" / "0000-a-cat-seed5.png").write_bytes(b"")
    (out / "00001" / ".0001-a-cat-seed6.png.host-123.tmp").write_bytes(b"")  # ... a kill's leftovers too
    (out / "00001" / ".mode-probe.host-123.tmp").write_bytes(b"")
    assert main(["serve", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"--out {out} holds .ssh, secret.txt, which the page would serve to whoever reaches it" in error
    (out / ".ssh").rmdir()
    (out / "secret.txt").unlink()
    (out / "2023").mkdir()  # a folder of documents named by its year passed for a request folder, and was served
    (out / "2023" / "tax-return.pdf").write_text("AWS_SECRET=hunter2")
    (out / "00002").mkdir()
    (out / "00002" / "notes.txt").write_text("not a request's")
    assert main(["serve", "--out", str(out)]) == 2
    assert f"--out {out} holds 00002 (holding notes.txt), 2023, which the page would serve" in capsys.readouterr().err
    for name in ("2023/tax-return.pdf", "00002/notes.txt", "2023", "00002"):
        (out / name).unlink() if "." in name else (out / name).rmdir()
    monkeypatch.setattr(serve, "demo_model", lambda: tmp_path / "no-such-model")  # past the check: the model fails
    assert main(["serve", "--out", str(out)]) == 2
    assert "which the page would serve" not in capsys.readouterr().err


def test_serve_takes_an_out_a_file_browser_has_shown(tmp_path, capsys, monkeypatch):
    """Opening --out in macOS's Finder (or Windows' Explorer) leaves .DS_Store files (Thumbs.db, desktop.ini,
    ._ files) in it and in the request folders looked at: the next `pixart serve` refused the folder."""
    from pixart.app import last_request_number
    from pixart.cli import main, serve

    monkeypatch.setattr(serve, "demo_model", lambda: tmp_path / "no-such-model")  # past the check: the model fails
    out = tmp_path / "out"
    (out / "00007").mkdir(parents=True)
    (out / "00007" / "0000-a-cat-seed5.png").write_bytes(b"")
    for name in (".DS_Store", "00007/.DS_Store", "00007/._0000-a-cat-seed5.png", "Thumbs.db", "00007/desktop.ini"):
        (out / name).write_bytes(b"\0")
    assert main(["serve", "--out", str(out)]) == 2
    assert "which the page would serve" not in capsys.readouterr().err
    assert last_request_number(out) == 7  # still a request folder: the next request is 00008, not 00001
    (out / ".DS_Store").unlink()
    (out / ".DS_Store").mkdir()  # a folder by that name is not a browser's file
    (out / "00007" / "notes.txt").write_text("not a request's")
    (out / "._keys").write_text("no 'keys' beside it: someone's file, not Finder's")
    assert main(["serve", "--out", str(out)]) == 2
    assert f"--out {out} holds .DS_Store, ._keys, 00007 (holding notes.txt), which the" in capsys.readouterr().err


def test_a_port_taken_at_launch_names_the_option_to_change(model_folder, tmp_path, capsys, monkeypatch):
    """Gradio's own message advised GRADIO_SERVER_PORT, which --port overrides."""
    from pixart.cli import main, serve

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setattr(serve, "check_address", lambda host, port: None)  # taken after the check, as in a race
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["serve", "--model", str(model_folder), "--port", str(port), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is in use (another server?): choose another --port" in err
    assert "GRADIO_SERVER_PORT" not in err


def test_a_model_generate_refuses_is_a_one_line_error_of_serve_too(model_folder, tmp_path, capsys, monkeypatch):
    """GenerationError while loading (a text encoder of the wrong width, say) was a traceback under serve."""
    from pixart import generate
    from pixart.cli import main, serve

    def refused(*args, **kwargs):
        raise generate.GenerationError("the text encoder t5_32 gives 32-wide features; this transformer reads 48")

    monkeypatch.setattr(serve, "check_address", lambda host, port: None)
    monkeypatch.setattr(generate.TextToImage, "from_path", refused)
    assert main(["serve", "--model", str(model_folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pixart serve: error: the text encoder t5_32 gives 32-wide features" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # made before loading, removed again: nothing was served


def test_request_numbering_reads_ascii_digit_folders_only(tmp_path):
    """A folder named with a digit int() refuses ("²") must not stop the server from starting."""
    from pixart.app import last_request_number

    for name in ("00003", "00012", "²", "①", "notes", "2023"):
        (tmp_path / name).mkdir()
    (tmp_path / "00099").write_text("a file, not a request folder")
    (tmp_path / "00100").mkdir()
    (tmp_path / "00100" / "tax-return.pdf").write_text("not an image of a request")
    assert last_request_number(tmp_path) == 12


def test_the_api_gets_a_notice_for_what_the_page_cannot_send(model_folder, tmp_path):
    """Gradio's API passes NaN through its sliders' bounds and any text through the prompt box: a prompt
    that is not UTF-8 reached the tokenizer and NaN reached int(), each a bare "Error" and a traceback."""
    from pixart.app import SEED_RANGE, Studio
    from pixart.generate import TextToImage

    studio = Studio(TextToImage.from_path(model_folder), tmp_path)
    for args, message in (
        (("a \ud800 cat", None, "1.0", None, None, 2, 4.5, 5, False, 1), "is not UTF-8 text"),
        (("a cat", None, "1.0", None, None, 2, 4.5, 5, False, float("nan")), "number of images must be a whole"),
        (("a cat", None, "1.0", None, None, 2, 4.5, float("inf"), False, 1), "the seed must be a whole number"),
        (("a cat", None, "1.0", None, None, float("nan"), 4.5, 5, False, 1), "steps must be a whole number"),
        (("a cat", None, "1.0", None, None, 2, 4.5, 5, False, 1.9), "number of images must be a whole number"),
        (("a cat " * 2000, None, "1.0", None, None, 2, 4.5, 5, False, 1), "the prompt holds 12,000 characters"),
        (("a cat", "no " * 4000, "1.0", None, None, 2, 4.5, 5, False, 1), "the negative prompt holds 12,000"),
        # image k takes seed + k: the last image's seed would be one the page refuses
        (("a cat", None, "1.0", None, None, 2, 4.5, SEED_RANGE - 2, False, 3), f"0..{SEED_RANGE - 3} for 3 image"),
        (("a cat", None, "1.0", None, None, 2, 4.5, None, False, 1), "give a seed, or tick Random seed"),  # was random
        # JSON of other types through the API: a TypeError and a bare error event before
        (("a cat", None, "1.0", None, "ddim", "10", 4.5, 3, False, 1), 'steps must be a number, got "10"'),
        (("a cat", None, "1.0", None, None, 2, 4.5, "5", False, 1), 'the seed must be a number, got "5"'),
        ((5, None, "1.0", None, None, 2, 4.5, 5, False, 1), "the prompt must be text, got 5"),
        (([], None, "1.0", None, None, 2, 4.5, 5, False, 1), "the prompt must be text, got []"),  # not "" (empty)
        (("a cat", None, "1.0", ["8x8"], None, 2, 4.5, 5, False, 1), 'the size must be text, got ["8x8"]'),
        (("a cat", None, "1.0", None, None, 2, "4.5", 5, False, 1), 'the guidance must be a number, got "4.5"'),
        (("a cat", None, "1.0", None, None, 1e308, 4.5, 5, False, 1), "steps is far too large (1e+308)"),
    ):
        reply = studio.request(*args)
        plain = html.unescape(reply.notice)  # the notice is HTML, the user's text escaped
        assert "Cannot generate" in plain and message in plain and not reply.files, (args, plain)


def test_the_page_leaves_steps_and_seed_unrounded_for_the_checks(model_folder, tmp_path):
    """gradio's Number(precision=0) rounded what the API sent (2.5 steps ran as 2, seed 3.7 as 4) and failed
    on NaN with a bare "Error" before the request's checks saw it."""
    import gradio as gr

    from pixart.app import build_app
    from pixart.generate import TextToImage

    page = build_app(TextToImage.from_path(model_folder), tmp_path)
    numbers = {block.elem_id: block for block in page.blocks.values() if isinstance(block, gr.Number)}
    assert set(numbers) == {"steps", "seed"}
    for number in numbers.values():
        assert number.preprocess(2.5) == 2.5
        assert math.isnan(number.preprocess(float("nan")))


def test_a_seed_the_command_took_is_taken_by_the_page(model_folder, tmp_path):
    """The page took seeds below 2**31: an image the CLI made with seed 5,000,000,000 could not be remade."""
    from pixart.app import Studio
    from pixart.generate import TextToImage

    reply = Studio(TextToImage.from_path(model_folder), tmp_path).request(
        "a cat", None, "1.0", None, None, 2, 4.5, 5_000_000_000, False, 1
    )
    assert "Cannot generate" not in reply.notice and reply.seed == 5_000_000_000 and reply.files, reply.notice


def test_the_model_name_in_the_title_is_shown_as_it_is(model_folder, tmp_path):
    """The title was Markdown with the path in a code span: a backtick in it ended the span."""
    import gradio as gr

    from pixart.app import build_app
    from pixart.generate import TextToImage

    page = build_app(TextToImage.from_path(model_folder), tmp_path, model_name="/models/a`b <c>")
    (title,) = [block for block in page.blocks.values() if isinstance(block, gr.HTML) and block.elem_id == "title"]
    assert "<code>/models/a`b &lt;c&gt;</code>" in title.value


def test_a_model_default_guidance_above_the_slider_is_within_its_bounds(model_folder, tmp_path):
    """A model.json whose cfg_scale lies above 20 had every request at the page's default refused by the
    slider ("Value 30 is greater than maximum value 20")."""
    import gradio as gr

    from pixart.app import build_app
    from pixart.generate import TextToImage

    pipe = TextToImage.from_path(model_folder)
    for default in (4.5, 30.0):
        page = build_app(pipe.with_spec(cfg_scale=default), tmp_path)
        (cfg,) = [block for block in page.blocks.values() if isinstance(block, gr.Slider) and block.elem_id == "cfg"]
        assert cfg.preprocess(default) == default and cfg.maximum == max(20, default)


def test_images_that_cannot_be_saved_are_a_notice_and_leave_no_empty_folder(model_folder, tmp_path, monkeypatch):
    """A full disk was a bare "Error" in the page, and left an empty request folder."""
    import pixart.outputs
    from pixart.app import Studio
    from pixart.generate import TextToImage

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pixart.outputs, "save_png", full_disk)
    reply = Studio(TextToImage.from_path(model_folder), tmp_path).request(
        "a cat", None, "1.0", None, None, 2, 4.5, 5, False, 1
    )
    assert "Cannot save the images" in reply.notice and "No space left on device" in reply.notice and not reply.files
    assert reply.seed == 5 and list(tmp_path.iterdir()) == []


def test_a_model_folder_moved_away_is_not_taken_for_a_full_disk(model_folder, tmp_path, monkeypatch):
    """The folder's own scheduler was read again at each request: with the folder moved away, every request
    on the default sampler failed, and the page said the images could not be saved in --out."""
    import shutil

    from pixart.app import Studio
    from pixart.generate import TextToImage

    moved = shutil.copytree(model_folder, tmp_path / "model")
    pipe = TextToImage.from_path(moved)
    studio = Studio(pipe, tmp_path / "out")
    request = ("a cat", None, "1.0", None, "folder", 2, 4.5, 5, False, 1)
    pipe.text_encoder  # noqa: B018 -- loaded, as serve loads it before the first request
    shutil.rmtree(moved)  # before any request: the scheduler was read with the folder
    first, again = studio.request(*request), studio.request(*request)
    assert first.files and again.files, first.notice
    assert Image.open(first.files[0]).tobytes() == Image.open(again.files[0]).tobytes()  # the same scheduler

    def unreadable(*args, **kwargs):  # what a file of the model read at a request then meets
        raise FileNotFoundError(2, "No such file or directory", str(moved / "text_encoder" / "config.json"))

    monkeypatch.setattr(pipe, "generate_batches", unreadable)
    notice = studio.request(*request).notice
    assert "Cannot read" in notice and "text_encoder/config.json" in notice and "Cannot save" not in notice


def test_a_request_out_of_gpu_memory_is_a_notice(model_folder, tmp_path, monkeypatch):
    """A request too large for the GPU (8 images at 1024 px on a small card) reached the page as Gradio's
    bare "Error"; it says what happened and what to ask instead, and writes nothing."""
    import torch

    from pixart.app import Studio
    from pixart.generate import TextToImage

    pipe = TextToImage.from_path(model_folder)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(pipe, "generate_batches", out_of_memory)
    reply = Studio(pipe, tmp_path).request("a cat", None, "1.0", None, None, 2, 4.5, 5, False, 8)
    assert "Out of GPU memory" in reply.notice and "fewer images or a smaller size" in reply.notice
    assert reply.seed == 5 and not reply.files and list(tmp_path.iterdir()) == []


def test_serve_records_its_vae_and_text_encoder_with_each_image(model_folder, tmp_path, monkeypatch):
    """pixart generate writes --vae and --text-encoder into each image's metadata; serve wrote the model alone."""
    import pixart.app
    from pixart.cli import main, serve

    made = {}

    class Page:
        def queue(self, **kwargs):
            made["queue"] = kwargs
            return self

        def launch(self, **kwargs):
            return None

    def build_app(pipe, out, **kwargs):
        made["studio"] = pixart.app.Studio(pipe, out, model_name=kwargs["model_name"], extra=kwargs.get("extra"))
        return Page()

    monkeypatch.setattr(serve, "check_address", lambda host, port: None)
    monkeypatch.setattr(pixart.app, "build_app", build_app)
    vae = model_folder / "vae"
    assert main(["serve", "--model", str(model_folder), "--vae", str(vae), "--out", str(tmp_path / "out")]) == 0
    reply = made["studio"].request("a dog", None, "1.0", None, None, 2, 4.5, 5, False, 1)
    record = json.loads(Path(reply.files[0]).with_suffix(".json").read_text())
    assert record["vae"] == str(vae) and record["model"] == str(model_folder) and "text_encoder" not in record
    # one generation at a time, and a bounded wait: an open page could queue requests without end
    assert made["queue"] == {"default_concurrency_limit": 1, "max_size": serve.QUEUE_SIZE}


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "mid-request"])
def test_sigterm_stops_the_server_as_ctrl_c_does(model_folder, tmp_path, busy):
    """kill, systemd and docker stop send SIGTERM: it ended the process at once, and the temporary --out
    (every image made) stayed behind in $TMPDIR. Stopped in the middle of a request, the interpreter's exit
    tore torch down under the worker thread: SIGABRT ("terminate called without an active exception")."""
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path), "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "pixart", "serve", "--model", str(model_folder), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        deadline = time.time() + 180
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                with NO_PROXY.open(f"http://127.0.0.1:{port}/", timeout=5):
                    break
            except OSError:
                assert time.time() < deadline, "the server did not answer in 180 s"
                time.sleep(0.5)
        assert len(list(tmp_path.glob("pixart-serve-*"))) == 1  # the temporary --out, while it serves
        if busy:  # a long request through the page's API, then the signal while it runs
            body = json.dumps({"data": ["a cat", None, "1.0", "", "ddim", 1000, 4.5, 3, False, 8]}).encode()
            call = f"http://127.0.0.1:{port}/gradio_api/call/on_generate"
            headers = {"Content-Type": "application/json"}
            event = json.loads(NO_PROXY.open(urllib.request.Request(call, data=body, headers=headers)).read())

            def listen():  # the answer stream, which the server cuts when it stops
                with contextlib.suppress(Exception):  # IncompleteRead, a reset connection...
                    NO_PROXY.open(f"{call}/{event['event_id']}").read()

            threading.Thread(target=listen, daemon=True).start()
            time.sleep(3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.stdout.read()
        said = process.stdout.read()
        assert f"serving on http://127.0.0.1:{port}/ (Ctrl+C stops it)" in said and "share=True" not in said, said
    finally:
        if process.poll() is None:
            process.kill()
    assert not list(tmp_path.glob("pixart-serve-*"))


def test_stop_ends_its_own_sessions_request_at_the_next_step_and_frees_the_slot(model_folder, tmp_path, monkeypatch):
    """A request ran to its end after its tab was closed (gradio cannot interrupt it), holding the one slot:
    an accidental 8 images at 1000 steps could only be ended by restarting the server. Stop (the button, or
    the tab closing) ends it at the next sampler step; another session's Stop leaves it alone."""
    from pixart.app import Studio
    from pixart.generate import TextToImage

    pipe = TextToImage.from_path(model_folder)
    studio = Studio(pipe, tmp_path)
    real, started = pipe.generate_batches, threading.Event()

    def two_at_a_time(*args, **kwargs):
        kwargs["batch_size"] = 2
        for number, batch in enumerate(real(*args, **kwargs)):
            yield batch
            if number == 0:
                started.set()  # one batch written: the next is sampling when Stop comes

    monkeypatch.setattr(pipe, "generate_batches", two_at_a_time)
    assert not studio.stop("tab-a")  # nothing being made
    replies = []
    long = threading.Thread(
        target=lambda: replies.append(
            studio.request("a cat", None, "1.0", None, "ddim", 1000, 4.5, 5, False, 8, session="tab-a")
        )
    )
    long.start()
    assert started.wait(120)
    assert not studio.stop("tab-b")  # another tab's Stop
    assert studio.stop("tab-a")
    long.join(60)
    assert not long.is_alive()
    notice = replies[0].notice
    assert "Stopped" in notice and "the 2 image(s) made before it are in" in notice, notice
    assert len(replies[0].files) == 2
    after = studio.request("a dog", None, "1.0", None, None, 2, 4.5, 1, False, 1, session="tab-b")
    assert after.files, after.notice  # the slot is free again


def test_a_request_keeps_the_batches_it_finished_and_runs_alone(model_folder, tmp_path, monkeypatch):
    """A server stopped mid-request wrote nothing (every image was held until the last batch); a request
    cancelled through gradio's API freed its slot while its thread sampled on, so the next ran beside it; a
    failure after the first batch did not say that batch's images were written."""
    import torch

    from pixart.app import Studio
    from pixart.generate import TextToImage

    pipe = TextToImage.from_path(model_folder)
    real = pipe.generate_batches

    def stopped_after_one(*args, **kwargs):
        kwargs["batch_size"] = 2
        for number, batch in enumerate(real(*args, **kwargs)):
            if number == 1:
                raise KeyboardInterrupt  # the server stopping: the worker thread is abandoned here
            yield batch

    monkeypatch.setattr(pipe, "generate_batches", stopped_after_one)
    studio = Studio(pipe, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        studio.request("a cat", None, "1.0", None, None, 2, 4.5, 5, False, 4)
    assert sorted(p.name for p in (tmp_path / "00001").glob("*.png")) == [
        "0000-a-cat-seed5.png",
        "0001-a-cat-seed6.png",
    ]
    inside, go_on = threading.Event(), threading.Event()

    def held(*args, **kwargs):  # a request cancelled through gradio's API: its thread samples on
        inside.set()
        go_on.wait(30)
        yield from real(*args, **kwargs)

    monkeypatch.setattr(pipe, "generate_batches", held)
    replies = []
    cancelled = threading.Thread(
        target=lambda: replies.append(studio.request("a cat", None, "1.0", None, None, 1, 4.5, 1, False, 1))
    )
    cancelled.start()
    assert inside.wait(30)
    # the next request is answered at once, not run beside it (or queued unseen behind it)
    refused = studio.request("a dog", None, "1.0", None, None, 1, 4.5, 2, False, 1)
    assert "an earlier request, cancelled, is still being made: try again when it ends" in refused.notice
    assert not refused.files
    go_on.set()
    cancelled.join()
    assert len(replies[0].files) == 1

    # a failure after the first batch says where that batch's images are, and offers them
    def out_of_memory_at_the_second(*args, **kwargs):
        kwargs["batch_size"] = 2
        for number, batch in enumerate(real(*args, **kwargs)):
            if number == 1:
                raise torch.OutOfMemoryError("CUDA out of memory")
            yield batch

    monkeypatch.setattr(pipe, "generate_batches", out_of_memory_at_the_second)
    reply = studio.request("a cat", None, "1.0", None, None, 2, 4.5, 5, False, 4)
    folder = Path(reply.files[0]).parent
    assert "Out of GPU memory" in reply.notice and "(the 2 image(s) made before it are in " in reply.notice
    assert [Path(f).name for f in reply.files] == ["0000-a-cat-seed5.png", "0001-a-cat-seed6.png"]
    assert sorted(p.name for p in folder.glob("*.png")) == ["0000-a-cat-seed5.png", "0001-a-cat-seed6.png"]


def test_labels_of_the_contact_sheet_and_the_details_table(tmp_path, monkeypatch):
    """A prompt of more than about 55 characters cut the seed out of every label of a request's sheet (they
    all read alike); a prompt of spaces showed an empty cell where an empty one said "unconditional"."""
    import pixart.outputs
    from pixart.app import details_table
    from pixart.generation_settings import GeneratedImage
    from pixart.outputs import write_images

    settings = {"sampler": "ddim", "steps": 2, "cfg_scale": 4.5, "size": [32, 32]}
    long = "a photo of a large red circle at the top left of a grey background, in bright light"
    results = [GeneratedImage(Image.new("RGB", (32, 32)), long, seed, dict(settings)) for seed in (7, 8)]
    drawn = []
    real_grid = pixart.outputs.image_grid

    def recording(images, labels, **kwargs):
        drawn.extend(labels)
        return real_grid(images, labels=labels, **kwargs)

    monkeypatch.setattr(pixart.outputs, "image_grid", recording)
    write_images(results, tmp_path)
    assert drawn == [f"seed 7: {long}", f"seed 8: {long}"]
    blank = GeneratedImage(Image.new("RGB", (32, 32)), "   ", 3, dict(settings))
    assert "<td>0</td><td><i>(empty: unconditional)</i></td><td>3</td>" in details_table([blank])


def test_a_size_of_thousands_of_digits_is_one_line():
    from pixart.data.buckets import parse_size

    with pytest.raises(ValueError, match="more than 9 digits: sizes are a few thousand pixels a side"):
        parse_size("9" * 5000 + "x32")

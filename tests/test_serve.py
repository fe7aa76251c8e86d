"""colorizer.serve: the hints page in a real browser, its HTTP API, and the command.

The browser and API tests serve ``HintEcho``, a network that paints each hint's colour where
the hint is and nothing elsewhere: a few-step alpha barely follows hints (whether a trained one
does is ``tests/test_hints.py``'s question), while this tests the page and the server, from a
click to the pixels shown. The command's test serves a real hint-trained alpha checkpoint.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from colorizer.hint_session import HintSession
from colorizer.hints import read_hints_file
from colorizer.inference import ChromaNetwork
from colorizer.models.spec import ModelSpec
from colorizer.serve import make_server
from tests.helpers import (
    QUICK,
    SMALL_MODELS,
    assert_one_line_error,
    colourful,
    train_run,
    truncated_jpeg_bytes,
)

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WIDTH, HEIGHT = 320, 240  # the test photo


class HintEcho(ChromaNetwork):
    """Each hint's ab where it is (widened by 2 px), none elsewhere: a gray photo with colour
    exactly where the hints say."""

    def __init__(self) -> None:
        self.spec = ModelSpec("echo", size_multiple=1, image_size=48, hints=True)
        self.device = torch.device("cpu")

    def __call__(self, l_norm: torch.Tensor, hints: torch.Tensor | None = None) -> torch.Tensor:
        if hints is None:
            return l_norm.new_zeros(l_norm.shape[0], 2, *l_norm.shape[2:])

        def widen(planes: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(planes, 5, stride=1, padding=2)

        ab, mask = hints[:, :2], hints[:, 2:]
        return (widen(ab.clamp(min=0)) - widen((-ab).clamp(min=0))) * widen(mask)


@contextmanager
def serving(session: HintSession) -> Iterator[str]:
    """Serve ``session`` on 127.0.0.1 (a free port) in a thread; yields the page's URL."""
    server = make_server(session, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def request(url: str, data: bytes | None = None, **headers: str) -> tuple[int, bytes]:
    """GET (or POST ``data``); the status and the body, errors included."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def photo_bytes(fmt: str = "PNG") -> bytes:
    buffer = BytesIO()
    Image.fromarray(colourful(HEIGHT, WIDTH)).save(buffer, fmt)
    return buffer.getvalue()


def test_the_api_refuses_in_one_line_what_it_cannot_use():
    session = HintSession(HintEcho(), size=48, max_upload_mb=0.5, max_megapixels=0.1)
    with serving(session) as url:
        status, body = request(f"{url}/preview", b'{"photo": 1, "points": []}')
        assert (status, body) == (409, b"no photo loaded: load one first")
        big = bytes(800_000)
        status, body = request(f"{url}/photo", big, **{"X-Filename": "big.jpg"})
        assert status == 413
        assert body == b"upload of 0.8 MB is over the 0.5 MB this server takes (max_upload_mb)"
        status, body = request(f"{url}/photo", truncated_jpeg_bytes(), **{"X-Filename": "cut.jpg"})
        assert (status, body) == (400, b"cut.jpg: truncated or corrupt")
        status, body = request(f"{url}/photo", b"<html>", **{"X-Filename": "page.jpg"})
        assert (status, body) == (400, b"page.jpg: not an image")
        huge = BytesIO()
        Image.new("RGB", (400, 300)).save(huge, "PNG")
        status, body = request(f"{url}/photo", huge.getvalue(), **{"X-Filename": "wide.png"})
        assert status == 413 and b"400 x 300 (0.1 megapixels), over the 0.1" in body

        status, body = request(f"{url}/photo", photo_bytes(), **{"X-Filename": "a%20b.png"})
        assert status == 200
        assert json.loads(body) == {"id": 1, "name": "a b.png", "width": WIDTH, "height": HEIGHT}
        outside = {"photo": 1, "points": [{"x": 10, "y": 5, "color": "#ff0000"},
                                          {"x": 320, "y": 7, "color": "#ff0000"}]}  # fmt: skip
        status, body = request(f"{url}/preview", json.dumps(outside).encode())
        assert (status, body.decode()) == (
            400, "point 1: hint at (x=320, y=7) lies outside the 320 x 240 photo"
        )  # fmt: skip
        bad_colour = {"photo": 1, "points": [{"x": 1, "y": 1, "color": "red"}]}
        status, body = request(f"{url}/preview", json.dumps(bad_colour).encode())
        assert (status, body) == (400, b"point 0: colour 'red' is not #rrggbb")
        status, body = request(f"{url}/preview", json.dumps({"photo": 7, "points": []}).encode())
        assert (status, body) == (409, b"another page loaded a b.png since: load your photo again")
        # None of that became the hints; the download is an empty hints file for the photo.
        status, body = request(f"{url}/hints.json")
        assert (status, json.loads(body)) == (200, {"a b.png": []})


def test_photos_over_pillows_limit_are_served_up_to_max_megapixels(monkeypatch):
    """Pillow's guard (89 MP; here 0.05 MP) does not refuse what ``max_megapixels`` allows."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    session = HintSession(HintEcho(), size=48, max_upload_mb=5, max_megapixels=0.1)
    with serving(session) as url:
        status, body = request(f"{url}/photo", photo_bytes(), **{"X-Filename": "p.png"})
        assert status == 200, body
    assert Image.MAX_IMAGE_PIXELS == 50_000


@pytest.fixture(scope="module")
def hint_checkpoint(tmp_path_factory) -> Path:
    """last.ckpt of alpha trained 4 steps with hints (model.hints=true) by colorizer.run."""

    run = tmp_path_factory.mktemp("checkpoint-alpha-hints")
    train_run(run, [*SMALL_MODELS["alpha"], "model.hints=true", *QUICK])
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_the_command_serves_a_hint_model_and_stops_on_ctrl_c(hint_checkpoint, tmp_path, main_of):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    command = [sys.executable, "-m", "colorizer.serve", f"ckpt_path={hint_checkpoint}",
               "port=0", "hydra.run.dir=run"]  # fmt: skip
    server = subprocess.Popen(command, cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        ready, _, _ = select.select([server.stdout], [], [], 120)
        line = server.stdout.readline() if ready else ""
        assert line.startswith("Serving model=alpha at http://127.0.0.1:"), line
        assert line.endswith(" (Ctrl+C to stop)\n")
        url = line.split()[3]
        status, page = request(url)
        assert status == 200 and b"colour hints" in page
        status, body = request(f"{url}/photo", photo_bytes("JPEG"), **{"X-Filename": "c.jpg"})
        assert status == 200, body
        hinted = {"photo": 1, "points": [{"x": 30, "y": 40, "color": "#2040ff", "radius": 5}]}
        status, png = request(f"{url}/preview", json.dumps(hinted).encode())
        assert status == 200, png
        assert Image.open(BytesIO(png)).size == (WIDTH, HEIGHT)  # below the preview side
        status, png = request(f"{url}/result.png")
        assert status == 200 and Image.open(BytesIO(png)).size == (WIDTH, HEIGHT)
        status, body = request(f"{url}/hints.json")
        assert json.loads(body) == {"c.jpg": hinted["points"]}
        port = url.rsplit(":", 1)[1]
        taken = main_of("colorizer.serve", f"ckpt_path={hint_checkpoint}", f"port={port}")
        assert_one_line_error(taken, f"port={port} is in use: pick another, or port=0")
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    finally:
        server.kill()
    assert server.returncode == 0, err[-3000:]
    assert "Traceback" not in err


def test_a_model_without_hints_is_refused_in_one_line(checkpoint_of, main_of):
    result = main_of("colorizer.serve", f"ckpt_path={checkpoint_of('alpha')}", "hydra.run.dir=run")
    assert_one_line_error(result, "model=alpha takes no hints: train it with model.hints=true")


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium (Debian's, driven by its chromedriver) downloading into tmp_path."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("the browser test needs Chromium: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1280,800", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path)})
    # The driver's path is given, so Selenium Manager downloads nothing.
    driver = webdriver.Chrome(options, webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


# The mean colour shown in a 7 x 7 window of the preview, at pixel (x, y) of a photo `width` wide.
SHOWN_COLOUR = """
const [x, y, width] = arguments, image = document.getElementById("preview");
const canvas = document.createElement("canvas");
canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
const context = canvas.getContext("2d");
context.drawImage(image, 0, 0);
const scale = image.naturalWidth / width;
const left = Math.round(x * scale) - 3, top = Math.round(y * scale) - 3;
const pixels = context.getImageData(left, top, 7, 7).data;
const sum = [0, 0, 0];
for (let i = 0; i < pixels.length; i += 4) for (let c = 0; c < 3; c++) sum[c] += pixels[i + c];
return sum.map((s) => s / 49);
"""


@pytest.mark.slow
def test_a_click_colours_the_photo_there_undo_removes_it_and_the_hints_download(browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "street.png"
    photo.write_bytes(photo_bytes())
    session = HintSession(HintEcho(), size=48, max_upload_mb=5, max_megapixels=5)
    with serving(session) as url:
        browser.get(url)
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: "ready" in b.find_element(By.ID, "status").text)
        browser.find_element(By.ID, "file").send_keys(str(photo))

        def shown_after(points: int) -> np.ndarray:
            """The preview once it shows ``points`` hints: the colour at the click."""
            preview = browser.find_element(By.ID, "preview")
            wait.until(lambda b: preview.get_attribute("data-points") == str(points))
            return np.array(browser.execute_script(SHOWN_COLOUR, x, y, WIDTH))

        def redness(rgb: np.ndarray) -> float:
            return rgb[0] - (rgb[1] + rgb[2]) / 2

        marks = browser.find_element(By.ID, "marks")
        x, y = 200, 60  # where the click lands, in the photo's pixels
        shown = shown_after(0)
        browser.execute_script(
            "const c = document.getElementById('colour'); c.value = '#ff0000';"
            "document.getElementById('radius').value = 6;"
        )
        scale = marks.size["width"] / WIDTH
        ActionChains(browser).move_to_element_with_offset(
            marks, (x + 0.5) * scale - marks.size["width"] / 2,
            (y + 0.5) * scale - marks.size["height"] / 2,
        ).click().perform()  # fmt: skip
        clicked = shown_after(1)
        assert redness(clicked) > redness(shown) + 60, (shown, clicked)

        browser.find_element(By.ID, "download-hints").click()
        hints_file = tmp_path / "street_hints.json"
        wait.until(lambda b: hints_file.exists())
        (point,) = json.loads(hints_file.read_text())["street.png"]
        assert point == {"x": x, "y": y, "color": "#ff0000", "radius": 6}
        assert read_hints_file(hints_file)["street.png"][0].x == x  # what colorize hints= reads

        browser.find_element(By.ID, "undo").click()
        undone = shown_after(0)
        assert np.abs(undone - shown).max() <= 2, (shown, undone)

        # A drag is one stroke of points along it, and one undo removes all of it.
        drag = ActionChains(browser).move_to_element_with_offset(marks, -100, 0).click_and_hold()
        drag.move_by_offset(60, 10).move_by_offset(60, 10).release().perform()
        preview = browser.find_element(By.ID, "preview")
        wait.until(lambda b: int(preview.get_attribute("data-points")) >= 3)
        browser.find_element(By.ID, "undo").click()
        shown_after(0)
        assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")

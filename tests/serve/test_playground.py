"""The web playground at `/` and the API docs, in a real headless browser (Debian's chromium driven by
Playwright), served by a real uvicorn server on a tiny backbone. Every request the pages make must stay on this
server (no CDN). Screenshots of each page land in test-output/playground/ (or $SOFTPROMPT_TEST_OUTPUT)."""

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import served
import system
import tiny
import uvicorn

from softprompt import save_prompt
from softprompt.inference.bank import PromptBank
from softprompt.serve import ServeSettings, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(os.environ.get("SOFTPROMPT_TEST_OUTPUT", Path(__file__).parents[2] / "test-output")) / "playground"


@pytest.fixture(scope="module")
def site(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("playground-prompts")
    save_prompt(folder / "sentiment.safetensors", tiny.classifier(tiny_llama, "prefix", 5, 1, ["positive=great"]))
    save_prompt(folder / "sentiment-suffix.safetensors", tiny.classifier(tiny_llama, "suffix", 3, 2))
    save_prompt(folder / "qa.safetensors", tiny.generator(tiny_llama, 4, 3))
    (folder / "broken.safetensors").write_bytes(b"not a prompt file")
    upload = tmp_path_factory.mktemp("upload") / "fresh.safetensors"
    save_prompt(upload, tiny.classifier(tiny_llama, "prefix", 4, 7))
    app = create_app(PromptBank(tiny_llama), folder, ServeSettings(admin_token=served.TOKEN, reload_interval=0,
                                                                   max_input_tokens=40, max_new_tokens=24))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}/", upload
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def page(site):
    from playwright.sync_api import sync_playwright

    system.require("chromium")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1200, "height": 860})
        outside, problems = [], []

        def only_this_server(route):
            if route.request.url.startswith(site[0]):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_this_server)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.outside, page.problems = outside, problems
        yield page
        browser.close()


def _shot(page, name):
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_prompts_are_listed_with_their_metadata(site, page):
    page.goto(site[0])
    page.wait_for_selector("#prompt-table tbody tr")
    rows = page.locator("#prompt-table tbody tr")
    assert rows.count() == 3
    table = page.inner_text("#prompt-table")
    assert "sentiment-suffix" in table and "negative, positive" in table and "generation" in table
    assert "broken" in page.inner_text("#not-loaded") and "not a readable safetensors" in page.inner_text("#not-loaded")
    assert "tiny-llama" in page.inner_text("#backbone")
    _shot(page, "1-prompts")
    assert not page.outside and not page.problems


def test_classify_shows_a_bar_per_label_and_generation_shows_text(site, page):
    page.goto(site[0])
    page.click("nav button[data-tab=try]")
    page.wait_for_selector("#try-prompt option", state="attached")
    page.select_option("#try-prompt", "sentiment")
    page.fill("#try-text", "a great film with a fine cast")
    page.click("#try-run")
    page.wait_for_selector("#try-result .bar")
    bars = page.locator("#try-result .bar")
    assert bars.count() == 2
    shares = [float(t.rstrip("%")) for t in page.locator("#try-result .bar .value").all_inner_texts()]
    assert sum(shares) == pytest.approx(100, abs=0.2) and shares == sorted(shares, reverse=True)
    served = httpx.post(site[0] + "v1/classify", json={"prompt": "sentiment", "inputs": ["a great film with a fine cast"]})
    assert page.inner_text("#try-result .predicted strong") == served.json()["results"][0]["label"]
    _shot(page, "2-classify")
    page.select_option("#try-prompt", "qa")
    page.fill("#try-text", "what is a film?")
    page.click("#try-run")
    page.wait_for_selector("#try-result .generated")
    assert "tokens, finish:" in page.inner_text("#try-result")
    _shot(page, "3-generate")
    page.fill("#try-text", "")
    page.click("#try-run")
    assert "Type a text first" in page.inner_text("#error")
    assert not page.outside and not page.problems


def test_two_prompts_compared_on_one_input(site, page):
    page.goto(site[0])
    page.click("nav button[data-tab=compare]")
    page.wait_for_selector("#compare-b option >> nth=1", state="attached")
    page.select_option("#compare-a", "sentiment")
    page.select_option("#compare-b", "sentiment-suffix")
    page.fill("#compare-text", "dull and far too long")
    page.click("#compare-run")
    page.wait_for_selector("#compare-result .result >> nth=1")
    titles = page.locator("#compare-result .result h3").all_inner_texts()
    assert titles == ["sentiment", "sentiment-suffix"]
    assert "agree" in page.inner_text("#compare-result")
    _shot(page, "4-compare")
    assert not page.outside and not page.problems


def test_upload_needs_the_token_then_serves_the_prompt(site, page):
    url, upload = site
    page.goto(url)
    page.click("nav button[data-tab=upload]")
    page.fill("#upload-name", "fresh")
    page.set_input_files("#upload-file", str(upload))
    page.fill("#upload-token", "wrong")
    page.click("#upload-run")
    page.wait_for_selector("#error:not([hidden])")
    assert "401" in page.inner_text("#error") and "admin token" in page.inner_text("#error")
    page.fill("#upload-token", served.TOKEN)
    page.click("#upload-run")
    page.wait_for_selector("#upload-result strong")
    assert "added" in page.inner_text("#upload-result")
    _shot(page, "5-upload")
    page.click("nav button[data-tab=prompts]")
    page.wait_for_selector("#prompt-table tbody tr >> text=fresh")
    page.problems.clear()  # the 401 above is logged by the browser as a failed resource
    assert not page.outside


def test_training_curves_from_a_metrics_file(site, page, tmp_path):
    records = [{"step": s, "split": "train", "loss": 2.0 / s, "accuracy": 0.5} for s in range(1, 21)]
    records += [{"step": s, "split": "validation", "accuracy": 0.5 + s / 50, "n": 50} for s in (5, 10, 15, 20)]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    page.goto(site[0])
    page.click("nav button[data-tab=curves]")
    page.set_input_files("#curves-file", str(metrics))
    page.wait_for_selector("#curves-result svg polyline >> nth=1")
    svgs = page.locator("#curves-result svg")
    assert svgs.count() == 2
    assert page.get_attribute("#curves-result svg >> nth=1", "aria-label") == "validation accuracy"
    points = page.get_attribute("#curves-result svg polyline >> nth=0", "points").split()
    assert len(points) == 20
    _shot(page, "6-curves")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    page.set_input_files("#curves-file", str(tmp_path / "bad.jsonl"))
    page.wait_for_selector("#error:not([hidden])")
    assert "line 1 is not JSON" in page.inner_text("#error")
    assert not page.outside and not page.problems


def test_api_docs_render_offline(site, page):
    page.goto(site[0] + "docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    from api_routes import ROUTES

    summaries = page.locator(".swagger-ui .opblock-summary-path").all_inner_texts()
    assert {t.replace("\u200b", "").strip() for t in summaries} == {path for path, _ in ROUTES}  # every route drawn
    assert page.locator(".swagger-ui .opblock").count() == len(ROUTES)
    _shot(page, "7-swagger")
    page.goto(site[0] + "redoc")
    page.wait_for_selector("text=\"/v1/classify\"", timeout=30_000)
    _shot(page, "8-redoc")
    assert not page.outside, page.outside

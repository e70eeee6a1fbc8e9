"""The labelling page in a real headless Chromium (selenium + Debian's chromium-driver): label with
keys and buttons, undo, reload; the JSONL holds what was shown and chosen; dpo.py:human trains on it."""
import json
import shutil

import pytest
import torch

from annotate_helpers import moons_pair_folder, start_server, stop


def chrome():
    """A headless Chromium WebDriver, or skip with the reason."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.skip(f"selenium not installed ({e}); pip install -e '.[dev]'")
    binary, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,720"):
        opts.add_argument(a)
    try:
        return webdriver.Chrome(options=opts, service=Service(driver))
    except Exception as e:  # noqa: BLE001  (no display libraries, sandbox refused, ...)
        pytest.skip(f"headless chromium cannot start: {str(e).splitlines()[0]}")


def test_page_labels_with_keys_and_buttons_undo_reload_then_dpo_trains(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    folder = moons_pair_folder(tmp_path / "pairs", 6)
    proc, url = start_server(folder)
    browser = chrome()
    try:
        wait = WebDriverWait(browser, 20)
        browser.get(url)
        pair = lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-pair")  # noqa: E731
        name = browser.find_element(By.ID, "annotator")
        name.send_keys("alice", Keys.ENTER)
        wait.until(lambda d: pair())
        expected = []

        def act(how, side):
            """Do `how` (a key or a button/img id) and remember which image it chose."""
            before = pair()
            src = {s: browser.find_element(By.ID, s).get_attribute("src") for s in ("left", "right")}
            pref = side if side in ("tie", "skip") else ("a" if src[side].endswith("_a.png") else "b")
            order = "ab" if src["left"].endswith("_a.png") else "ba"
            if how.startswith("#"):
                browser.find_element(By.ID, how[1:]).click()
            else:
                browser.find_element(By.TAG_NAME, "body").send_keys(how)
            wait.until(lambda d: pair() != before)
            expected.append((before, pref, order))

        act(Keys.ARROW_LEFT, "left")
        act("#btn-right", "right")
        act(Keys.ARROW_DOWN, "tie")
        act("s", "skip")
        undone = expected.pop()[0]
        browser.find_element(By.ID, "btn-undo").click()
        wait.until(lambda d: pair() == undone)                       # the undone pair comes back
        browser.refresh()                                            # reload: name kept, same pair
        wait.until(lambda d: pair() == undone)
        assert browser.find_element(By.ID, "annotator").get_attribute("value") == "alice"
        assert "done 3" in browser.find_element(By.ID, "progress").text
        act("#right", "right")                                       # click on an image
        act("#btn-skip", "skip")
    finally:
        browser.quit()
        stop(proc)
    rows = [json.loads(x) for x in (folder / "labels.jsonl").read_text().splitlines()]
    assert [(r["pair_id"], r["preferred"], r["shown_order"]) for r in rows] == expected
    assert {r["annotator"] for r in rows} == {"alice"} and all(r["time"].endswith("Z") for r in rows)

    from flowrl.config import load_config
    from flowrl.trainer import Trainer
    fast = ["model.base_iters=300", "num_epochs=2", "eval.num_samples=100", "eval.batch_size=100",
            "sample.eval_num_steps=5", "eval.every=0", "checkpoint.every=0", "logging.progress=False",
            f"algorithm.preference_file={folder / 'labels.jsonl'}", "sample.batch_size=8",
            "sample.num_batches_per_epoch=1", "train.batch_size=8"]
    trainer = Trainer(load_config("dpo.py:human", fast), tmp_path / "run")
    assert len(trainer.algorithm.pairs) == 3                        # the a/b labels; tie and skips left out
    before = [p.detach().clone() for p in trainer.params]
    trainer.train()
    assert trainer.opt_steps == 2 and any(not torch.equal(a, b) for a, b in zip(before, trainer.params))

"""Screenshot of the labelling page (headless Chromium) for the README:

    python scripts/annotate_screenshot.py PAIR_FOLDER scripts/figures/annotate_page.png

Serves PAIR_FOLDER with a throw-away label file (nothing is labelled), sets the annotator name, saves
a palette PNG of the page.
"""
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(folder: str, out: str) -> None:
    import httpx
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    port = 8799
    labels = Path(tempfile.mkdtemp()) / "labels.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "flowrl", "annotate", "serve", folder, "--port", str(port),
                             "--labels", str(labels)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/api/stats")
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,700"):
            opts.add_argument(a)
        browser = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
        browser.get(url)
        browser.find_element(By.ID, "annotator").send_keys("alice", Keys.ENTER)
        WebDriverWait(browser, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-pair"))
        time.sleep(1)
        png = browser.get_screenshot_as_png()
        browser.quit()
    finally:
        proc.terminate()
    im = Image.open(io.BytesIO(png)).convert("RGB").quantize(64)
    im.save(out, optimize=True)
    print(out, Path(out).stat().st_size // 1024, "KB")


if __name__ == "__main__":
    main(*sys.argv[1:3])

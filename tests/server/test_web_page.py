"""The web page at "/" in a real browser (headless Chromium): it submits a prompt through its form,
follows the job and shows the finished video (checked in the DOM); a screenshot goes to
build/test-artifacts/web_page.png (the path is printed). Run: python -m pytest tests/server/test_web_page.py
"""
import os
import re
import shutil
import subprocess
import urllib.parse

import pytest

from test_server import ROOT, Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def browse(url, *extra, budget_ms=60000):
    if not CHROMIUM:
        pytest.fail("chromium is not installed (scripts/setup.sh installs it)")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--user-data-dir=" + os.path.join(os.environ.get("TMPDIR", "/tmp"), "stdit_chromium_%d" % os.getpid()),
           "--virtual-time-budget=%d" % budget_ms] + list(extra) + [url]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return r.stdout, r.stderr


def test_page_submits_a_prompt_and_plays_the_video(tmp_path):
    s = Server(tmp_path / "data")
    try:
        q = urllib.parse.urlencode({"prompt": "a red ball moving to the right", "steps": "2", "submit": "1"})
        dom, err = browse("http://127.0.0.1:%d/?%s" % (s.port, q), "--dump-dom")
        # The job the page submitted, through the API: completed.
        status, jobs, _ = s.json("GET", "/v1/videos")
        assert status == 200 and len(jobs["data"]) == 1, (jobs, err[-2000:])
        job = jobs["data"][0]
        assert job["prompt"] == "a red ball moving to the right" and job["status"] == "completed"
        # The page shows it: the row says completed, the player holds the video (a blob of the mp4).
        assert re.search(r'<tr id="job-%s" data-status="completed">' % job["id"], dom), dom[-3000:]
        assert re.search(r'<video id="video-%s"[^>]*src="blob:' % job["id"], dom), dom[-3000:]
        assert 'alt="preview grid"' in dom
        # A screenshot of the player, kept for the test log.
        out_dir = os.path.join(ROOT, "build", "test-artifacts")
        os.makedirs(out_dir, exist_ok=True)
        shot = os.path.join(out_dir, "web_page.png")
        if os.path.exists(shot):
            os.remove(shot)
        browse("http://127.0.0.1:%d/?play=%s" % (s.port, job["id"]), "--window-size=1100,900",
               "--screenshot=" + shot, budget_ms=15000)
        assert os.path.getsize(shot) > 10000
        print("screenshot:", shot)
    finally:
        s.stop()

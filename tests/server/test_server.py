"""`stdit serve` with a real HTTP client against a real server process on 127.0.0.1 (the demo model,
CPU backend): submit, poll, download, list, cancel, every error status, kill -9 and restart, and a
bounded load test. Run: STDIT_BIN=build/stdit python -m pytest tests/server
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STDIT_BIN = os.environ.get("STDIT_BIN", os.path.join(ROOT, "build", "stdit"))
QUICK = {"num_frames": 1, "size": "32x32", "steps": 1}  # an image in a fraction of a second


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data, *args):
        self.data = str(data)
        self.port = free_port()
        self.args = list(args)
        self.start()

    def start(self):
        self.log = open(os.path.join(self.data + ".log"), "a")
        self.p = subprocess.Popen([STDIT_BIN, "serve", "--backend", "cpu", "--port", str(self.port),
                                   "--data", self.data] + self.args, stdout=subprocess.PIPE, stderr=self.log,
                                  text=True)
        line = self.p.stdout.readline()
        assert "listening on http://127.0.0.1:%d" % self.port in line, line

    def stop(self, sig=signal.SIGTERM):
        self.p.send_signal(sig)
        self.p.wait(timeout=60)
        self.log.close()

    def request(self, method, path, body=None, headers=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def json(self, method, path, body=None, **kw):
        status, data, headers = self.request(method, path, body, **kw)
        return status, json.loads(data), headers

    def wait(self, vid, states=("completed", "failed", "cancelled"), timeout=120):
        end = time.time() + timeout
        while time.time() < end:
            status, job, _ = self.json("GET", "/v1/videos/" + vid)
            assert status == 200
            if job["status"] in states:
                return job
            time.sleep(0.1)
        raise AssertionError("job %s still %s" % (vid, job["status"]))


@pytest.fixture()
def server(tmp_path):
    s = Server(tmp_path / "data")
    yield s
    s.stop()


def test_submit_poll_download(server):
    status, job, _ = server.json("POST", "/v1/videos", {"prompt": "a red ball moving to the right", "steps": 3,
                                                         "seed": 7})
    assert status == 200, job
    assert job["object"] == "video" and job["status"] in ("queued", "in_progress")
    assert job["size"] == "128x128" and job["prompt"] == "a red ball moving to the right"
    done = server.wait(job["id"])
    assert done["status"] == "completed" and done["progress"] == 100 and done["completed_at"] >= done["created_at"]
    status, mp4, headers = server.request("GET", "/v1/videos/%s/content" % job["id"])
    assert status == 200 and headers["Content-Type"] == "video/mp4"
    assert mp4[4:8] == b"ftyp" and b"avc1" in mp4  # H.264 in an mp4
    path = os.path.join(server.data, "check.mp4")
    with open(path, "wb") as f:
        f.write(mp4)
    info = subprocess.run([STDIT_BIN, "inspect", path], capture_output=True, text=True, check=True).stdout
    assert "128x128 px, 17 frames at 24 fps" in info and "a red ball moving to the right" in info
    for variant in ("thumbnail", "grid"):
        status, png, headers = server.request("GET", "/v1/videos/%s/content?variant=%s" % (job["id"], variant))
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n" and headers["Content-Type"] == "image/png"
    status, health, _ = server.json("GET", "/health")
    assert status == 200 and health["status"] == "ok"
    status, metrics, _ = server.request("GET", "/metrics")
    text = metrics.decode()
    assert 'stdit_jobs{status="completed"} 1' in text and "stdit_step_seconds_count 3" in text
    status, page, _ = server.request("GET", "/")
    assert status == 200 and b"<form" in page


def test_fp8_engine_options(tmp_path):
    # `stdit serve --precision fp8 --fp8-keep ...`: every job runs so and its file records it.
    s = Server(tmp_path / "data", "--precision", "fp8", "--fp8-keep", "fc2")
    try:
        status, job, _ = s.json("POST", "/v1/videos", {"prompt": "a red ball moving to the right", "steps": 2})
        assert status == 200, job
        assert s.wait(job["id"])["status"] == "completed"
        status, mp4, _ = s.request("GET", "/v1/videos/%s/content" % job["id"])
        path = os.path.join(s.data, "fp8.mp4")
        with open(path, "wb") as f:
            f.write(mp4)
        info = subprocess.run([STDIT_BIN, "inspect", path], capture_output=True, text=True, check=True).stdout
        assert '"precision":"fp8"' in info and '"fp8_keep":"fc2"' in info, info
        assert '"attention_kernels":"cpu"' in info, info
    finally:
        s.stop()
    bad = subprocess.run([STDIT_BIN, "serve", "--backend", "cpu", "--precision", "fp8", "--fp8-keep", "fc9",
                          "--data", str(tmp_path / "bad"), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "error: --fp8-keep: 'fc9'" in bad.stderr, bad.stderr
    bad = subprocess.run([STDIT_BIN, "serve", "--backend", "cpu", "--kernels", "fast",
                          "--data", str(tmp_path / "bad2"), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "error: --kernels must be auto or portable, got 'fast'" in bad.stderr, bad.stderr


def test_offload_keeps_only_the_denoiser(server, tmp_path):
    # /health names the models kept loaded after the last job: all three by default, only the
    # denoiser with `stdit serve --offload`; the jobs' videos are the same.
    status, health, _ = server.json("GET", "/health")
    assert status == 200 and health["offload"] is False and health["loaded_models"] == []
    s = Server(tmp_path / "data_offload", "--offload")
    try:
        files = []
        for srv in (server, s):
            status, job, _ = srv.json("POST", "/v1/videos", dict(QUICK, prompt="a red ball moving to the right", seed=3))
            assert status == 200, job
            assert srv.wait(job["id"])["status"] == "completed"
            files.append(srv.request("GET", "/v1/videos/%s/content" % job["id"])[1])
        assert server.json("GET", "/health")[1]["loaded_models"] == ["t5", "denoiser", "vae"]
        health = s.json("GET", "/health")[1]
        assert health["offload"] is True and health["loaded_models"] == ["denoiser"], health
        assert files[0] == files[1]
    finally:
        s.stop()


def test_max_memory_refuses_at_submission(tmp_path):
    # `stdit serve --max-memory G`: every job's memory plan (a dry run of its stages) is checked when
    # it is submitted; one that needs more is a 400 naming the budget, and nothing is queued.
    tight = Server(tmp_path / "data_tight", "--max-memory", "0.000001")
    roomy = Server(tmp_path / "data_roomy", "--max-memory", "8")
    try:
        status, err, _ = tight.json("POST", "/v1/videos", dict(QUICK, prompt="a red ball"))
        assert status == 400, err
        assert "--max-memory" in err["error"]["message"] and "stage" in err["error"]["message"], err
        assert tight.json("GET", "/v1/videos")[1]["data"] == []
        status, job, _ = roomy.json("POST", "/v1/videos", dict(QUICK, prompt="a red ball"))
        assert status == 200, job
        assert roomy.wait(job["id"])["status"] == "completed"
    finally:
        tight.stop()
        roomy.stop()


def test_list_newest_first_with_paging(server):
    ids = [server.json("POST", "/v1/videos", dict(QUICK, prompt="clip %d" % i))[1]["id"] for i in range(5)]
    for i in ids:
        server.wait(i)
    status, page1, _ = server.json("GET", "/v1/videos?limit=2")
    assert status == 200 and [j["id"] for j in page1["data"]] == ids[::-1][:2] and page1["has_more"]
    status, page2, _ = server.json("GET", "/v1/videos?limit=10&after=" + page1["last_id"])
    assert [j["id"] for j in page2["data"]] == ids[::-1][2:] and not page2["has_more"]


def test_cancel_running_and_queued(server):
    _, long_job, _ = server.json("POST", "/v1/videos", {"prompt": "a red ball", "steps": 1000})
    _, queued, _ = server.json("POST", "/v1/videos", dict(QUICK, prompt="waits"))
    server.wait(long_job["id"], states=("in_progress",))
    status, q, _ = server.json("DELETE", "/v1/videos/" + queued["id"])
    assert status == 200 and q["status"] == "cancelled" and q["deleted"]
    status, r, _ = server.json("DELETE", "/v1/videos/" + long_job["id"])
    assert status == 200
    job = server.wait(long_job["id"])
    assert job["status"] == "cancelled"
    assert not [f for f in os.listdir(os.path.join(server.data, "videos")) if f.startswith(long_job["id"])]
    status, err, _ = server.json("GET", "/v1/videos/%s/content" % long_job["id"])
    assert status == 404 and "cancelled" in err["error"]["message"]


def test_every_error_status(tmp_path):
    key = tmp_path / "key"
    key.write_text("s3cret-key-123\n")
    s = Server(tmp_path / "data", "--api-key-file", str(key))
    try:
        auth = {"Authorization": "Bearer s3cret-key-123"}
        status, e, _ = s.json("POST", "/v1/videos", {"prompt": "x"})
        assert status == 401 and e["error"]["type"] == "invalid_request_error"
        status, e, _ = s.json("GET", "/v1/videos", headers={"Authorization": "Bearer wrong-key-000"})
        assert status == 401
        def bad(body=None, raw=None):
            status, data, _ = s.request("POST", "/v1/videos", body, headers=auth, raw=raw)
            return status, json.loads(data)["error"]["message"]
        assert bad(raw=b"{not json") == (400, "the body is not valid JSON")
        assert bad({"steps": 3}) == (400, "'prompt' is required: a non-empty string")
        assert bad({"prompt": "x", "camera_motion": "dolly"})[1].startswith("unknown camera motion 'dolly'")
        assert bad({"prompt": "x", "num_frames": 16})[1].startswith("16 frames is not a length")
        assert bad({"prompt": "x", "size": "big"})[0] == 400
        assert bad({"prompt": "x", "seconds": "3"})[0] == 400
        assert bad({"prompt": "x", "frobnicate": 1}) == (400, "unknown field 'frobnicate'")
        assert "negative_prompt" in bad({"prompt": "x", "negative_prompt": "blur"})[1]
        status, _, _ = s.request("POST", "/v1/videos", raw=b"{" + b" " * (2 << 20) + b"}", headers=auth)
        assert status == 413
        status, e, _ = s.json("GET", "/v1/videos/video_0000", headers=auth)
        assert status == 404
        status, e, _ = s.json("PUT", "/v1/videos", {}, headers=auth)
        assert status == 405
        status, e, _ = s.json("POST", "/v1/videos/video_0000", {}, headers=auth)
        assert status == 405
        status, e, _ = s.json("GET", "/v1/videos?limit=0", headers=auth)
        assert status == 400
        status, job, _ = s.json("POST", "/v1/videos", dict(QUICK, prompt="ok"), headers=auth)
        assert status == 200
    finally:
        s.stop()


def test_kill_9_and_restart(tmp_path):
    data = tmp_path / "data"
    s = Server(data)
    _, running, _ = s.json("POST", "/v1/videos", {"prompt": "a red ball", "steps": 40})
    _, waiting, _ = s.json("POST", "/v1/videos", dict(QUICK, prompt="after"))
    s.wait(running["id"], states=("in_progress",))
    time.sleep(0.5)
    s.stop(signal.SIGKILL)  # no chance to clean up
    s.start()
    for vid in (running["id"], waiting["id"]):
        job = s.wait(vid)
        assert job["status"] == "completed", job
    status, mp4, _ = s.request("GET", "/v1/videos/%s/content" % running["id"])
    assert status == 200 and mp4[4:8] == b"ftyp"
    leftovers = [f for f in os.listdir(os.path.join(data, "videos")) if ".tmp." in f]
    assert not leftovers
    s.stop()
    # Completed files are served after a clean restart too.
    s.start()
    status, mp4b, _ = s.request("GET", "/v1/videos/%s/content" % running["id"])
    assert status == 200 and mp4b == mp4
    s.stop()


def test_bounded_load(tmp_path):
    s = Server(tmp_path / "data", "--max-queue", "12")
    accepted, rejected, errors = [], [0], []
    lock = threading.Lock()

    def client(c):
        for i in range(25):
            while True:
                status, body, headers = s.request("POST", "/v1/videos", dict(QUICK, prompt="client %d job %d" % (c, i)))
                if status == 429:
                    assert headers.get("Retry-After") == "10"
                    with lock:
                        rejected[0] += 1
                    time.sleep(0.2)  # a test need not wait the advised 10 s
                    continue
                if status != 200:
                    errors.append(body)
                else:
                    with lock:
                        accepted.append(json.loads(body)["id"])
                break

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors[:3]
        assert len(accepted) == 200 and len(set(accepted)) == 200  # none lost, none twice
        for vid in accepted:
            assert s.wait(vid, timeout=300)["status"] == "completed"
        status, metrics, _ = s.request("GET", "/metrics")
        assert 'stdit_jobs{status="completed"} 200' in metrics.decode()
        files = [f for f in os.listdir(os.path.join(s.data, "videos")) if f.endswith(".png") and ".thumb" not in f]
        assert len(files) == 200
        assert rejected[0] > 0  # the bound was reached and honoured
    finally:
        s.stop()

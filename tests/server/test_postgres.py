"""Several `stdit serve` processes on one PostgreSQL job table (a real server this test starts):
an HTTP front without a worker and two workers; every job done exactly once, and a killed worker's
job taken by the other. Run: STDIT_BIN=build/stdit python -m pytest tests/server/test_postgres.py
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from test_server import QUICK, Server, STDIT_BIN, free_port

PG_BIN = "/usr/lib/postgresql/15/bin"


def as_db_user(cmd):
    # PostgreSQL refuses to run as root: use its own account then (Debian's postgresql package).
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    if not os.path.exists(os.path.join(PG_BIN, "initdb")):
        pytest.fail("PostgreSQL 15 is not installed (scripts/setup.sh installs it)")
    d = tempfile.mkdtemp(prefix="stdit_pg_")
    os.chmod(d, 0o777)
    port = free_port()
    subprocess.run(as_db_user([PG_BIN + "/initdb", "-D", d + "/db", "-A", "trust", "-U", "postgres"]), check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(as_db_user([PG_BIN + "/pg_ctl", "-D", d + "/db", "-l", d + "/log", "-w", "-o",
                               "-p %d -k %s -c listen_addresses=127.0.0.1" % (port, d), "start"]), check=True,
                   stdout=subprocess.DEVNULL)
    yield "postgresql://postgres@127.0.0.1:%d/postgres" % port, d, port
    subprocess.run(as_db_user([PG_BIN + "/pg_ctl", "-D", d + "/db", "-m", "immediate", "stop"]), check=False,
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(d, ignore_errors=True)


def psql(pg, sql):
    url, d, port = pg
    out = subprocess.run(as_db_user(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-At", "-c", sql]),
                         check=True, capture_output=True, text=True, cwd="/").stdout
    return [line.split("|") for line in out.strip().splitlines() if line]


def start_worker(url, data, *extra):
    p = subprocess.Popen([STDIT_BIN, "serve", "--worker-only", "--backend", "cpu", "--db", url, "--data", data,
                          "--stale-after", "3"] + list(extra), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True)
    assert "worker ready" in p.stdout.readline()
    return p


def test_front_and_two_workers(postgres, tmp_path):
    url = postgres[0]
    data = str(tmp_path / "data")
    front = Server(data, "--no-worker", "--db", url, "--max-queue", "100")
    workers = [start_worker(url, data), start_worker(url, data)]
    try:
        ids = [front.json("POST", "/v1/videos", dict(QUICK, prompt="job %d" % i))[1]["id"] for i in range(24)]
        assert len(set(ids)) == 24
        for i in ids:
            assert front.wait(i, timeout=300)["status"] == "completed"
        rows = psql(postgres, "SELECT worker, COUNT(*), MAX(attempts) FROM stdit_jobs WHERE status = 'completed'"
                              " GROUP BY worker")
        assert len(rows) == 2, rows  # both workers took jobs
        assert sum(int(r[1]) for r in rows) == 24 and all(r[2] == "1" for r in rows)  # each exactly once
        status, png, _ = front.request("GET", "/v1/videos/%s/content" % ids[0])  # the front serves their files
        assert status == 200 and png[:4] == b"\x89PNG"

        # A worker killed mid-job: after its heartbeat goes stale the other worker runs the job.
        _, long_job, _ = front.json("POST", "/v1/videos", {"prompt": "a red ball", "steps": 30})
        front.wait(long_job["id"], states=("in_progress",))
        owner = psql(postgres, "SELECT worker FROM stdit_jobs WHERE id = '%s'" % long_job["id"])[0][0]
        victim = next(w for w in workers if owner.endswith(":%d" % w.pid))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        job = front.wait(long_job["id"], timeout=300)
        assert job["status"] == "completed"
        row = psql(postgres, "SELECT worker, attempts FROM stdit_jobs WHERE id = '%s'" % long_job["id"])[0]
        assert row[0] != owner and row[1] == "2"
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                w.wait(timeout=60)
        front.stop()

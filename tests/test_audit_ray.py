"""--engine ray (slow; needs requirements-ray.txt): the same rows as in-process, a two-node
cluster on this machine where both nodes work, and a worker killed mid-run."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

import explainers.services.audit as audit
from explainers.services.samples import SAMPLES_DIR

pytestmark = pytest.mark.slow
FAST = ["--methods", "gradcam", "--steps", "0", "--batch-size", "1"]


def photos(folder: Path, count: int) -> Path:
    folder.mkdir()
    samples = sorted(SAMPLES_DIR.glob("*.jpg"))
    for i in range(count):
        shutil.copy(samples[i % len(samples)], folder / f"img{i:02d}.jpg")
    return folder


def rows_of(run: Path) -> list[str]:
    return (run / "audit.csv").read_text(encoding="utf-8").splitlines()


def nodes_that_worked(err: str) -> dict[str, int]:
    """Images per Ray node, from the line the audit prints, "ray: images per node: a1b2c3d4: 3, ..."."""
    (line,) = [line for line in err.splitlines() if line.startswith("ray: images per node: ")]
    pairs = [part.rsplit(": ", 1) for part in line.removeprefix("ray: images per node: ").split(", ")]
    return {node: int(count) for node, count in pairs}


@pytest.fixture
def one_thread():
    """Ray's actors (num_cpus=1) run torch on one thread; the in-process run does too, so that
    both do the same floating-point work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_ray_rows_equal_in_process_rows(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local Ray, started and stopped by the run
    folder = photos(tmp_path / "photos", 5)
    (folder / "broken.png").write_bytes((SAMPLES_DIR / "rocket.jpg").read_bytes()[:2000])
    (tmp_path / "groups.csv").write_text(
        "image,site,x0,y0,x1,y1\nimg00.jpg,north,40,40,180,180\nimg01.jpg,south,,,,\nimg02.jpg,south,0,0,112,224\n"
    )
    argv = [str(folder), "--steps", "2", "--batch-size", "2", "--groups", str(tmp_path / "groups.csv")]
    argv += ["--group-by", "site"]
    assert audit.main([*argv, "--out", str(tmp_path / "local")]) == 0
    assert audit.main([*argv, "--engine", "ray", "--workers", "2", "--out", str(tmp_path / "ray")]) == 0
    assert "ray: images per node: " in capsys.readouterr().err
    local, ray = tmp_path / "local" / "photos", tmp_path / "ray" / "photos"
    assert rows_of(ray) == rows_of(local) and len(rows_of(local)) == 7
    for name in ("groups.csv", "group_predictions.csv"):
        assert (ray / name).read_bytes() == (local / name).read_bytes()
    assert sorted(p.name for p in (ray / "overlays").iterdir()) == sorted(
        p.name for p in (local / "overlays").iterdir()
    )


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine, one CPU each."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def test_two_node_cluster_shares_the_work(tmp_path, capsys, monkeypatch, cluster):
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    folder = photos(tmp_path / "photos", 6)
    out = tmp_path / "out"
    assert audit.main([str(folder), *FAST, "--engine", "ray", "--workers", "2", "--out", str(out)]) == 0
    nodes = nodes_that_worked(capsys.readouterr().err)
    assert len(nodes) == 2 and all(count >= 1 for count in nodes.values()) and sum(nodes.values()) == 6
    lines = rows_of(out / "photos")
    assert [line.split(",")[0] for line in lines[1:]] == [f"img{i:02d}.jpg" for i in range(6)]


def actor_processes() -> list[int]:
    """The Ray Data actors running the audit (their process title names the class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"BatchAuditor" in command and b"ray::" in command:
                pids.append(int(entry.name))
    return pids


def test_killed_worker_every_image_exactly_once(tmp_path, capsys, monkeypatch, cluster):
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    folder = photos(tmp_path / "photos", 10)
    run = tmp_path / "out" / "photos"
    killed: list[tuple[int, int]] = []  # (pid, shards written when it was killed)

    def kill_one_actor_after_the_first_shard() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            shards = list((run / "shards").glob("*.csv")) if (run / "shards").is_dir() else []
            actors = actor_processes()
            if shards and actors:
                os.kill(actors[0], signal.SIGKILL)
                killed.append((actors[0], len(shards)))
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor_after_the_first_shard, daemon=True)
    killer.start()
    status = audit.main(
        [str(folder), *FAST, "--engine", "ray", "--workers", "2", "--out", str(tmp_path / "out")]
    )
    killer.join(timeout=60)
    assert status == 0 and killed, "no actor was killed"
    assert killed[0][1] < 10  # mid-run: batches were still to come
    done = len(list((run / "shards").glob("*.csv")))
    assert done >= 10  # every batch arrived; one retried after the kill may arrive twice
    names = [line.split(",")[0] for line in rows_of(run)[1:]]
    assert names == [f"img{i:02d}.jpg" for i in range(10)]  # every image exactly once
    assert sum(nodes_that_worked(capsys.readouterr().err).values()) >= 10

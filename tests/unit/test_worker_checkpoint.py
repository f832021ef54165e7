"""The worker's checkpoint store (a real file, in a temporary directory) and its forked
writer: what is read back is what was written, whole or not at all."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from asvat.domain import checkpoint as codec
from asvat.domain.detector import Detector
from asvat.domain.policy import default_policy
from services.repeat_detector.checkpoint import (
    CheckpointStore,
    CheckpointWriter,
    code_digest,
    inspect,
    restore,
)
from tests.unit.test_checkpoint import year

META = {
    "offsets": {"0": 5, "1": 7},
    "epochs": ["e1"],
    "partitions": 2,
    "written_at": "now",
    "policy": codec.policy_digest(default_policy()),
}


def detector_with(events: int) -> Detector:
    detector = Detector(default_policy())
    for event in year()[:events]:
        detector.apply(event)
    return detector


def test_what_is_read_is_what_was_written(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp")
    assert store.read() is None
    blob = os.urandom(4500)
    full = store.write(META, blob)
    assert full["size"] == 4500
    found = store.read()
    assert found is not None
    assert found.blob == blob
    assert found.offsets == {0: 5, 1: 7} and found.epochs == {"e1"}
    second = store.write({**META, "offsets": {"0": 9}}, b"b" * 1500)
    found = store.read()
    assert found is not None and found.blob == b"b" * 1500 and found.offsets == {0: 9}
    assert second["sha256"] == found.meta["sha256"]
    assert sorted(p.name for p in store.path.iterdir()) == ["checkpoint.bin"]  # no leftovers
    assert store.file.stat().st_mode & 0o777 == 0o600  # pseudonymised personal data


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-1],  # truncated
        lambda data: data[:-1] + bytes([data[-1] ^ 1]),  # a bit flipped in the state
        lambda data: b"something else" + data,  # not a checkpoint
        lambda data: data.replace(b'"size"', b'"sighs"', 1),  # description unreadable
    ],
)
def test_a_damaged_checkpoint_is_refused(tmp_path: Path, damage: Any) -> None:
    store = CheckpointStore(tmp_path / "cp")
    store.write(META, b"x" * 100)
    store.file.write_bytes(damage(store.file.read_bytes()))
    with pytest.raises(codec.CheckpointError):
        store.read()


def test_restore_says_why_it_does_not_use_a_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path / "cp")
    detector = detector_with(300)
    store.write({**META, "partitions": 4, "code": "an older version"}, codec.dump(detector))
    with caplog.at_level("WARNING"):
        assert restore(store, default_policy(), partitions=4) is None
    assert "another version of the domain code" in caplog.text
    store.write({**META, "partitions": 4, "code": code_digest()}, codec.dump(detector))
    with caplog.at_level("WARNING"):
        assert restore(store, default_policy(), partitions=2) is None
    assert "checkpoint of 4 partitions, the topic has 2" in caplog.text
    found = restore(store, default_policy(), partitions=4)
    assert found is not None
    assert found[0].export_state() == detector.export_state()


def test_the_forked_writer_writes_the_state_as_it_was_when_forked(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp")
    writer = CheckpointWriter(store)
    detector = detector_with(2000)
    expected = codec.load(codec.dump(detector), default_policy()).export_state()
    assert writer.start(detector, META)
    assert not writer.start(detector, META)  # one at a time
    for event in year()[2000:2500]:  # the parent goes on; the child wrote the fork's copy
        detector.apply(event)
    report = writer.wait(timeout=60)
    assert report is not None and report["ok"], report
    assert report["size"] > 0 and report["meta"] == META
    assert report["private_bytes"] >= report["size"]  # it held the encoded state at least
    found = store.read()
    assert found is not None
    restored = codec.load(found.blob, default_policy())
    assert restored.export_state() == expected
    assert restored.retained_incidents < detector.retained_incidents


def test_a_write_that_never_finished_leaves_nothing_behind_once_the_next_starts(
    tmp_path: Path,
) -> None:
    """A writer killed mid-write (by the kernel, or with its worker) leaves its temporary
    file, as large as a checkpoint and as personal: the next writer removes it first."""
    store = CheckpointStore(tmp_path / "cp")
    store.write(META, b"kept")
    leftovers = [store.path / f".checkpoint.bin.{pid}.tmp" for pid in (4242, 4343)]
    for leftover in leftovers:
        leftover.write_bytes(b"half a state")
    unrelated = store.path / "notes.txt"
    unrelated.write_text("an operator's file")
    writer = CheckpointWriter(store)
    assert writer.start(detector_with(50), META)
    report = writer.wait(timeout=60)
    assert report is not None and report["ok"], report
    assert sorted(p.name for p in store.path.iterdir()) == ["checkpoint.bin", "notes.txt"]


def test_a_writer_that_fails_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "cp"
    blocker.write_text("a file where the checkpoint's directory should be")
    writer = CheckpointWriter(CheckpointStore(blocker))
    assert writer.start(detector_with(10), META)
    report = writer.wait(timeout=60)
    assert report is not None and not report["ok"]
    assert "Error" in report["error"]


def test_the_writer_runs_on_idle_cpu_goes_first_and_dies_with_its_worker(
    tmp_path: Path,
) -> None:
    """A writer takes only CPU the services leave idle (an alert must not wait for a
    checkpoint), is the first the kernel kills if memory runs out, and must not outlive a
    killed worker (it would write a state no one runs). Seen from outside while it
    encodes (held there)."""
    script = tmp_path / "worker.py"
    pid_file = tmp_path / "child"
    script.write_text(
        "import os, sys, time\n"
        "from services.repeat_detector import checkpoint as c\n"
        "def hold(detector):\n"
        f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(60)\n"
        "c.codec.dump = hold\n"
        "from asvat.domain.detector import Detector\n"
        "from asvat.domain.policy import default_policy\n"
        f"store = c.CheckpointStore(__import__('pathlib').Path({str(tmp_path)!r}) / 'cp')\n"
        "c.CheckpointWriter(store).start(Detector(default_policy()), {})\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert os.sched_getscheduler(child) == os.SCHED_IDLE
        with open(f"/proc/{child}/oom_score_adj") as adj:  # killed first if memory runs out
            assert adj.read().strip() == "1000"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the writer outlived its worker"
            time.sleep(0.05)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by init) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_worker_that_is_pid_1_writes_checkpoints(tmp_path: Path) -> None:
    """In a container the worker is often pid 1: its writer's parent is then pid 1 too,
    which must not be taken for "the parent died" (every checkpoint failed that way)."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import os, pathlib, sys\n"
        "from asvat.domain.detector import Detector\n"
        "from asvat.domain.policy import default_policy\n"
        "from services.repeat_detector.checkpoint import CheckpointStore, CheckpointWriter\n"
        "assert os.getpid() == 1, os.getpid()\n"
        f"writer = CheckpointWriter(CheckpointStore(pathlib.Path({str(tmp_path)!r}) / 'cp'))\n"
        "writer.start(Detector(default_policy()), {})\n"
        "report = writer.wait(60)\n"
        "print(report)\n"
        "sys.exit(0 if report and report['ok'] else 1)\n"
    )
    # A new PID namespace (as a container has), mapped to this user: no privilege needed.
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--pid", "--fork", sys.executable,
         str(script)],
        cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "cp" / "checkpoint.bin").exists()


def test_inspect_says_what_a_restart_would_do_without_decoding_the_state(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp")
    policy = default_policy()
    assert inspect(store, policy, 2) == {
        "directory": str(store.path), "leftovers": [], "usable": False,
        "refused": ["no checkpoint"],
    }
    detector = detector_with(300)
    store.write({**META, "code": code_digest(), "retained_incidents": 300}, codec.dump(detector))
    (store.path / ".checkpoint.bin.77.tmp").write_bytes(b"half")
    report = inspect(store, policy, 2)
    assert report["usable"] and report["refused"] == []
    assert report["offsets"] == {"0": 5, "1": 7} and report["retained_incidents"] == 300
    assert report["mode"] == "0600" and report["leftovers"] == [".checkpoint.bin.77.tmp"]
    stricter = dataclasses.replace(policy, max_lateness=policy.max_lateness + 1)
    report = inspect(store, stricter, 4)
    assert not report["usable"]
    assert report["refused"] == [
        "checkpoint of 2 partitions, the topic has 4",
        "checkpoint written under another policy",
    ]
    # What inspect refuses, restore refuses: the same checks.
    assert restore(store, stricter, 2) is None and restore(store, policy, 2) is not None
    store.file.write_bytes(store.file.read_bytes()[:-1])
    report = inspect(store, policy, 2)
    assert not report["usable"] and report["refused"][0].startswith("damaged: ")


def test_asvat_checkpoint_show_exits_0_only_when_a_restart_would_load_it(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "cp")
    store.write(
        {**META, "code": code_digest(), "retained_incidents": 300,
         "written_at": "2026-11-27T08:00:00Z", "watermark": 0},
        codec.dump(detector_with(300)),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASVAT_")}
    env["ASVAT_DATA_DIR"] = str(tmp_path / "data")

    def show(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "asvat", "checkpoint", "show", "--dir", str(store.path), *args],
            capture_output=True, text=True, env=env, timeout=60,
        )

    usable = show("--partitions", "2")
    assert usable.returncode == 0, usable.stderr
    assert "retained incidents: 300" in usable.stdout
    assert "offsets: 0: 5, 1: 7 (12 events)" in usable.stdout
    assert "usable: a restarted worker loads it" in usable.stdout
    refused = show("--partitions", "4", "--json")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["refused"] == ["checkpoint of 2 partitions, the topic has 4"]
    empty = subprocess.run(
        [sys.executable, "-m", "asvat", "checkpoint", "show", "--dir", str(tmp_path / "none")],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert empty.returncode == 1 and "  - no checkpoint" in empty.stdout

"""Leftover ``.part`` files: a killed writer's are removed at the next start, a live writer's never.

The writers here are real processes, killed with SIGKILL mid-write, or alive and writing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.core import part_files
from engine.core.part_files import GRACE_S, STALE_AFTER_S, create_part_file, part_folder, remove_stale_parts

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(os.name != "posix", reason="kills writers with SIGKILL and checks their flock")

# A writer that starts an atomic write of ``target`` and stops halfway, as a kill finds it.
HALF_WRITTEN = """
import sys, time
from pathlib import Path
from engine.data.images import write_atomically

def write(handle):
    handle.write(b"x" * 4096)
    handle.flush()
    print("writing", flush=True)
    time.sleep(600)

write_atomically(Path(sys.argv[1]), write, overwrite=True)
"""


def start_writer(target: Path) -> subprocess.Popen:
    writer = subprocess.Popen([sys.executable, "-c", HALF_WRITTEN, str(target)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline().strip() == "writing"
    return writer


def parts_of(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.*.part"))


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def kill(writer: subprocess.Popen) -> None:
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    writer.stdout.close()


def test_a_killed_writers_part_is_removed_and_a_live_writers_is_kept(tmp_path):
    target = tmp_path / "style.pt.ckpt"
    live = start_writer(target)
    dead = start_writer(target)
    try:
        kill(dead)
        assert len(parts_of(target)) == 2
        for part in parts_of(target):
            age(part, 2 * STALE_AFTER_S)  # old enough that only the lock can tell them apart
        removed = remove_stale_parts(tmp_path, target.name)
        assert len(removed) == 1 and parts_of(target) != [] and removed[0] not in parts_of(target)
        # The live writer's part is still there and still being written.
        (still,) = parts_of(target)
        assert still.stat().st_size == 4096
    finally:
        kill(live)
    assert remove_stale_parts(tmp_path, target.name) == [still] and parts_of(target) == []
    assert not target.exists()


def test_a_part_written_to_in_the_last_minute_is_kept_even_without_a_writer(tmp_path):
    """The moments between creating a part and locking it, and closing and renaming it."""
    target = tmp_path / "out.png"
    descriptor, part = create_part_file(target)
    os.close(descriptor)  # unlocked, as between close and rename
    assert remove_stale_parts(tmp_path) == [] and part.exists()
    age(part, GRACE_S + 5)
    assert remove_stale_parts(tmp_path) == [part] and not part.exists()


def test_only_the_named_files_parts_and_only_parts_are_removed(tmp_path):
    keep = [tmp_path / "a.png", tmp_path / ".a.png.json", tmp_path / ".hidden", tmp_path / "b.part"]
    for path in keep:
        path.write_bytes(b"data")
    parts = {}
    for name in ("a.png", "b.png"):
        descriptor, parts[name] = create_part_file(tmp_path / name)
        os.close(descriptor)
        age(parts[name], 2 * GRACE_S)
    assert remove_stale_parts(tmp_path, "a.png") == [parts["a.png"]]
    assert parts["b.png"].exists() and all(path.exists() for path in keep)
    assert remove_stale_parts(tmp_path) == [parts["b.png"]]
    assert all(path.exists() for path in keep)


def test_without_locks_only_an_hour_of_silence_makes_a_part_stale(tmp_path, monkeypatch):
    """Windows, or a network file system without lock support: age alone decides."""
    monkeypatch.setattr(part_files, "fcntl", None)
    descriptor, part = create_part_file(tmp_path / "w.pth")
    os.close(descriptor)
    age(part, STALE_AFTER_S / 2)
    assert remove_stale_parts(tmp_path) == [] and part.exists()
    age(part, STALE_AFTER_S + 5)
    assert remove_stale_parts(tmp_path) == [part]


def test_a_part_folder_is_locked_while_in_use_and_removed_after(tmp_path):
    with part_folder(tmp_path / "digits") as scratch:
        (scratch / "0").mkdir()
        (scratch / "0" / "0000.png").write_bytes(b"png")
        for path in (scratch, scratch / "0", scratch / "0" / "0000.png"):
            age(path, 2 * STALE_AFTER_S)
        assert remove_stale_parts(tmp_path) == [] and scratch.is_dir()
    assert not scratch.exists()


def test_a_killed_render_is_removed_when_its_newest_file_is_old(tmp_path):
    scratch = tmp_path / ".digits.0123abcd.part"
    (scratch / "3").mkdir(parents=True)
    (scratch / "3" / "0003.png").write_bytes(b"png")
    for path in (scratch, scratch / "3"):
        age(path, 2 * GRACE_S)
    assert remove_stale_parts(tmp_path) == []  # its last file is new: maybe still being written
    age(scratch / "3" / "0003.png", 2 * GRACE_S)
    assert remove_stale_parts(tmp_path) == [scratch] and not scratch.exists()


def test_the_next_write_of_a_file_removes_what_a_killed_write_of_it_left(tmp_path):
    from engine.data.images import write_atomically

    target = tmp_path / "picture.png"
    kill(start_writer(target))
    (left,) = parts_of(target)
    age(left, 2 * GRACE_S)
    write_atomically(target, lambda handle: handle.write(b"new"), overwrite=True)
    assert target.read_bytes() == b"new" and parts_of(target) == []


def test_the_style_library_listing_removes_killed_checkpoint_writes(tmp_path, monkeypatch):
    from engine.style import style_library
    from engine.style.style_library import library_dir, list_styles

    monkeypatch.setenv("CONVSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(style_library, "BUILTIN_DIR", tmp_path / "shipped")  # the library alone
    target = library_dir() / "candy.pt.ckpt"
    target.parent.mkdir(parents=True)
    kill(start_writer(target))
    age(parts_of(target)[0], 2 * GRACE_S)
    assert list_styles() == [] and parts_of(target) == []


def test_a_download_removes_what_a_killed_download_of_the_same_file_left(tmp_path):
    from engine.models import zoo

    served = tmp_path / "server" / "weights.pth"
    served.parent.mkdir()
    served.write_bytes(b"w" * 1000)
    destination = tmp_path / "cache" / "weights.pth"
    destination.parent.mkdir()
    descriptor, left = create_part_file(destination)
    os.write(descriptor, b"w" * 10)
    os.close(descriptor)  # the kill: the lock goes with the process
    age(left, 2 * GRACE_S)
    other = destination.with_name("other.pth")
    descriptor, other_part = create_part_file(other)
    os.close(descriptor)
    age(other_part, 2 * GRACE_S)
    zoo.download_weights(served.as_uri(), destination)
    assert destination.read_bytes() == b"w" * 1000
    assert sorted(os.listdir(destination.parent)) == sorted(["weights.pth", other_part.name])

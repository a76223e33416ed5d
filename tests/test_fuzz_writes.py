"""Fuzzing the command line's outputs: whatever names it is given and wherever a write fails,
it exits 0 with every output written, or 2 with one line and every file as it was.

Each example lays out a fresh folder (files that exist already, a folder or a file where an
output should go, a name used twice, a wrong suffix), picks whether to allow overwriting,
and may make the k-th staging write or the k-th rename fail with a full disk or a denied
permission. The model is the bundled one, loaded once, so an example costs a fraction of
a second.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from engine.app import session as session_module
from engine.app.cli import main
from engine.data import images

OUTPUTS = {"picture": ("--out", ".png"), "array": ("--save-array", ".npy"), "animation": ("--animation", ".gif")}
# How a name given for an output can stand in the folder.
PLACES = ("new", "existing file", "existing folder", "under a file", "wrong suffix", "same as picture")
# "new" and "existing file" drawn four times as often as the others, so that runs that
# succeed, and renames that fail after replacing a file, are not rare.
PLACE_DRAWS = ("new", "existing file") * 3 + PLACES
FAILURES = ("none", "stage", "rename")
OLD = b"the previous run's file\n"


def _lay_out(folder: Path, wanted: dict[str, str]) -> tuple[list[str], dict[Path, bytes]]:
    """The flags for the outputs ``wanted`` (output -> place) and the files that existed before."""
    flags: list[str] = []
    before: dict[Path, bytes] = {}
    picture = folder / "run.png"
    for output, place in wanted.items():
        flag, suffix = OUTPUTS[output]
        path = folder / f"{output}{suffix}"
        if place == "existing file":
            path.write_bytes(OLD)
            if output == "picture":  # the sidecar of the previous run, too
                path.with_suffix(".json").write_bytes(OLD)
        elif place == "existing folder":
            path.mkdir()
        elif place == "under a file":
            blocker = folder / f"{output}-notes.txt"
            blocker.write_bytes(OLD)
            path = blocker / f"{output}{suffix}"
        elif place == "wrong suffix":
            path = path.with_suffix(".json" if output == "picture" else ".txt")
        elif place == "same as picture" and output != "picture":
            path = picture
        if output == "picture":
            picture = path
        flags += [flag, str(path)]
    for path in folder.rglob("*"):
        if path.is_file():
            before[path] = path.read_bytes()
    return flags, before


def _failing(real, when: int, code: int):
    calls = {"n": 0}

    def call(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == when:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    return call


@pytest.fixture(scope="module")
def loaded_once(bundled):
    return bundled


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    method=st.sampled_from(["filters", "dream"]),
    wanted=st.dictionaries(st.sampled_from(list(OUTPUTS)), st.sampled_from(PLACE_DRAWS), min_size=1),
    overwrite=st.booleans(),
    failure=st.sampled_from(FAILURES),
    when=st.integers(min_value=1, max_value=4),
    code=st.sampled_from([errno.ENOSPC, errno.EACCES]),
)
# The cases that matter most, every run: a rename that fails after the picture replaced an
# old one (the old pair must come back), a full disk while staging the second file, success.
@example(method="filters", wanted={"picture": "existing file"}, overwrite=True, failure="rename", when=2, code=errno.ENOSPC)
@example(method="filters", wanted={"picture": "existing file", "array": "existing file"}, overwrite=True,
         failure="rename", when=3, code=errno.EACCES)
@example(method="dream", wanted={"picture": "new", "animation": "new"}, overwrite=False, failure="stage", when=2,
         code=errno.ENOSPC)
@example(method="dream", wanted={"picture": "existing file", "array": "new", "animation": "new"}, overwrite=True,
         failure="none", when=1, code=errno.ENOSPC)
def test_outputs_are_all_new_or_all_as_they_were(tmp_path_factory, monkeypatch, capsys, loaded_once, chelsea_path,
                                                 method, wanted, overwrite, failure, when, code):
    folder = tmp_path_factory.mktemp("outputs")
    flags, before = _lay_out(folder, wanted)
    args = ["run", method, *flags]
    if method == "dream":
        args += ["--image", chelsea_path, "--steps", "1", "--octaves", "1", "--size", "32"]
    if overwrite:
        args.append("--overwrite")
    with monkeypatch.context() as patch:
        patch.setattr(session_module, "load_model", lambda *a, **k: loaded_once)
        if failure == "stage":
            patch.setattr(images, "_stage", _failing(images._stage, when, code))
        elif failure == "rename":
            patch.setattr(os, "replace", _failing(os.replace, when, code))
        status = main(args)
    out, err = capsys.readouterr()

    event(f"exit {status}, failure {failure if failure == 'none' else 'injected'}")
    assert status in (0, 2), err
    assert "Traceback" not in err
    after = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    leftovers = [p.name for p in after if p.name.startswith(".") or p.name.endswith(".part")]
    assert not leftovers, leftovers
    if status == 2:
        assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith(("error:", "convscope"))
        assert after == before  # nothing new, nothing changed
    else:
        assert len(out.strip().splitlines()) == 1
        named = [Path(flags[i + 1]) for i in range(0, len(flags), 2)]
        for path in named:
            assert path.is_file() and path not in before or overwrite
            assert path.read_bytes() != OLD
        if "picture" in wanted:
            picture = Path(flags[flags.index("--out") + 1])
            assert picture.with_suffix(".json").read_bytes() != OLD  # the sidecar is this run's too
        untouched = {path: content for path, content in before.items() if path not in named
                     and not ("picture" in wanted and path == Path(flags[flags.index("--out") + 1]).with_suffix(".json"))}
        assert all(after[path] == content for path, content in untouched.items())

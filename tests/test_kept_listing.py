"""A large folder keeps its listing and its rows between method runs, until a folder changes.

Listing a million images stats every file (seconds); a query through the neighbour index
takes milliseconds. The thresholds are lowered here so a few files stand for a large folder.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine.data import datasets, extraction
from engine.data.datasets import open_dataset
from engine.data.feature_store import FeatureStore


@pytest.fixture
def large(monkeypatch, tmp_path):
    monkeypatch.setattr(datasets, "KEEP_LISTING_FROM", 3)
    monkeypatch.setattr(extraction, "KEEP_LISTING_FROM", 3)
    monkeypatch.setattr(datasets, "_kept", datasets.OrderedDict())
    root = tmp_path / "photos"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for index in range(2):
            (root / label / f"{index}.png").write_bytes(b"x")
    return root


def count_scans(monkeypatch) -> list:
    scans = []
    real = datasets._scan

    def counted(root):
        scans.append(root)
        return real(root)

    monkeypatch.setattr(datasets, "_scan", counted)
    return scans


def test_an_unchanged_large_folder_is_not_listed_again(large, monkeypatch):
    scans = count_scans(monkeypatch)
    first = open_dataset(large)
    assert open_dataset(large) is first and len(scans) == 1
    (large / "dog" / "2.png").write_bytes(b"x")  # a file added: its folder's time moves
    again = open_dataset(large)
    assert len(scans) == 2 and len(again) == 5
    assert open_dataset(large, fresh=True) is not again and len(scans) == 3  # Dataset > Open lists afresh


def test_a_removed_subfolder_or_a_small_folder_is_listed_again(large, monkeypatch, tmp_path):
    scans = count_scans(monkeypatch)
    open_dataset(large)
    for name in os.listdir(large / "dog"):
        os.remove(large / "dog" / name)
    os.rmdir(large / "dog")
    assert len(open_dataset(large)) == 2 and len(scans) == 2
    small = tmp_path / "few"
    small.mkdir()
    (small / "a.png").write_bytes(b"x")
    open_dataset(small)
    open_dataset(small)
    assert len(scans) == 4  # below the threshold every run lists: an edit in place is always seen


def test_the_rows_of_a_kept_listing_are_looked_up_once_while_the_store_is_unchanged(large, monkeypatch, tmp_path):
    dataset = open_dataset(large)
    store = FeatureStore.open(tmp_path / "store", {"k": 1}, dim=2)
    store.append(dataset.items[:2], np.ones((2, 2)))
    lookups = []
    real = store.lookup
    monkeypatch.setattr(store, "lookup", lambda items: lookups.append(1) or real(items))
    first = extraction._lookup(store, dataset.items)
    again = extraction._lookup(store, dataset.items)
    assert len(lookups) == 1 and (first == again).all() and list(first[:2]) == [0, 1] and (first[2:] == -1).all()
    store.append(dataset.items[2:3], np.ones((1, 2)))  # a new row: the answer may differ
    third = extraction._lookup(store, dataset.items)
    assert len(lookups) == 2 and third[2] == 2
    store.close()


def test_a_large_list_file_is_kept_until_it_or_a_listed_images_folder_changes(large, monkeypatch, tmp_path):
    import time

    reads = []
    real = datasets._open_list
    monkeypatch.setattr(datasets, "_open_list", lambda path: reads.append(path) or real(path))
    listed = tmp_path / "photos.txt"
    listed.write_text("".join(f"{path}\n" for path in sorted(map(str, large.rglob("*.png")))))
    first = open_dataset(listed)
    assert open_dataset(listed) is first and len(reads) == 1
    (large / "cat" / "0.png").rename(large / "cat" / "renamed.png")  # a listed image's folder changed
    assert len(open_dataset(listed).failures) == 1 and len(reads) == 2
    time.sleep(0.01)
    listed.write_text(listed.read_text().replace(str(large / "cat" / "0.png"), str(large / "cat" / "renamed.png")))
    again = open_dataset(listed)
    assert len(reads) == 3 and not again.failures and len(again) == 4

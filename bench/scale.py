"""Datasets past one machine: the FAISS neighbour index, embeddings of a million points,
extraction on Ray against the local engine, and patches from the kept top lists.

Each part lives in a module of its own (``bench._scale_*``), run here in turn.
"""

from __future__ import annotations

from bench.common import Row


def run() -> list[Row]:
    import importlib

    rows: list[Row] = []
    for part in ("_scale_index", "_scale_embedding", "_scale_extraction", "_scale_patches"):
        rows += importlib.import_module(f"bench.{part}").rows()
    return rows

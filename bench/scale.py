"""Datasets past one machine: the FAISS neighbour index, embeddings of a million points,
and extraction on Ray against the local engine (issue 13's measures).

Each part lives in a module of its own (``bench._scale_*``), run here in turn.
"""

from __future__ import annotations

from bench.common import Row


def run() -> list[Row]:
    import importlib

    rows: list[Row] = []
    for part in ("_scale_index", "_scale_embedding", "_scale_extraction", "_scale_patches"):
        try:
            module = importlib.import_module(f"bench.{part}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{part}":
                raise
            continue  # that part is not built yet
        rows += module.rows()
    return rows

"""Whether a dataset is large enough for a method that compares many images to mean anything.

Nearest neighbours, maximally activating patches and a 2-D embedding are statements about
a dataset: with the nine built-in sample photos, the "nearest" image is simply one of
eight others, a channel's "top patches" are whatever nine pictures there are, and t-SNE
lays out nine points at random. The panels say so (``small_dataset_note``) and point to
Dataset > Open dataset folder.

Counting is bounded: a folder is walked only until it shows enough images
(``count_images(spec, at_most)``), so a 100,000-photo folder is not listed on the way.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.data.images import IMAGE_SUFFIXES

# The fewest images with which each method's result starts to say something about the
# data. Neighbours need a pool larger than k with several images per kind; patches, a few
# images per channel among many; t-SNE and UMAP, neighbourhoods of tens of points
# (perplexity 30 is their usual setting: it needs about 100 points).
ENOUGH_IMAGES = {"neighbors": 50, "patches": 100, "embed": 100}
BUILT_IN_COUNTS = {"digits": 1797}  # known without listing: rendered from scikit-learn's set
# The panels count as a folder is typed ("/", "/home", ...): a walk that has looked at this
# many entries without finding enough images gives up (unknown: no note) instead of
# walking a whole disk on the UI thread.
MOST_ENTRIES = 20_000


def count_images(spec: str, at_most: int, most_entries: int = MOST_ENTRIES) -> int | None:
    """How many images the dataset ``spec`` holds, counting no further than ``at_most``
    (a larger folder returns ``at_most``); None when it cannot be read (the run will say
    why) or when ``most_entries`` files and folders were looked at without an answer."""
    if spec == "samples":
        from engine.data.samples import sample_paths

        return min(len(sample_paths()), at_most)
    if spec in BUILT_IN_COUNTS:
        return min(BUILT_IN_COUNTS[spec], at_most)
    root = Path(spec).expanduser()
    if not root.is_dir():
        return None
    found = seen = 0
    for _folder, subfolders, files in os.walk(root):
        found += sum(1 for name in files if name.lower().endswith(IMAGE_SUFFIXES))
        if found >= at_most:
            return at_most
        seen += len(files) + len(subfolders)
        if seen > most_entries:
            return None
    return found


def small_dataset_note(method_id: str, spec: str, count: int | None = None) -> str:
    """What the panel of ``method_id`` says about dataset ``spec`` ("" when it is large
    enough, unknown, or the method does not compare images)."""
    enough = ENOUGH_IMAGES.get(method_id)
    if enough is None or not spec:
        return ""
    if count is None:
        count = count_images(spec, enough)
    if count is None or count >= enough:
        return ""
    name = "the built-in samples" if spec == "samples" else Path(spec).name or spec
    what = {"neighbors": "nearest neighbours", "patches": "the top patches of a channel",
            "embed": "a 2-D layout"}[method_id]
    return (f"Only {count} images in {name}: too few for {what} to mean much (about {enough} or more "
            f"are needed). Open a folder of your own with Dataset > Open dataset folder.")

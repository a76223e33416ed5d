"""t-SNE of 5,000 x 1,280 features: ours (PCA to 50, openTSNE with FFT gradients) beside
scikit-learn's default TSNE, with the trustworthiness of both layouts so speed is not
bought with quality."""

from __future__ import annotations

import numpy as np

from engine.data.embedding import tsne_2d

from bench.common import Row, median_times_interleaved


def clustered_features(count: int = 5000, dimensions: int = 1280, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Like a penultimate layer's features of a labelled dataset: non-negative clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, size=(clusters, dimensions))
    members = rng.integers(0, clusters, count)
    return np.maximum(centres[members] + rng.normal(scale=0.6, size=(count, dimensions)), 0).astype(np.float32)


def ours(vectors: np.ndarray) -> np.ndarray:
    job = tsne_2d(vectors, perplexity=30, seed=0)
    try:
        while True:
            next(job)
    except StopIteration as stop:
        return stop.value


def scikit_learn(vectors: np.ndarray) -> np.ndarray:
    from sklearn.manifold import TSNE

    return TSNE(random_state=0).fit_transform(vectors)


def run(repeats: int = 3) -> list[Row]:
    from sklearn.manifold import trustworthiness

    vectors = clustered_features()
    layouts = {}
    ours_s, sklearn_s = median_times_interleaved(
        [lambda: layouts.__setitem__("ours", ours(vectors)), lambda: layouts.__setitem__("sklearn", scikit_learn(vectors))],
        repeats=repeats, warmup=0)
    sample = np.random.default_rng(1).choice(len(vectors), 2000, replace=False)
    trust = {name: trustworthiness(vectors[sample], layout[sample], n_neighbors=10) for name, layout in layouts.items()}
    return [Row("t-SNE, 5,000 x 1,280", ours_s, "s", ">= 3x scikit-learn", reference=sklearn_s,
                note=f"sklearn.manifold.TSNE defaults; trustworthiness ours {trust['ours']:.3f}, sklearn {trust['sklearn']:.3f}")]

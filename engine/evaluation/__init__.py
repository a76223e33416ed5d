"""Scores for attribution maps: does a map point at what the model uses?

- ``perturbation``: deletion and insertion curves (Petsiuk et al. 2018) and ROAD's
  most- and least-relevant-first removal with noisy linear imputation (Rong et al. 2022);
- ``pointing``: the pointing game (Zhang et al. 2016) against boxes the user supplies;
- ``reference_maps``: the maps every report is judged against: a random map, a centred
  Gaussian, and the image's edges (Sobel), which need no model at all.
"""

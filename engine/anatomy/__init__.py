"""A model's anatomy: hooks, layer names, receptive fields, the layer tree, activations."""

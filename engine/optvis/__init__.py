"""Optimising an input: objectives, parameterisations, regularisers, transforms, the loop."""

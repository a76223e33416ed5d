"""What the attribution methods share: gradients, guided backprop, maps, randomisation."""

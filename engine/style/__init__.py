"""Texture and style: Gram matrices, perceptual losses, the fast-style network and library."""

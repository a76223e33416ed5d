"""Images, samples and datasets; feature vectors on disk, neighbours and embeddings."""

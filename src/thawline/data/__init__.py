"""Image folders and their files: the walker, decoding, splits, discovery and batches, data checks, shifted copies,
the data fingerprint, Fashion-MNIST, and the decode-once image and feature caches."""

"""After training: the model card inside every checkpoint, `predict`, `export` and the eval report."""

"""The training engine: distributed setup, optimisation, checkpoints, metrics and the Trainer loop."""

"""Measuring aids the suites share: timing, FLOP counting, the synthetic train step, software versions."""

"""The GPU check's stages that are not benchmark suites (sync audit, DALI output lifetime, T2T attention) and its summary."""

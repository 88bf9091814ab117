"""Errors the library raises for bad input; stages turn them into one line and exit status 2.

Its own module (not data.py) so that every stage can catch it without depending on the MNIST
reader: a stage's dvc.yaml deps list exactly the modules it imports (tests/test_stage_deps.py).
"""


class DataError(ValueError):
    """A missing, truncated, tampered or mis-shaped data file; the message names it."""

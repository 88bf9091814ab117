"""Pipeline stages (`python -m stages.<name>`). Importing the package pins the numerical path first
(stages/_numerics.py, params `repro.portable`), before any stage imports torch or numpy."""

from stages import _numerics

_numerics.pin(_numerics.read_portable())

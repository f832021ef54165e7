"""ASVAT: Antisocial Behaviour and Vulnerability Analytical Tool."""

__version__ = "0.1.0"

# Compiled domain modules (mypyc) when they match their sources, else the sources: before
# anything imports them (asvat/native.py).
from asvat import native as _native

_native.activate()

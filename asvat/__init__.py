"""ASVAT: Antisocial Behaviour and Vulnerability Analytical Tool."""

__version__ = "0.1.0"

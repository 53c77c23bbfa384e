"""jiji-dns: answers {project}-{service}.jiji from a Corrosion subscription, forwards the rest."""

__version__ = "0.1.0"

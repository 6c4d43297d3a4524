"""The version, in a module of its own: the root package imports everything else."""

__version__ = "0.1.0.dev0"

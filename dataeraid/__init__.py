"""The Dataerai transfer daemon and its command line."""

# One version for the three distributions, kept in the SDK this one pins at exactly it.
from dataerai._version import __version__ as __version__

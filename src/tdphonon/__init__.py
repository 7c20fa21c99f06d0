"""tdphonon: temperature-dependent phonons of inorganic crystals with machine-learning potentials.

Units everywhere: eV, Å, amu, THz (imaginary frequencies as negative numbers), K.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tdphonon")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

"""avsslib: layer importance (AVSS) and hallucination-prone layers (EAVSS) for transformer LLMs.

Reproduces Song, Huang, Wu and Kang, arXiv 2411.02117 (AVSS) and 2411.10069 (EAVSS).
See ``README.md`` and the book for the data flow; the book's appendix "How we read the methods"
gives every formula and where each choice comes from.
"""

from importlib.metadata import PackageNotFoundError, version

from avsslib.errors import AvssError

try:
    __version__ = version("avsslib")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["AvssError", "__version__"]

"""Names the command line needs before any heavy library is loaded (``longgen --help`` imports
this module, not torch): the sampling methods and which of them use observed content."""

METHODS = ("alm", "alm-fused", "syncsde", "replace", "ddim", "ddpm")
OBSERVING = ("alm", "alm-fused", "syncsde", "replace")

"""Where windows meet: the canvas along the long axis, halo-tiled decoding, seam metrics.

Pure tensor code (torch, einops, numpy, the standard library); knows nothing of models or modalities.
"""

from longgen.stitch.canvas import Canvas
from longgen.stitch.decode import CausalStreamingDecoder, StreamingDecoder, tiled_decode
from longgen.stitch.seams import seam_score, temporal_seam_score, window_boundaries

__all__ = ["Canvas", "tiled_decode", "StreamingDecoder", "CausalStreamingDecoder", "seam_score", "temporal_seam_score", "window_boundaries"]

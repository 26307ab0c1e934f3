"""Video modality. Python API: :func:`video` (see :mod:`longgen.modalities.video.api`)."""


def video(*args, **kwargs):
    """See :func:`longgen.modalities.video.api.video` (imported on first call)."""
    from .api import video as _video

    return _video(*args, **kwargs)


__all__ = ["video"]

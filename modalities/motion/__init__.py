"""Motion modality. Python API: :func:`motion` (see :mod:`longgen.modalities.motion.api`)."""


def motion(*args, **kwargs):
    """See :func:`longgen.modalities.motion.api.motion` (imported on first call)."""
    from .api import motion as _motion

    return _motion(*args, **kwargs)


__all__ = ["motion"]

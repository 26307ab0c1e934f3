"""Image modality. Python API: :func:`panorama` and :func:`inpaint` (see
:mod:`longgen.modalities.image.api`)."""


def panorama(*args, **kwargs):
    """See :func:`longgen.modalities.image.api.panorama` (imported on first call, so that the
    ``longgen`` command's plugins, which live in this package, do not load torch for --help)."""
    from .api import panorama as _panorama

    return _panorama(*args, **kwargs)


def inpaint(*args, **kwargs):
    """See :func:`longgen.modalities.image.api.inpaint` (imported on first call)."""
    from .api import inpaint as _inpaint

    return _inpaint(*args, **kwargs)


__all__ = ["panorama", "inpaint"]

"""Streaming writers: the banded PNG encoder, the in-place .npy writer and its resume truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from longgen.modalities.image.writers import PNGStripWriter, write_png_stream
from longgen.modalities.motion.plugin import NPYWriter


def test_png_stream_round_trip(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (100, 37, 3), dtype=np.uint8)
    tmp = tmp_path / "stream.png"
    write_png_stream(tmp, 37, 100, (img[i:i + 30] for i in range(0, 100, 30)))
    assert np.array_equal(np.asarray(Image.open(tmp)), img)
    with pytest.raises(ValueError, match="expected 100"):
        write_png_stream(tmp, 37, 100, iter([img[:50]]))


def test_png_stream_bytes_do_not_depend_on_the_banding(tmp_path):
    """The compressed stream goes out in fixed-size IDAT chunks: any banding gives the same file
    (a smooth image, so the stream spans several chunks)."""
    from longgen.modalities.image import writers

    rng = np.random.default_rng(1)
    img = (rng.integers(0, 24, (300, 900, 3)) + np.arange(900)[None, :, None] // 4).astype(np.uint8)
    files = []
    for band in (1, 7, 64, 300):
        path = tmp_path / f"b{band}.png"
        write_png_stream(path, 900, 300, (img[i:i + band] for i in range(0, 300, band)))
        files.append(path.read_bytes())
    assert all(f == files[0] for f in files)
    sizes, pos, data = [], 8, files[0]   # PNG chunks after the signature: length, type, data, crc
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IDAT":
            sizes.append(n)
        pos += 12 + n
    assert len(sizes) >= 3 and set(sizes[:-1]) == {writers.IDAT_BYTES} and 0 < sizes[-1] <= writers.IDAT_BYTES
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b7.png")), img)


def test_strip_writer_assembles_strips_and_drops_strips_after_the_saved_state(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    out = tmp_path / "p.png"
    parts = [torch.rand(3, 16, w) * 2 - 1 for w in (8, 24, 16)]
    w = PNGStripWriter(out)
    w.open(work, None)
    w.write(parts[0])
    state = w.state()
    w.write(parts[1])  # written after the saved state: a resume must drop it
    w2 = PNGStripWriter(out)
    w2.open(work, state)
    assert sorted(p.name for p in work.glob("strip_*.png")) == ["strip_00000.png"]
    w2.write(parts[1])
    w2.write(parts[2])
    w2.close(band=5)
    full = torch.cat(parts, -1)
    expect = ((full.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(out)), expect)


def test_npy_writer_partial_file_is_valid_and_resume_truncates(tmp_path):
    out = tmp_path / "m.npy"
    chunks = [torch.randn(66, n) for n in (5, 7, 3)]
    w = NPYWriter(out)
    w.open(tmp_path, None)
    w.write(chunks[0])
    state = w.state()
    part = np.load(out)
    assert part.shape == (5, 22, 3)
    np.testing.assert_array_equal(part, chunks[0].T.reshape(5, 22, 3).numpy())
    w.write(chunks[1])
    w.f.close()
    w2 = NPYWriter(out)
    w2.open(tmp_path, state)  # resume from after the first chunk
    assert np.load(out).shape == (5, 22, 3)
    w2.write(chunks[1])
    w2.write(chunks[2])
    w2.close()
    full = torch.cat(chunks, -1).T.reshape(-1, 22, 3).numpy()
    np.testing.assert_array_equal(np.load(out), full)

"""Tests for stitch/: the canvas, halo-tiled and streaming decoding, seam metrics."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from longgen.stitch import Canvas, StreamingDecoder, seam_score, temporal_seam_score, tiled_decode, window_boundaries
from longgen.stitch.canvas import feather_ramp


# ----------------------------------------------------------------------------- helpers
def make_windows(starts, size, shape, axis, seed=0, dtype=torch.float64):
    """Random window latents of `size` along negative `axis`, one per start."""
    g = torch.Generator().manual_seed(seed)
    shape = list(shape)
    shape[axis] = size
    return [(s, torch.randn(shape, generator=g, dtype=dtype)) for s in starts]


def full_shape(windows, length, axis):
    shape = list(windows[0][1].shape)
    shape[axis] = length
    return shape


def paint_last_to_first(windows, length, axis):
    """The released ALM wide-image canvas: paint windows from the last to the first (earlier wins)."""
    out = torch.zeros(full_shape(windows, length, axis), dtype=windows[0][1].dtype)
    for start, w in reversed(windows):
        out.narrow(axis, start, w.shape[axis]).copy_(w)
    return out


def sum_over_count(windows, length, axis):
    total = torch.zeros(full_shape(windows, length, axis), dtype=torch.float64)
    count = torch.zeros(length, dtype=torch.float64)
    for start, w in windows:
        total.narrow(axis, start, w.shape[axis]).add_(w.to(torch.float64))
        count[start : start + w.shape[axis]] += 1
    return total / count.reshape((length,) + (1,) * (-axis - 1))


def run_streaming(canvas, windows, axis):
    """Add windows in order; after each, finish everything before the next window's start."""
    chunks = []
    for i, (start, w) in enumerate(windows):
        canvas.add(start, w)
        nxt = windows[i + 1][0] if i + 1 < len(windows) else canvas.written
        chunk = canvas.finish(nxt)
        if chunk is not None:
            chunks.append(chunk)
    return torch.cat(chunks, dim=axis)


# ----------------------------------------------------------------------------- canvas: paste
def test_paste_equals_last_to_first_painting_bit_exactly():
    starts = [0, 5, 10, 15, 20, 25]  # size 8, stride 5: 3-position overlaps
    windows = make_windows(starts, 8, (4, 3, 8), axis=-1)
    got = run_streaming(Canvas(33, axis=-1), windows, axis=-1)
    assert torch.equal(got, paint_last_to_first(windows, 33, -1))
    # overlap [5, 8) keeps window 0's values, [8, 13) is window 1's own
    assert torch.equal(got[..., 5:8], windows[0][1][..., 5:8])
    assert torch.equal(got[..., 8:13], windows[1][1][..., 3:8])
    assert got.dtype == torch.float64


def test_paste_video_axis_irregular_strides():
    starts = [0, 3, 3, 9, 16, 17]  # equal starts, contained windows, a touching window
    windows = make_windows(starts, 7, (2, 7, 3, 5), axis=-3, seed=1, dtype=torch.float32)
    canvas = Canvas(24, axis=-3)
    got = run_streaming(canvas, windows, axis=-3)
    assert torch.equal(got, paint_last_to_first(windows, 24, -3))
    assert got.shape == (2, 24, 3, 5) and got.dtype == torch.float32


# ----------------------------------------------------------------------------- canvas: average
def test_average_equals_sum_over_count():
    starts = [0, 4, 8, 10, 16, 20]
    windows = make_windows(starts, 9, (6, 9), axis=-1, seed=2)  # motion-like (features, frames)
    got = run_streaming(Canvas(29, axis=-1, mode="average"), windows, axis=-1)
    ref = sum_over_count(windows, 29, -1)
    assert (got - ref).abs().max().item() <= 1e-12
    # position 8 is covered by windows at 0, 4, 8: the plain mean of three values
    manual = (windows[0][1][:, 8] + windows[1][1][:, 4] + windows[2][1][:, 0]) / 3
    assert (got[:, 8] - manual).abs().max().item() <= 1e-12


def test_average_half_precision_keeps_dtype_and_accumulates_in_float32():
    windows = make_windows([0, 2, 4, 6], 4, (3, 4), axis=-1, seed=3, dtype=torch.float16)
    got = run_streaming(Canvas(10, axis=-1, mode="average"), windows, axis=-1)
    assert got.dtype == torch.float16
    ref = sum_over_count(windows, 10, -1).to(torch.float16)
    assert (got.double() - ref.double()).abs().max().item() <= 1e-3


# ----------------------------------------------------------------------------- canvas: feather
def test_feather_ramp_closed_form_and_weights_sum_to_one():
    # two windows of constants 0 and 1: the merged overlap IS the new window's weight
    def blend(overlap, feather):
        c = Canvas(8 + 8 - overlap, axis=-1, mode="feather", feather=feather)
        c.add(0, torch.zeros(2, 8, dtype=torch.float64))
        c.add(8 - overlap, torch.ones(2, 8, dtype=torch.float64))
        return c.finish()[0, 8 - overlap : 8]

    assert torch.allclose(blend(4, None), torch.tensor([1, 2, 3, 4], dtype=torch.float64) / 5, atol=1e-15)
    assert torch.allclose(blend(6, 2), torch.tensor([0, 0, 1 / 3, 2 / 3, 1, 1], dtype=torch.float64), atol=1e-15)
    assert torch.equal(blend(5, 0), torch.tensor([0, 0, 1, 1, 1], dtype=torch.float64))  # hard cut in the middle
    # old weight (1 - a) + new weight a == 1, and the ramp is symmetric
    a = feather_ramp(7, None, torch.float64)
    assert torch.allclose(a + a.flip(0), torch.ones(7, dtype=torch.float64), atol=1e-15)
    # weights 2 and 5 blended: value = 2 (1 - a) + 5 a, checked at the ramp's middle (a = 1/2)
    c = Canvas(12, axis=-1, mode="feather")
    c.add(0, torch.full((1, 8), 2.0, dtype=torch.float64))
    c.add(4, torch.full((1, 8), 5.0, dtype=torch.float64))
    assert torch.allclose(c.read(4, 8)[0], 2 + 3 * torch.arange(1, 5, dtype=torch.float64) / 5, atol=1e-14)


def test_feather_constant_field_stays_constant():
    value = 0.1234567891234  # not representable exactly: rounding would show
    windows = [(s, torch.full((3, 4, 10), value, dtype=torch.float64)) for s in [0, 3, 7, 11, 12, 18]]
    got = run_streaming(Canvas(28, axis=-1, mode="feather", feather=3), windows, axis=-1)
    assert torch.equal(got, torch.full((3, 4, 28), value, dtype=torch.float64))


@pytest.mark.parametrize("mode,feather", [("paste", None), ("feather", None), ("feather", 2), ("average", None)])
def test_finished_chunks_equal_one_final_finish(mode, feather):
    starts = [0, 6, 12, 14, 20, 26, 32]
    windows = make_windows(starts, 10, (2, 3, 10), axis=-1, seed=4)
    chunked = run_streaming(Canvas(42, -1, mode, feather), windows, axis=-1)
    whole = Canvas(42, -1, mode, feather)
    for s, w in windows:
        whole.add(s, w)
    assert torch.equal(chunked, whole.finish(42))


def test_read_returns_resolved_overlap():
    windows = make_windows([0, 4], 8, (2, 8), axis=-1, seed=5)
    c = Canvas(12, axis=-1, mode="average")
    c.add(*windows[0])
    c.add(*windows[1])
    ref = sum_over_count(windows, 12, -1)
    assert (c.read(4, 8) - ref[:, 4:8]).abs().max().item() <= 1e-15
    c.finish(4)
    assert (c.read(4, 12) - ref[:, 4:12]).abs().max().item() <= 1e-15


# ----------------------------------------------------------------------------- canvas: memory and resume
def test_finish_keeps_memory_bounded_by_the_window():
    size, stride, n = 16, 8, 50
    length = size + stride * (n - 1)
    canvas, total, peak = Canvas(length, axis=-1, mode="average"), 0, 0
    g = torch.Generator().manual_seed(6)
    for i in range(n):
        canvas.add(i * stride, torch.randn(4, 8, size, generator=g))
        peak = max(peak, canvas.buffered)
        chunk = canvas.finish((i + 1) * stride if i + 1 < n else length)
        total += chunk.shape[-1]
        assert canvas.buffered == size - stride if i + 1 < n else canvas.buffered == 0
        assert canvas._values.shape[-1] == canvas.buffered and canvas._count.shape[0] == canvas.buffered
    assert peak == size  # never more than one window, though the output is 408 positions
    assert total == length and canvas.done == length


@pytest.mark.parametrize("mode,feather", [("paste", None), ("feather", 3), ("average", None)])
def test_state_dict_round_trip_continues_bit_identically(mode, feather):
    starts = [0, 5, 10, 12, 17, 22, 27]
    windows = make_windows(starts, 9, (3, 2, 9), axis=-1, seed=7, dtype=torch.float32)
    reference = run_streaming(Canvas(36, -1, mode, feather), windows, axis=-1)

    canvas, chunks = Canvas(36, -1, mode, feather), []
    for i, (s, w) in enumerate(windows[:4]):
        canvas.add(s, w)
        chunks.append(canvas.finish(windows[i + 1][0]))
    buf = io.BytesIO()
    torch.save(canvas.state_dict(), buf)
    buf.seek(0)
    resumed = Canvas.from_state_dict(torch.load(buf, weights_only=True))
    del canvas
    assert resumed.done == 17 and resumed.written == 21
    for i, (s, w) in enumerate(windows[4:], start=4):
        resumed.add(s, w)
        chunks.append(resumed.finish(windows[i + 1][0] if i + 1 < len(windows) else 36))
    assert torch.equal(torch.cat([c for c in chunks if c is not None], dim=-1), reference)


# ----------------------------------------------------------------------------- canvas: bad input
def test_canvas_rejects_bad_input():
    c = Canvas(20, axis=-1)
    c.add(0, torch.zeros(2, 8))
    c.finish(6)
    with pytest.raises(ValueError, match=r"start=4.*done=6"):
        c.add(4, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="length 20"):
        c.add(6, torch.zeros(2, 15))
    with pytest.raises(ValueError, match="gap"):
        c.add(9, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="does not match"):
        c.add(6, torch.zeros(3, 8))
    with pytest.raises(ValueError, match="dtype"):
        c.add(6, torch.zeros(2, 8, dtype=torch.float64))
    c.add(7, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="non-decreasing"):
        c.add(6, torch.zeros(2, 8))
    with pytest.raises(ValueError, match="outside"):
        c.finish(16)  # past the written extent 15
    with pytest.raises(ValueError, match="outside"):
        c.finish(5)  # backwards
    with pytest.raises(ValueError, match="outside"):
        c.read(2, 8)  # already finished
    assert c.finish(6) is None  # empty chunk
    for kwargs in [dict(length=10, axis=1), dict(length=0, axis=-1), dict(length=10, axis=-1, mode="blend"),
                   dict(length=10, axis=-1, mode="paste", feather=2)]:
        with pytest.raises(ValueError):
            Canvas(**kwargs)


# ----------------------------------------------------------------------------- decoding
def _image_decoder():
    """Bilinear 8x upsample, then a fixed 3x3 conv: each pixel sees latents within 1 of its own (<= 2)."""
    g = torch.Generator().manual_seed(8)
    weight = torch.randn(3, 4, 3, 3, generator=g, dtype=torch.float64)

    def decode(z):  # (4, h, w) -> (3, 8h, 8w)
        up = F.interpolate(z[None], scale_factor=8, mode="bilinear", align_corners=False)
        return F.conv2d(up, weight, padding=1)[0]

    return decode


def _frame_decoder():
    """Per-frame channel mix plus a 5-tap temporal conv: receptive field exactly 2 frames each side."""
    g = torch.Generator().manual_seed(9)
    mix = torch.randn(3, 4, generator=g, dtype=torch.float64)
    taps = torch.randn(5, generator=g, dtype=torch.float64)

    def decode(z):  # (4, f, h, w) -> (3, f, h, w)
        y = torch.einsum("oc,cfhw->ofhw", mix, z)
        col = y.permute(0, 2, 3, 1).reshape(-1, 1, y.shape[1])  # (3*h*w, 1, f)
        out = F.conv1d(col, taps.view(1, 1, 5), padding=2)
        return out.reshape(y.shape[0], y.shape[2], y.shape[3], -1).permute(0, 3, 1, 2)

    return decode


def test_tiled_decode_equals_whole_decode_with_enough_halo():
    decode = _image_decoder()
    z = torch.randn(4, 3, 37, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    whole = decode(z)
    assert whole.shape == (3, 24, 296)
    err = (tiled_decode(decode, z, axis=-1, tile=8, halo=2, scale=8) - whole).abs().max().item()
    assert err <= 1e-6
    err0 = (tiled_decode(decode, z, axis=-1, tile=8, halo=0, scale=8) - whole).abs().max().item()
    assert err0 > 1e-2  # without a halo the tile edges are visibly wrong


def test_tiled_decode_halo_must_cover_the_receptive_field():
    decode = _frame_decoder()  # receptive field 2 frames
    z = torch.randn(4, 30, 2, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    whole = decode(z)
    assert (tiled_decode(decode, z, axis=-3, tile=7, halo=2) - whole).abs().max().item() <= 1e-12
    assert (tiled_decode(decode, z, axis=-3, tile=7, halo=1) - whole).abs().max().item() > 1e-3


def test_tiled_decode_rejects_a_decoder_with_the_wrong_scale():
    z = torch.zeros(4, 3, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="expected 20"):
        tiled_decode(_image_decoder(), z, axis=-1, tile=4, halo=1, scale=4)
    with pytest.raises(ValueError, match="tile"):
        tiled_decode(_image_decoder(), z, axis=-1, tile=0, halo=1, scale=8)


def test_streaming_decoder_equals_whole_decode_and_lags_by_halo():
    decode = _image_decoder()
    z = torch.randn(4, 3, 41, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    sizes = [5, 1, 1, 9, 3, 8, 2, 12]  # includes chunks smaller than the halo
    assert sum(sizes) == 41
    dec, outs, pushed, max_pending = StreamingDecoder(decode, axis=-1, halo=2, scale=8), [], 0, 0
    for n in sizes:
        out = dec.push(z[..., pushed : pushed + n])
        pushed += n
        if out is not None:
            outs.append(out)
        emitted = sum(o.shape[-1] for o in outs)
        assert emitted == 8 * max(0, pushed - 2)  # lags exactly `halo` latents
        max_pending = max(max_pending, dec.pending.shape[-1])
    outs.append(dec.flush())
    got = torch.cat(outs, dim=-1)
    assert (got - decode(z)).abs().max().item() <= 1e-6
    assert max_pending <= max(sizes) + 2 * 2


def test_streaming_decoder_resume_is_bit_identical():
    decode = _frame_decoder()
    z = torch.randn(4, 26, 2, 2, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    cuts = [0, 4, 9, 10, 17, 22, 26]

    def run(resume_after):
        dec, outs = StreamingDecoder(decode, axis=-3, halo=2), []
        for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
            outs.append(dec.push(z[:, a:b]))
            if i == resume_after:
                buf = io.BytesIO()
                torch.save(dec.state_dict(), buf)
                buf.seek(0)
                dec = StreamingDecoder(decode, axis=-3, halo=2)
                dec.load_state_dict(torch.load(buf, weights_only=True))
        outs.append(dec.flush())
        return torch.cat([o for o in outs if o is not None], dim=-3)

    plain = run(resume_after=-1)
    assert torch.equal(run(resume_after=2), plain)
    assert (plain - decode(z)).abs().max().item() <= 1e-12


def test_canvas_to_streaming_decoder_end_to_end():
    """Finished canvas chunks, decoded as a stream, equal decoding the ALM-painted canvas at once."""
    decode = _image_decoder()
    starts = [0, 6, 12, 18]
    windows = make_windows(starts, 8, (4, 2, 8), axis=-1, seed=14)
    canvas, dec, outs = Canvas(26, axis=-1), StreamingDecoder(decode, axis=-1, halo=2, scale=8), []
    for i, (s, w) in enumerate(windows):
        canvas.add(s, w)
        outs.append(dec.push(canvas.finish(starts[i + 1] if i + 1 < len(starts) else 26)))
    outs.append(dec.flush())
    got = torch.cat([o for o in outs if o is not None], dim=-1)
    assert (got - decode(paint_last_to_first(windows, 26, -1))).abs().max().item() <= 1e-6


def test_streaming_decoder_rejects_misuse():
    dec = StreamingDecoder(lambda z: z, axis=-1, halo=1)
    dec.push(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="does not match"):
        dec.push(torch.zeros(3, 4))
    dec.flush()
    with pytest.raises(ValueError, match="after flush"):
        dec.push(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="halo"):
        StreamingDecoder(lambda z: z, axis=-1, halo=-1)


# ----------------------------------------------------------------------------- seams
def _smooth_noise(seed, shape=(4, 3, 8, 300), width=4.0):
    """Stationary noise: white noise convolved with a Gaussian along the last axis (valid part only)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.arange(-12, 13, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (k / width) ** 2)
    white = torch.randn(*shape[:-1], shape[-1] + 24, generator=g, dtype=torch.float64)
    flat = white.reshape(-1, 1, white.shape[-1])
    return F.conv1d(flat, kernel.view(1, 1, -1)).reshape(shape)


def test_seam_score_is_one_on_stationary_noise_and_large_with_an_offset():
    boundaries = list(range(40, 300, 40))
    clean = [seam_score(_smooth_noise(s), boundaries, axis=-1) for s in range(5)]
    assert 0.8 <= sum(clean) / len(clean) <= 1.25
    x = _smooth_noise(0)
    step = x.diff(dim=-1).pow(2).mean().sqrt()  # typical step inside a window
    shifted = x.clone()
    for b in boundaries:
        shifted[..., b:] += 3 * step  # a jump of 3 typical steps at each boundary
    assert seam_score(shifted, boundaries, axis=-1) > 5.0


def test_seam_score_closed_form_on_a_ramp():
    # steps of 1 inside, 1 + 3 = 4 across the boundaries: score = 16 / 1 exactly
    x = torch.arange(30, dtype=torch.float64).repeat(2, 1)  # (2, 30)
    for b in (10, 20):
        x[:, b:] += 3
    assert seam_score(x, [10, 20], axis=1) == pytest.approx(16.0, abs=1e-12)
    frames = x.T.reshape(30, 2, 1, 1).expand(30, 2, 3, 3)  # (F, C, H, W)
    assert temporal_seam_score(frames, [10, 20]) == pytest.approx(16.0, abs=1e-12)
    assert seam_score(torch.ones(3, 10), [5], axis=-1) == 1.0  # nothing changes anywhere


def test_seam_score_rejects_bad_boundaries():
    x = torch.randn(3, 10)
    for bad in ([0], [10], [-1], []):
        with pytest.raises(ValueError):
            seam_score(x, bad, axis=-1)
    with pytest.raises(ValueError, match="axis"):
        seam_score(x, [5], axis=2)


def test_window_boundaries_match_where_paste_content_changes():
    assert window_boundaries([0, 48, 96, 144, 192], [64] * 5, scale=8) == [512, 896, 1280, 1664]
    assert window_boundaries([0, 2], [8, 4]) == []  # contained window adds nothing
    # independent check: windows of distinct constants; paste changes value exactly at the boundaries
    starts, sizes = [0, 3, 5, 9, 9, 14], [6, 6, 4, 5, 7, 6]
    c = Canvas(20, axis=-1)
    for i, (s, n) in enumerate(zip(starts, sizes)):
        c.add(s, torch.full((1, n), float(i)))
    row = c.finish()[0]
    changes = [p for p in range(1, 20) if row[p] != row[p - 1]]
    assert window_boundaries(starts, sizes) == changes
    with pytest.raises(ValueError):
        window_boundaries([0, 5], [8])
    with pytest.raises(ValueError):
        window_boundaries([5, 0], [8, 8])


def _causal_step(piece, cache, start):
    """A causal decoder with a per-call statistic (like a GroupNorm over the call's frames) and a
    cache of its last output frame: output = 2 * piece - mean(piece) + cache."""
    prev = torch.zeros_like(piece[:, :1]) if cache is None else cache
    out = 2 * piece - piece.mean(dim=1, keepdim=True) + prev
    return out, out[:, -1:].clone()


def test_causal_stream_makes_the_whole_decodes_calls_and_resumes():
    from longgen.stitch import CausalStreamingDecoder

    z = torch.randn(3, 11, 2, generator=torch.Generator().manual_seed(0))
    calls = [0, 3, 5, 7, 9, 11]
    whole, cache = [], None
    for a, b in zip(calls, calls[1:]):
        out, cache = _causal_step(z[:, a:b], cache, a)
        whole.append(out)
    whole = torch.cat(whole, 1)
    dec = CausalStreamingDecoder(_causal_step, axis=1, replay=None, batches=calls)
    outs = [dec.push(z[:, a:b]) for a, b in ((0, 2), (2, 6), (6, 11))]
    assert outs[0] is None and outs[1].shape[1] == 5 and dec.flush() is None
    assert torch.equal(torch.cat(outs[1:], 1), whole)
    # cut after 6 latents (one waiting), state reloaded: the rest continues exactly
    live = CausalStreamingDecoder(_causal_step, axis=1, replay=None, batches=calls)
    first = live.push(z[:, :6])
    resumed = CausalStreamingDecoder(_causal_step, axis=1, replay=None, batches=calls)
    resumed.load_state_dict(live.state_dict())
    assert torch.equal(torch.cat([first, resumed.push(z[:, 6:])], 1), whole)
    with pytest.raises(ValueError, match="replay=3"):
        CausalStreamingDecoder(_causal_step, axis=1, replay=3, batches=calls).load_state_dict(live.state_dict())
    with pytest.raises(ValueError, match="batches must rise from 0"):
        CausalStreamingDecoder(_causal_step, axis=1, replay=None, batches=[1, 4])

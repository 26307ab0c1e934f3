"""Decoding a long latent in pieces with a halo of context, in one go or as a stream.

A decoder (VAE, per-frame video decoder, identity for motion) maps a latent whose long axis has n
positions to an output with n * scale positions. Decoding a piece on its own makes its edges wrong
when the decoder looks at neighbours (convolutions, upsampling). Giving each piece `halo` extra
latents of context on each side and cropping their output away fixes this:

- exact (up to float rounding) when the decoder is translation-equivariant along the axis and each
  output position depends only on latents within `halo` positions of its own (receptive field
  <= halo latents each side);
- approximate otherwise, e.g. for a VAE decoder whose GroupNorm statistics and mid-block attention
  are global: the error shrinks as the halo grows but does not vanish.

The released ALM wide-image code and diffusers' panorama pipeline decode the whole canvas in one
VAE call (Hleephilip/ALM_public alm/wide_image.py; diffusers StableDiffusionPanoramaPipeline);
tiling with a halo is what lets longgen decode and write while later windows are being sampled.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

Decode = Callable[[Tensor], Tensor]


def _check_args(axis: int, halo: int, scale: int) -> None:
    if not isinstance(axis, int):
        raise ValueError(f"axis must be an int, got {axis!r}")
    if not isinstance(halo, int) or halo < 0:
        raise ValueError(f"halo must be an int >= 0, got {halo!r}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an int >= 1, got {scale!r}")


def decode_span(decode: Decode, latent: Tensor, axis: int, lo: int, hi: int, start: int, stop: int, scale: int,
                first: int | None = None) -> Tensor:
    """Decode latent[lo:hi] along `axis` and keep the output of latents [start, stop) (lo <= start <= stop <= hi).

    ``first``: the stream position of ``latent[0]``; given, the decoder is called as
    ``decode(piece, first + lo)`` (a decoder whose output depends on where the piece sits)."""
    piece = latent.narrow(axis, lo, hi - lo)
    out = decode(piece) if first is None else decode(piece, first + lo)
    if out.shape[axis] != (hi - lo) * scale:
        raise ValueError(f"decode gave {out.shape[axis]} positions along axis {axis} for {hi - lo} latents; expected {(hi - lo) * scale} (scale={scale})")
    return out.narrow(axis, (start - lo) * scale, (stop - start) * scale)


def tiled_decode(decode: Decode, latent: Tensor, axis: int, tile: int, halo: int, scale: int = 1,
                 circular: bool = False) -> Tensor:
    """Decode `latent` in tiles of `tile` latents along `axis`, each with `halo` latents of context per side.

    Returns the tiles' cropped outputs concatenated: (…, n * scale, …) along axis. Equals
    `decode(latent)` exactly when the decoder's receptive field along axis is <= halo latents.
    ``circular``: the axis is a loop (a 360-degree panorama): the context of the first tile is the
    last latents and the other way round, so the output continues across the ends.
    """
    _check_args(axis, halo, scale)
    if not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be an int >= 1, got {tile!r}")
    n = latent.shape[axis]
    off = 0
    if circular and halo:
        if halo > n:
            raise ValueError(f"a circular decode needs halo <= the length ({n}), got {halo}")
        latent = torch.cat([latent.narrow(axis, n - halo, halo), latent, latent.narrow(axis, 0, halo)], dim=axis)
        off = halo
    total = latent.shape[axis]
    pieces = []
    for t0 in range(off, off + n, tile):
        t1 = min(t0 + tile, off + n)
        lo, hi = max(0, t0 - halo), min(total, t1 + halo)  # halo clipped at the true ends
        pieces.append(decode_span(decode, latent, axis, lo, hi, t0, t1, scale))
    return torch.cat(pieces, dim=axis)


class StreamingDecoder:
    """Decode finished latent chunks as they arrive, lagging `halo` latents behind the input.

    `push(chunk)` returns the output of every latent whose right-hand halo has arrived; `flush()`
    returns the rest. Everything returned, concatenated, equals `tiled_decode` / a whole decode
    under the same receptive-field condition. Memory: the pending latents are at most the last
    chunk plus 2 * halo.

    ``loop=True`` (a closed loop, e.g. a 360-degree panorama): the stream is a circle, its last
    latent followed by its first again. The output of the first ``halo`` latents waits for the
    end (its left context is the stream's end), and the first ``2 * halo`` latents are kept to
    give the end its right context, so the circle decodes as if it had no ends. Everything
    returned, concatenated, starts at stream position ``halo`` and goes once around the circle:
    roll it right by ``halo`` positions to start at the stream's start.

    ``positional=True``: ``decode(piece, index)`` is also given the stream position of the
    piece's first latent (e.g. a frame number), which a resumed stream restores with its state.
    """

    def __init__(self, decode: Decode, axis: int, halo: int, scale: int = 1, loop: bool = False,
                 positional: bool = False):
        _check_args(axis, halo, scale)
        if positional and loop:
            raise ValueError("a positional decoder cannot decode a loop (its positions wrap)")
        self.positional = bool(positional)
        self.decode = decode
        self.axis = axis
        self.halo = halo
        self.scale = scale
        self.received = 0  # latents pushed so far
        self.emitted = 0  # latents whose output has been returned
        self.pending_start = 0  # absolute index of pending[0]
        self.pending: Tensor | None = None  # latents [pending_start, received) along axis
        self.flushed = False
        self.loop = bool(loop)
        self.ring: Tensor | None = None  # loops: the first 2 * halo latents, the end's right context
        if self.loop:
            self.emitted = halo  # the first halo outputs wait for the end's latents

    def _emit(self, upto: int) -> Tensor | None:
        """Decode and return latents [emitted, upto), then drop what no later output needs."""
        if upto <= self.emitted:
            return None
        lo = max(self.pending_start, self.emitted - self.halo)
        hi = min(self.received, upto + self.halo)
        base = self.pending_start
        out = decode_span(self.decode, self.pending, self.axis, lo - base, hi - base, self.emitted - base,
                          upto - base, self.scale, first=base if self.positional else None)
        self.emitted = upto
        keep_from = max(self.pending_start, upto - self.halo)  # left halo of the next output
        drop = keep_from - self.pending_start
        if drop:
            self.pending = self.pending.narrow(self.axis, drop, self.pending.shape[self.axis] - drop).clone()
            self.pending_start = keep_from
        return out

    def push(self, chunk: Tensor) -> Tensor | None:
        """Take the next finished latent chunk; return newly decodable output or None."""
        if self.flushed:
            raise ValueError("push after flush: the stream has ended")
        if not isinstance(chunk, Tensor) or chunk.ndim < (-self.axis if self.axis < 0 else self.axis + 1):
            raise ValueError(f"chunk must be a tensor with axis {self.axis}, got {getattr(chunk, 'shape', type(chunk))}")
        if self.pending is None:
            self.pending = chunk.clone()
        else:
            have, got = list(self.pending.shape), list(chunk.shape)
            have[self.axis] = got[self.axis] = -1
            if have != got:
                raise ValueError(f"chunk shape {tuple(chunk.shape)} does not match earlier chunks {tuple(self.pending.shape)} outside axis {self.axis}")
            self.pending = torch.cat([self.pending, chunk], dim=self.axis)
        if self.loop and (self.ring is None or self.ring.shape[self.axis] < 2 * self.halo):
            want = 2 * self.halo - (0 if self.ring is None else self.ring.shape[self.axis])
            more = chunk.narrow(self.axis, 0, min(want, chunk.shape[self.axis])).clone()
            self.ring = more if self.ring is None else torch.cat([self.ring, more], dim=self.axis)
        self.received += chunk.shape[self.axis]
        return self._emit(self.received - self.halo)

    def flush(self) -> Tensor | None:
        """End of stream: decode what remains (the right end has no halo to wait for)."""
        if self.flushed:
            raise ValueError("flush called twice")
        self.flushed = True
        if not self.loop or self.halo == 0:
            return self._emit(self.received)
        n, h = self.received, self.halo
        if n < 2 * h:
            raise ValueError(f"a loop of {n} latents is shorter than twice the decode halo ({h}); "
                             f"allowed: halo <= {n // 2}")
        lo = max(self.pending_start, self.emitted - h)
        piece = torch.cat([self.pending.narrow(self.axis, lo - self.pending_start, n - lo), self.ring],
                          dim=self.axis)  # the circle unrolled: ... end | start ...
        out = decode_span(self.decode, piece, self.axis, 0, piece.shape[self.axis],
                          self.emitted - lo, n - lo + h, self.scale)
        self.emitted = n
        return out

    def state_dict(self) -> dict:
        """Pending latents and counters (tensors and ints) for a resume manifest."""
        d = {
            "axis": self.axis,
            "halo": self.halo,
            "scale": self.scale,
            "received": self.received,
            "emitted": self.emitted,
            "pending_start": self.pending_start,
            "flushed": int(self.flushed),
            "loop": int(self.loop),
        }
        if self.pending is not None:
            d["pending"] = self.pending.clone()
        if self.ring is not None:
            d["ring"] = self.ring.clone()
        return d

    def load_state_dict(self, d: dict) -> None:
        for key in ("axis", "halo", "scale", "loop"):
            if int(d.get(key, 0)) != int(getattr(self, key)):
                raise ValueError(f"state has {key}={int(d.get(key, 0))}, this decoder has {int(getattr(self, key))}")
        self.received, self.emitted = int(d["received"]), int(d["emitted"])
        self.pending_start, self.flushed = int(d["pending_start"]), bool(d["flushed"])
        self.pending = d["pending"].clone() if "pending" in d else None
        self.ring = d["ring"].clone() if "ring" in d else None
        held = 0 if self.pending is None else self.pending.shape[self.axis]
        if held != self.received - self.pending_start:
            raise ValueError(f"state holds {held} pending latents, expected received - pending_start = {self.received - self.pending_start}")


Step = Callable[[Tensor, Any, int], "tuple[Tensor, Any]"]


class CausalStreamingDecoder:
    """Decode finished latent chunks with a causal decoder that carries its own temporal cache.

    Causal video VAEs (Wan's ``AutoencoderKLWan``, CogVideoX's ``AutoencoderKLCogVideoX``) decode
    the latent frames in order, each causal convolution keeping the last frames of its input in a
    cache. Decoding chunk after chunk with the cache handed on is the same computation as one whole
    decode, which walks the frames the same way -- no halo.

    ``step(piece, cache, start) -> (output, cache)``: decode ``piece`` (latent positions
    ``[start, start + n)`` along ``axis``) from ``cache`` (None: a fresh cache) and return its
    output and the cache after it. The output of latent ``i`` need not have a fixed size (Wan: the
    first latent frame gives 1 frame, every other gives 4).

    ``batches``: where the whole decode starts each of its calls, when a call's output depends on
    what else is in it (CogVideoX's GroupNorms see all the frames of one call): the positions
    ``[0, b1, b2, ..., length]``. Latents then wait until their call is complete, and each call
    decodes exactly one of those pieces, so the stream reproduces the whole decode. None: any cut
    gives the same output (Wan decodes one latent frame per call whatever it is given).

    Resume without saving the cache (for Wan's VAE at 480x832 it is 3.6 GiB in float32): a causal
    stack of finite temporal kernels has a finite receptive field, so the cache is a function of
    the last ``replay`` latents only, once ``replay`` covers that field. The decoder keeps those
    latents (from a call boundary) and :meth:`state_dict` holds them with any latents still
    waiting; :meth:`load_state_dict` runs them through a fresh cache, outputs discarded, and the
    rebuilt cache equals the uninterrupted one, so a resumed stream writes the same output.
    ``replay=None``: a decoder whose cache carries the whole past (no finite field): every decoded
    latent is kept and a resume replays the stream from its start.
    """

    positional = False
    halo = 0

    def __init__(self, step: Step, axis: int, replay: int | None, batches: "list[int] | None" = None):
        _check_args(axis, 0, 1)
        if replay is not None and (not isinstance(replay, int) or replay < 0):
            raise ValueError(f"replay must be an int >= 0 or None (everything), got {replay!r}")
        if batches is not None:
            batches = [int(b) for b in batches]
            if len(batches) < 2 or batches[0] != 0 or any(b <= a for a, b in zip(batches, batches[1:])):
                raise ValueError(f"batches must rise from 0 to the length, got {batches[:8]}")
        self.step, self.axis, self.replay, self.batches = step, axis, replay, batches
        self.received = 0
        self.decoded = 0
        self.cache: Any = None
        self.pending: Tensor | None = None      # latents [decoded, received)
        self.tail: Tensor | None = None         # decoded latents [tail_start, decoded) kept for a replay
        self.tail_start = 0
        self.flushed = False

    def _cut(self, upto: int) -> int:
        """The last call boundary <= upto (upto itself without batches)."""
        if self.batches is None:
            return upto
        if upto > self.batches[-1]:
            raise ValueError(f"the stream has {upto} latents; its decode calls cover {self.batches[-1]}")
        return max(b for b in self.batches if b <= upto)

    def _bounds(self, lo: int, hi: int) -> list[int]:
        return [lo, hi] if self.batches is None else [b for b in self.batches if lo <= b <= hi]

    def _decode(self, upto: int) -> Tensor | None:
        n = upto - self.decoded
        if n <= 0:
            return None
        piece = self.pending.narrow(self.axis, 0, n)
        outs = []
        bounds = self._bounds(self.decoded, upto)
        for a, b in zip(bounds, bounds[1:]):
            out, self.cache = self.step(piece.narrow(self.axis, a - self.decoded, b - a), self.cache, a)
            outs.append(out)
        rest = self.pending.shape[self.axis] - n
        self.pending = self.pending.narrow(self.axis, n, rest).clone() if rest else None
        piece = piece.detach().cpu()
        tail = piece if self.tail is None else torch.cat([self.tail, piece], dim=self.axis)
        start = 0 if self.replay is None else max(self._cut(max(0, upto - self.replay)), self.tail_start)
        self.tail = tail.narrow(self.axis, start - self.tail_start, upto - start).clone()
        self.tail_start, self.decoded = start, upto
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=self.axis)

    def push(self, chunk: Tensor) -> Tensor | None:
        if self.flushed:
            raise ValueError("push after flush: the stream has ended")
        if not isinstance(chunk, Tensor) or chunk.ndim < (-self.axis if self.axis < 0 else self.axis + 1):
            raise ValueError(f"chunk must be a tensor with axis {self.axis}, got {getattr(chunk, 'shape', type(chunk))}")
        if chunk.shape[self.axis] == 0:
            return None
        self.pending = chunk if self.pending is None else torch.cat([self.pending, chunk], dim=self.axis)
        self.received += chunk.shape[self.axis]
        return self._decode(self._cut(self.received))

    def flush(self) -> Tensor | None:
        if self.flushed:
            raise ValueError("flush called twice")
        if self.batches is not None and self.received not in (self.decoded, self.batches[-1]):
            raise ValueError(f"the stream ended after {self.received} latents; its decode calls end at "
                             f"{self.batches[-1]}")
        out = self._decode(self.received)
        self.flushed = True
        self.cache = None
        return out

    def state_dict(self) -> dict:
        d = {"axis": self.axis, "causal": 1, "replay": -1 if self.replay is None else self.replay,
             "received": self.received,
             "decoded": self.decoded, "tail_start": self.tail_start, "flushed": int(self.flushed)}
        if self.tail is not None:
            d["tail"] = self.tail.clone()
        if self.pending is not None:
            d["pending"] = self.pending.detach().cpu().clone()
        return d

    def load_state_dict(self, d: dict) -> None:
        mine = {"axis": self.axis, "replay": -1 if self.replay is None else self.replay}
        for key, value in mine.items():
            if int(d.get(key, -2)) != value or int(d.get("causal", 0)) != 1:
                raise ValueError(f"state is not that of a causal decoder with {key}={value}")
        self.received, self.decoded = int(d["received"]), int(d["decoded"])
        self.tail_start, self.flushed = int(d["tail_start"]), bool(d["flushed"])
        self.tail = d["tail"].clone() if "tail" in d else None
        self.pending = d["pending"].clone() if "pending" in d else None
        held = 0 if self.tail is None else self.tail.shape[self.axis]
        waiting = 0 if self.pending is None else self.pending.shape[self.axis]
        if held != self.decoded - self.tail_start or waiting != self.received - self.decoded:
            raise ValueError(f"state holds {held} decoded and {waiting} waiting latents; its counters say "
                             f"{self.decoded - self.tail_start} and {self.received - self.decoded}")
        self.cache = None
        if held and not self.flushed:   # rebuild the cache from the latents it depends on
            bounds = self._bounds(self.tail_start, self.decoded)
            for a, b in zip(bounds, bounds[1:]):
                _, self.cache = self.step(self.tail.narrow(self.axis, a - self.tail_start, b - a), self.cache, a)

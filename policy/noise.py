"""Output noise for attributions: clip to ‖·‖₂ ≤ C, add N(0, (zC)²) per coordinate,
with the noise derived from a keyed hash of the query.

Why keyed and deterministic: if every repeat of a query drew fresh noise, a
caller could ask the same question K times and average the noise away
(error shrinking as 1/K). Here the noise is a pure function of
HMAC-SHA256(server secret, principal id ‖ model version ‖ canonical input ‖
method ‖ parameters): an identical repeat gets the *same* noisy answer, so
averaging repeats gains nothing (and the ledger charges nothing for it),
while distinct queries get independent-looking noise the caller cannot
predict without the secret. Every field is length-prefixed so that no two
different queries share an encoding.

Why the generator is keyed by setting its state (scheme v2): numpy's
documented seeding (``PCG64(int)``) runs a `SeedSequence` whose Python-level
setup costs ~25 µs, about a fifth of the guard's whole ≤ 0.3 ms budget
(measured in `bench/guard_overhead.py`: 0.34 → 0.27 ms p50 per request with
the state set directly). The seed's 32 bytes are already uniformly random
(an HMAC), so they are the PCG64 state and stream increment themselves; a
thread-local generator is re-keyed per answer. Scheme v1 (the SeedSequence
route) drew different noise for the same key, so the HMAC domain moved to
v2 as well: a repeat of a query answered under v1 no longer matches its
ledger digest, and is charged as the new draw it is, never served free.
"""

from __future__ import annotations

import hmac
import json
import math
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from desiderata.server.errors import InvalidArgument

__all__ = ["NoiseInfo", "QueryKey", "clip_and_noise", "clip_l2", "keyed_generator", "query_key"]

_DOMAIN = b"desiderata/noise/v2"


@dataclass(frozen=True)
class QueryKey:
    """Keyed identity of one query.

    Args:
        noise_seed: 32 bytes seeding the noise generator (never leaves the server).
        digest: 128-bit hex digest stored in the ledger to recognise repeats (a different
            HMAC domain than the seed, so storing it reveals nothing about the noise).
    """

    noise_seed: bytes
    digest: str


@dataclass(frozen=True)
class NoiseInfo:
    """What the noise step did, for the disclosure block (no feature values).

    Args:
        clip_norm: C.
        noise_std: z·C, per coordinate.
        input_norm: ‖values‖₂ before clipping.
        clipped: whether the vector was scaled down to norm C.
    """

    clip_norm: float
    noise_std: float
    input_norm: float
    clipped: bool


def _field(b: bytes) -> bytes:
    return struct.pack(">Q", len(b)) + b


_SEED_DOMAIN = _field(_DOMAIN + b"/seed")
_DIGEST_DOMAIN = _field(_DOMAIN + b"/digest")


def query_key(
    secret: bytes,
    principal_id: str,
    model_version: str,
    features: np.ndarray,
    method: str,
    params: Mapping[str, Any],
) -> QueryKey:
    """The keyed identity of a query.

    Args:
        secret: server secret, ≥ 16 bytes.
        principal_id: the caller.
        model_version: exact model version answering.
        features: encoded input, any shape, cast to float64 (−0.0 counts as 0.0).
        method: explainer name.
        params: the method's parameters (JSON-serialisable; keys sorted).
    """
    if len(secret) < 16:
        raise ValueError("the noise secret must be at least 16 bytes")
    x = np.asarray(features, dtype="<f8") + 0.0  # a new C-contiguous array
    shape = "[" + ", ".join(map(str, x.shape)) + "]"  # == json.dumps(list(x.shape))
    msg = (
        _field(principal_id.encode())
        + _field(model_version.encode())
        + _field(shape.encode())
        + _field(x.tobytes())
        + _field(method.encode())
        + _field(json.dumps(dict(params), sort_keys=True, separators=(",", ":"), default=str).encode())
    )
    seed = hmac.digest(secret, _SEED_DOMAIN + msg, "sha256")
    # HMAC-SHA256 truncated to 128 bits: ample against collisions among one caller's
    # queries, and half the key bytes in the ledger's repeat index (~5 µs less per commit).
    digest = hmac.digest(secret, _DIGEST_DOMAIN + msg, "sha256")[:16].hex()
    return QueryKey(seed, digest)


def clip_l2(values: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """Scales `values` down to ‖·‖₂ ≤ C.

    Args:
        values: attribution vector, shape ``(d,)``.
        clip_norm: C > 0.

    Returns:
        ``(clipped, norm_before)``.
    """
    if clip_norm <= 0.0:
        raise InvalidArgument.single("privacy.clip_norm", "must be > 0")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise InvalidArgument.single("attribution.values", "must be a finite vector of shape (d,)")
    # np.linalg.norm of a real vector is exactly sqrt(v @ v); a finite square sum also
    # proves every entry finite, so the elementwise check runs only when it is not.
    sq = float(v.dot(v))
    if not math.isfinite(sq) and not np.all(np.isfinite(v)):
        raise InvalidArgument.single("attribution.values", "must be a finite vector of shape (d,)")
    norm = math.sqrt(sq)
    return (v * (clip_norm / norm) if norm > clip_norm else v.copy()), norm


def clip_and_noise(
    values: np.ndarray, clip_norm: float, noise_multiplier: float, noise_seed: bytes
) -> tuple[np.ndarray, NoiseInfo]:
    """Clips to norm C and adds N(0, (zC)²) per coordinate, seeded by the query key.

    Args:
        values: attribution vector, shape ``(d,)``.
        clip_norm: C > 0.
        noise_multiplier: z ≥ 0 (0 clips only).
        noise_seed: `QueryKey.noise_seed` (32 bytes).

    Returns:
        ``(noised, info)``; noised has shape ``(d,)``, float64.
    """
    if noise_multiplier < 0.0:
        raise InvalidArgument.single("privacy.noise_multiplier", "must be ≥ 0")
    clipped, norm = clip_l2(values, clip_norm)
    std = noise_multiplier * clip_norm
    if std > 0.0:
        clipped = clipped + keyed_generator(noise_seed).normal(0.0, std, size=clipped.shape)
    return clipped, NoiseInfo(clip_norm, std, norm, norm > clip_norm)


_local = threading.local()
_MASK_128 = (1 << 128) - 1


def keyed_generator(noise_seed: bytes) -> np.random.Generator:
    """This thread's generator, re-keyed so that its stream is a function of `noise_seed` alone.

    Args:
        noise_seed: `QueryKey.noise_seed`, 32 uniformly random bytes: the first 16 are
            the PCG64 state, the last 16 the stream (the increment, made odd).

    Returns:
        a generator valid until this thread keys another one; no cached draw survives
        re-keying (``has_uint32`` is cleared), so the stream never depends on earlier use.
    """
    if len(noise_seed) != 32:
        raise ValueError("a noise seed is 32 bytes")
    rng: np.random.Generator | None = getattr(_local, "rng", None)
    if rng is None:
        rng = _local.rng = np.random.Generator(np.random.PCG64(0))
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {
            "state": int.from_bytes(noise_seed[:16], "little"),
            "inc": (int.from_bytes(noise_seed[16:], "little") << 1 | 1) & _MASK_128,
        },
        "has_uint32": 0,
        "uinteger": 0,
    }
    return rng

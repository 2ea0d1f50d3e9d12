"""Output noise: clipping bound, calibrated std, and keyed determinism."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from desiderata.policy.noise import clip_and_noise, clip_l2, keyed_generator, query_key
from desiderata.server.errors import InvalidArgument

SECRET = b"0123456789abcdef-test-secret"


def _key(principal: str = "a", version: str = "v1", x: float = 1.0, method: str = "ig", steps: int = 64) -> bytes:
    return query_key(SECRET, principal, version, np.array([x, 2.0, 3.0]), method, {"steps": steps}).noise_seed


def test_identical_queries_get_identical_noise_and_others_do_not() -> None:
    v = np.array([0.3, -0.2, 0.1])
    a, _ = clip_and_noise(v, 1.0, 2.0, _key())
    b, _ = clip_and_noise(v, 1.0, 2.0, _key())
    np.testing.assert_array_equal(a, b)
    for other in (_key(principal="b"), _key(version="v2"), _key(x=1.5), _key(method="grad"), _key(steps=32)):
        assert not np.array_equal(a, clip_and_noise(v, 1.0, 2.0, other)[0])
    neg_zero = query_key(SECRET, "a", "v1", np.array([-0.0]), "ig", {})
    assert neg_zero == query_key(SECRET, "a", "v1", np.array([0.0]), "ig", {})
    assert query_key(b"another-secret-0123", "a", "v1", np.array([0.0]), "ig", {}) != neg_zero


def test_keyed_noise_depends_on_the_key_alone_not_on_the_thread_or_earlier_draws() -> None:
    v = np.array([0.3, -0.2, 0.1, 0.5])
    first, _ = clip_and_noise(v, 1.0, 2.0, _key())
    keyed_generator(_key(x=9.0)).integers(0, 2**31, dtype=np.uint32)  # leaves half a 64-bit word cached
    again, _ = clip_and_noise(v, 1.0, 2.0, _key())
    elsewhere: list[np.ndarray] = []
    t = threading.Thread(target=lambda: elsewhere.append(clip_and_noise(v, 1.0, 2.0, _key())[0]))
    t.start()
    t.join()
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, elsewhere[0])
    with pytest.raises(ValueError):
        keyed_generator(b"too short")


def test_clip_bounds_the_norm() -> None:
    v = np.array([3.0, 4.0])
    c, norm = clip_l2(v, 1.0)
    assert norm == 5.0 and np.linalg.norm(c) == pytest.approx(1.0)
    np.testing.assert_allclose(c, [0.6, 0.8])
    small, _ = clip_l2(np.array([0.1, 0.1]), 1.0)
    np.testing.assert_array_equal(small, [0.1, 0.1])
    noiseless, info = clip_and_noise(v, 2.0, 0.0, _key())
    assert np.linalg.norm(noiseless) == pytest.approx(2.0) and info.clipped and info.noise_std == 0.0


def test_noise_has_the_calibrated_std() -> None:
    v = np.array([10.0, 0.0, 0.0, 0.0])  # clipped to norm C = 0.5
    z, c = 1.5, 0.5
    draws = np.stack([clip_and_noise(v, c, z, _key(x=float(i)))[0] for i in range(1500)])
    resid = draws - np.array([0.5, 0.0, 0.0, 0.0])
    assert resid.std() == pytest.approx(z * c, rel=0.05)
    assert abs(resid.mean()) < 4 * z * c / np.sqrt(resid.size)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        query_key(b"short", "a", "v1", np.zeros(2), "ig", {})
    with pytest.raises(InvalidArgument):
        clip_l2(np.array([np.nan, 1.0]), 1.0)
    with pytest.raises(InvalidArgument):
        clip_l2(np.zeros(2), 0.0)

"""Random crop + flip on device: against a numpy pad/crop/flip, deterministic per key, crops of the input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcalc.data.augment import crop_flip, random_crop_flip, sample_crop_flip

PAD = 2
N, H, W, C = 6, 5, 7, 3  # h != w: a swapped axis would show


def _numpy_crop_flip(images, offsets, flips, pad):
    """Reference written with numpy only: np.pad with zeros, slice, mirror the width axis."""
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = images.shape[1:3]
    out = []
    for img, (dy, dx), f in zip(padded, offsets, flips, strict=True):
        crop = img[dy:dy + h, dx:dx + w]
        out.append(crop[:, ::-1] if f else crop)
    return np.stack(out)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(1, 256, (N, H, W, C), dtype=np.uint8)  # no zeros: padding shows


@pytest.fixture(scope="module")
def jitted():
    """``crop_flip``, ``(random_crop_flip, sample_crop_flip)`` for N images at PAD, and ``sample_crop_flip``, jitted."""
    return (jax.jit(crop_flip, static_argnames="pad"),
            jax.jit(lambda k, x: (random_crop_flip(k, x, pad=PAD), sample_crop_flip(k, N, pad=PAD))),
            jax.jit(sample_crop_flip, static_argnums=1, static_argnames="pad"))


def test_crop_flip_matches_numpy(images, jitted):
    offsets = np.array([[0, 0], [4, 4], [0, 4], [4, 0], [2, 1], [3, 2]], np.int32)  # corners, middle
    flips = np.array([False, True, True, False, True, False])
    want = _numpy_crop_flip(images, offsets, flips, PAD)
    for fn in (crop_flip, jitted[0]):
        got = fn(jnp.asarray(images), jnp.asarray(offsets), jnp.asarray(flips), pad=PAD)
        assert got.dtype == jnp.uint8 and got.shape == (N, H, W, C)
        np.testing.assert_array_equal(np.asarray(got), want)
    # float images too, and pad 0 leaves only the flip
    f = images.astype(np.float32) / 255
    got = jitted[0](jnp.asarray(f), jnp.asarray(offsets), jnp.asarray(flips), pad=PAD)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), _numpy_crop_flip(f, offsets, flips, PAD))
    zero = crop_flip(jnp.asarray(images), jnp.zeros((N, 2), jnp.int32), jnp.asarray(flips), pad=0)
    np.testing.assert_array_equal(np.asarray(zero), np.where(flips[:, None, None, None], images[:, :, ::-1], images))


def test_random_crop_flip_is_the_sampled_crop_and_deterministic(images, jitted):
    both = jitted[1]
    key = jax.random.key(7)
    out, (offsets, flips) = both(key, jnp.asarray(images))
    assert out.dtype == jnp.uint8 and out.shape == images.shape
    assert offsets.shape == (N, 2) and offsets.dtype == jnp.int32 and flips.shape == (N,) and flips.dtype == bool
    np.testing.assert_array_equal(np.asarray(out), _numpy_crop_flip(images, np.asarray(offsets), np.asarray(flips),
                                                                    PAD))
    again, _ = both(key, jnp.asarray(images))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(out))  # same key, same batch, bit for bit
    other, _ = both(jax.random.key(8), jnp.asarray(images))
    assert not np.array_equal(np.asarray(other), np.asarray(out))  # another key, another batch


def test_each_output_is_a_crop_or_mirrored_crop_of_its_input(images, jitted):
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    for seed in range(3):
        out = np.asarray(jitted[1](jax.random.key(seed), jnp.asarray(images))[0])
        for img, p in zip(out, padded, strict=True):
            windows = [p[dy:dy + H, dx:dx + W] for dy in range(2 * PAD + 1) for dx in range(2 * PAD + 1)]
            assert any(np.array_equal(img, w) or np.array_equal(img, w[:, ::-1]) for w in windows)


def test_offsets_and_flips_cover_their_range(jitted):
    offsets, flips = jitted[2](jax.random.key(0), 4000, pad=4)
    offsets, flips = np.asarray(offsets), np.asarray(flips)
    assert offsets.min() == 0 and offsets.max() == 8
    assert len({(int(a), int(b)) for a, b in offsets}) == 81  # all 9 x 9 crops occur (each ~49 times)
    assert abs(flips.mean() - 0.5) < 0.04  # binomial std 0.008


def test_bad_arguments():
    x = jnp.zeros((2, 4, 4, 1), jnp.uint8)
    with pytest.raises(ValueError, match=r"images must be a batch \(n, h, w, c\), got shape \(4, 4, 1\)"):
        random_crop_flip(jax.random.key(0), x[0])
    with pytest.raises(ValueError, match="pad must be a non-negative int, got -1"):
        random_crop_flip(jax.random.key(0), x, pad=-1)
    with pytest.raises(ValueError, match=r"offsets must be \(n, 2\) and flips \(n,\) for 2 images"):
        crop_flip(x, jnp.zeros((3, 2), jnp.int32), jnp.zeros((2,), bool))

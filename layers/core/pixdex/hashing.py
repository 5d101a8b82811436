"""Content hashes: SHA-256 for exact duplicates, 64-bit perceptual hashes for near-duplicates.

Perceptual hashes are 16 lowercase hex characters (64 bits, most significant bit first, row-major), so
they sort, compare and index as plain strings and convert losslessly to a 64-bit binary vector for
Hamming-space search.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Final

import numpy as np
from PIL import Image

HASH_BITS: Final = 64
_HEX_LEN: Final = HASH_BITS // 4
_PHASH_SIZE: Final = 32  # the image is shrunk to 32x32 before the DCT
_PHASH_LOW: Final = 8  # and the 8x8 lowest frequencies become the 64 bits


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _gray(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Shrink and convert to luma. Transparent areas are composited on white, as a viewer shows them."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    elif image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    # Shrink in colour first (reducing_gap: a cheap box reduce before the filter) then take luma; both
    # orders give the same hash, this one touches fewer pixels.
    small = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    gray: np.ndarray = np.asarray(small.convert("L"), dtype=np.float64)
    return gray


@lru_cache(maxsize=1)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: dct(x) = M @ x for a column vector x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m: np.ndarray = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0, :] = np.sqrt(1.0 / n)
    m.setflags(write=False)
    return m


def _bits_to_hex(bits: np.ndarray) -> str:
    value = 0
    for bit in bits.ravel():
        value = (value << 1) | int(bool(bit))
    return f"{value:0{_HEX_LEN}x}"


def phash(image: Image.Image) -> str:
    """DCT perceptual hash (as in pHash / imagehash.phash): low frequencies above their median.

    Robust to resizing, recompression, small colour and brightness changes; not to crops or rotation.
    """
    pixels = _gray(image, (_PHASH_SIZE, _PHASH_SIZE))
    m = _dct_matrix(_PHASH_SIZE)
    coeffs = m @ pixels @ m.T
    low = coeffs[:_PHASH_LOW, :_PHASH_LOW]
    return _bits_to_hex(low > np.median(low))


def dhash(image: Image.Image) -> str:
    """Difference hash: is each pixel brighter than its right neighbour, on a 9x8 thumbnail."""
    pixels = _gray(image, (9, 8))
    return _bits_to_hex(pixels[:, 1:] > pixels[:, :-1])


def _check_hex(value: str) -> int:
    if len(value) != _HEX_LEN:
        raise ValueError(f"expected {_HEX_LEN} hex characters, got {value!r}")
    try:
        return int(value, 16)
    except ValueError:
        raise ValueError(f"not a hex hash: {value!r}") from None


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two 64-bit hex hashes (0 = same, 64 = opposite)."""
    return (_check_hex(a) ^ _check_hex(b)).bit_count()


def hash_to_bits(value: str) -> list[int]:
    """The 64 bits of a hex hash, most significant first (for binary/Hamming vector fields)."""
    n = _check_hex(value)
    return [(n >> (HASH_BITS - 1 - i)) & 1 for i in range(HASH_BITS)]


def hash_to_bytes(value: str) -> bytes:
    """The 8 bytes of a hex hash, big-endian (OpenSearch ``binary`` knn_vector packs bits this way)."""
    return _check_hex(value).to_bytes(8, "big")

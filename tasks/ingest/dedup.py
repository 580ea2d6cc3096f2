"""Near-duplicate detection for instructions, cheap enough for 100k+ texts on one core.

Two instructions are near duplicates when either

1. their **near key** is equal: NFKC, casefolded, every run of non-word characters (punctuation,
   symbols, whitespace) collapsed to one space, trimmed. Digits are kept: "What is 2+2?" and "What
   is 3+3?" are different questions. This catches case, punctuation and spacing variants exactly;
2. or the **Jaccard similarity of their character 5-gram sets** (over the near key) is at least
   :data:`THRESHOLD` (0.9). This catches a changed word or a typo in a long instruction.

Rule 2 runs as MinHash LSH. The signature is one-permutation MinHash (each 5-gram hashed once,
the hash's top bits pick one of 64 bins, the bin keeps its minimum) with rotation densification
for bins left empty by short texts, so signing costs one hash per 5-gram rather than 64. The 64
values form 8 bands of 8; texts sharing a band are candidates (at Jaccard 0.9 about 99% of true
pairs collide in some band, at 0.5 about 3% of unrelated pairs do). Each candidate is first
screened by the share of equal signature values and then **verified with the exact Jaccard** of the
two 5-gram sets, so every reported pair really is >= 0.9; the LSH only decides which pairs are
looked at.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

SHINGLE = 5
BINS = 64
BANDS = 8
ROWS = BINS // BANDS
THRESHOLD = 0.9
SCREEN = 0.7
"""Signature agreement below which a candidate is not verified (well below THRESHOLD, for recall)."""

_NON_WORD = re.compile(r"[\W_]+")
_U64 = np.uint64
_VALUE_BITS = 58
_VALUE_MASK = _U64((1 << _VALUE_BITS) - 1)
_EMPTY = np.iinfo(np.uint64).max
_CHUNK_CHARS = 4_000_000
PART_TEXTS = 20_000
"""Texts per task when the signatures are computed on a Dask cluster (``execution.dask_address``)."""


def near_key(text: str) -> str:
    """The text with case, punctuation, symbols and spacing removed as differences."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(key: str) -> set[str]:
    """The character 5-grams of a near key (the whole key when it is shorter)."""
    if len(key) <= SHINGLE:
        return {key}
    return {key[i : i + SHINGLE] for i in range(len(key) - SHINGLE + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads a polynomial hash over all 64 bits."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def _sign_chunk(keys: Sequence[str]) -> np.ndarray:
    """Signatures (len(keys), BINS) of non-empty keys, all 5-grams hashed in one vectorised pass."""
    padded = [k.ljust(SHINGLE) for k in keys]
    lengths = np.fromiter((len(k) for k in padded), dtype=np.int64, count=len(padded))
    codes = np.frombuffer("".join(padded).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    counts = lengths - SHINGLE + 1
    # polynomial hash of every window of SHINGLE code points (windows across texts are discarded)
    span = len(codes) - SHINGLE + 1
    rolling = np.zeros(span, dtype=np.uint64)
    for offset in range(SHINGLE):
        rolling = rolling * _U64(1_000_003) + codes[offset : offset + span]
    text_of = np.repeat(np.arange(len(keys), dtype=np.int64), counts)
    first = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    positions = np.arange(len(text_of), dtype=np.int64) + first
    hashes = _mix(rolling[positions])
    bins = (hashes >> _U64(_VALUE_BITS)).astype(np.int64)
    signature = np.full(len(keys) * BINS, _EMPTY, dtype=np.uint64)
    np.minimum.at(signature, text_of * BINS + bins, hashes & _VALUE_MASK)
    return _densify(signature.reshape(len(keys), BINS))


def _densify(signature: np.ndarray) -> np.ndarray:
    """Fill empty bins from the next non-empty bin to the right (circularly), tagged by distance.

    Rotation densification (Shrivastava & Li, 2014): it keeps the collision probability of a bin
    close to the Jaccard similarity for texts with fewer 5-grams than bins.
    """
    empty = signature == _EMPTY
    if not empty.any():
        return signature
    n = signature.shape[0]
    doubled = np.concatenate([~empty, ~empty], axis=1)
    index = np.where(doubled, np.arange(2 * BINS), 2 * BINS)
    nearest = np.minimum.accumulate(index[:, ::-1], axis=1)[:, ::-1][:, :BINS]
    distance = (nearest - np.arange(BINS)).astype(np.uint64)
    source = nearest % BINS
    borrowed = signature[np.arange(n)[:, None], source]
    return np.where(empty, borrowed + distance * _U64(1 << _VALUE_BITS), signature)


def signatures(keys: Sequence[str]) -> np.ndarray:
    """One-permutation MinHash signatures, shape (len(keys), BINS), uint64; empty keys get zeros."""
    out = np.zeros((len(keys), BINS), dtype=np.uint64)
    todo = [i for i, key in enumerate(keys) if key]
    start = 0
    while start < len(todo):
        end, chars = start, 0
        while end < len(todo) and (chars < _CHUNK_CHARS or end == start):
            chars += len(keys[todo[end]]) + SHINGLE
            end += 1
        rows = todo[start:end]
        out[rows] = _sign_chunk([keys[i] for i in rows])
        start = end
    return out


def band_hashes(signature: np.ndarray) -> np.ndarray:
    """One 64-bit hash per band of ROWS signature values, shape (n, BANDS)."""
    bands = signature.reshape(len(signature), BANDS, ROWS)
    acc = np.zeros((len(signature), BANDS), dtype=np.uint64)
    for row in range(ROWS):
        acc = _mix(acc ^ (bands[:, :, row] + _U64(row)))
    return acc


def sign(texts: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Near keys, signatures and band hashes of ``texts``: the part of near-dedup that parallelises."""
    keys = [near_key(t) for t in texts]
    signature = signatures(keys)
    return keys, signature, band_hashes(signature)


def _sign_on_cluster(texts: Sequence[str], address: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``sign`` in parts of :data:`PART_TEXTS` on the Dask cluster at ``address``, put back in order."""
    from ultrafeedback.infra.dask_cluster import dask_client

    parts = [list(texts[i : i + PART_TEXTS]) for i in range(0, len(texts), PART_TEXTS)]
    with dask_client(address) as client:
        signed = client.gather(client.map(sign, parts, pure=False))
    keys = [key for part_keys, _, _ in signed for key in part_keys]
    return keys, np.concatenate([s for _, s, _ in signed]), np.concatenate([b for _, _, b in signed])


class NearIndex:
    """The kept instructions, searchable for near duplicates of a new one.

    Built over every candidate of a run at once (keys, signatures and band collisions computed in
    vectorised passes); ``add(i)`` marks candidate ``i`` as kept, ``find(i)`` returns the kept
    candidate that ``i`` nearly duplicates, if any. Callers decide the order, which decides who is
    kept. Only band buckets with two or more members are ever stored, so the common case (an
    instruction like no other) costs one dict lookup. With ``dask_address`` the keys, signatures and
    band hashes (``sign``) are computed in parts on that Dask cluster; the search stays here, in
    order, since the order decides who is kept.
    """

    def __init__(self, texts: Sequence[str], dask_address: str | None = None):
        if dask_address and texts:
            self.keys, self.signature, bands = _sign_on_cluster(texts, dask_address)
        else:
            self.keys, self.signature, bands = sign(texts)
        self._groups = _shared_buckets(bands, [bool(k) for k in self.keys])
        self._by_key: dict[str, int] = {}
        self._members: dict[int, list[int]] = {}
        self._shingles: dict[int, set[str]] = {}

    def _shingle_set(self, i: int) -> set[str]:
        cached = self._shingles.get(i)
        if cached is None:
            if len(self._shingles) > 4096:
                self._shingles.clear()
            cached = self._shingles[i] = shingles(self.keys[i])
        return cached

    def find(self, i: int) -> tuple[int, float] | None:
        """``(kept index, similarity)`` of a kept near duplicate of candidate ``i``, else None.

        Similarity 1.0 means the near keys are equal (rule 1); otherwise it is the exact 5-gram
        Jaccard (rule 2). Among several, the most similar wins, then the lowest index.
        """
        key = self.keys[i]
        if not key:
            return None
        same = self._by_key.get(key)
        if same is not None:
            return same, 1.0
        groups = self._groups.get(i)
        if not groups:
            return None
        found: set[int] = set()
        for group in groups:
            found.update(self._members.get(group, ()))
        if not found:
            return None
        candidates = np.fromiter(found, dtype=np.int64, count=len(found))
        agreement = (self.signature[candidates] == self.signature[i]).mean(axis=1)
        mine = self._shingle_set(i)
        best: tuple[int, float] | None = None
        for j in sorted(candidates[agreement >= SCREEN].tolist()):
            score = jaccard(mine, self._shingle_set(j))
            if score >= THRESHOLD and (best is None or score > best[1]):
                best = (j, score)
        return best

    def add(self, i: int) -> None:
        """Mark candidate ``i`` as kept, so later candidates are compared with it."""
        key = self.keys[i]
        if not key:
            return
        self._by_key.setdefault(key, i)
        for group in self._groups.get(i, ()):
            self._members.setdefault(group, []).append(i)


def _shared_buckets(bands: np.ndarray, usable: list[bool]) -> dict[int, list[int]]:
    """For each candidate with a band value shared by another candidate: its shared bucket ids.

    A bucket id numbers one (band, band value) pair; buckets with a single member are left out,
    since nothing can collide in them.
    """
    result: dict[int, list[int]] = {}
    mask = np.asarray(usable, dtype=bool)
    offset = 0
    for band in range(bands.shape[1]):
        _, inverse, counts = np.unique(bands[:, band], return_inverse=True, return_counts=True)
        shared = np.nonzero(mask & (counts[inverse] > 1))[0]
        for row, bucket in zip(shared.tolist(), (inverse[shared] + offset).tolist(), strict=True):
            result.setdefault(row, []).append(bucket)
        offset += len(counts)
    return result

"""The pure-Python proof checks against the RFC 9162 definition of the tree
hash, for every size and index up to 40, and refusals of altered proofs."""

import random

import pytest

from yilian import merkle


def _path(entries, m):
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1, by its definition."""
    n = len(entries)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return _path(entries[:k], m) + [merkle.root(entries[k:])]
    return _path(entries[k:], m - k) + [merkle.root(entries[:k])]


def _subproof(m, entries, b):
    """SUBPROOF(m, D[n], b) of RFC 9162 §2.1.4.1."""
    n = len(entries)
    if m == n:
        return [] if b else [merkle.root(entries)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return _subproof(m, entries[:k], b) + [merkle.root(entries[k:])]
    return _subproof(m - k, entries[k:], False) + [merkle.root(entries[:k])]


ENTRIES = [f"entry {i}".encode() for i in range(40)]


def test_inclusion_agrees_with_the_definition():
    for n in range(1, 41):
        tree = ENTRIES[:n]
        for m in range(n):
            merkle.verify_inclusion(m, n, merkle.leaf_hash(tree[m]), _path(tree, m), merkle.root(tree))


def test_consistency_agrees_with_the_definition():
    for n in range(1, 41):
        for m in range(1, n + 1):
            proof = _subproof(m, ENTRIES[:n], True) if m < n else []
            merkle.verify_consistency(m, n, merkle.root(ENTRIES[:m]), merkle.root(ENTRIES[:n]), proof)


def test_altered_proofs_are_refused():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(2, 40)
        m = rng.randrange(n)
        tree = ENTRIES[:n]
        path = _path(tree, m)
        if path:
            i = rng.randrange(len(path))
            bad = path[:i] + [bytes([path[i][0] ^ 1]) + path[i][1:]] + path[i + 1 :]
            with pytest.raises(merkle.ProofError):
                merkle.verify_inclusion(m, n, merkle.leaf_hash(tree[m]), bad, merkle.root(tree))
        with pytest.raises(merkle.ProofError):
            merkle.verify_inclusion(m, n, merkle.leaf_hash(b"not there"), path, merkle.root(tree))
        old = rng.randint(1, n - 1)
        proof = _subproof(old, tree, True)
        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(old, n, merkle.root(ENTRIES[: old + 1]), merkle.root(tree), proof)
        with pytest.raises(merkle.ProofError):
            merkle.verify_consistency(old, n, merkle.root(tree[:old]), merkle.root(tree), proof[:-1])

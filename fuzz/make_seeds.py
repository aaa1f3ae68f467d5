#!/usr/bin/env python3
"""Regenerates the small seed corpora under fuzz/corpus/ (deterministic).

Ops are 10 bytes: kind, cpu, a (u32 le), b (u32 le); byte 0 of an input picks the mode
and index (bit 1: CAS for single-mode targets; bit 0: mm_cid when available).
"""
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def op(kind, cpu=0, a=0, b=0):
    return struct.pack("<BBII", kind, cpu, a & 0xFFFFFFFF, b & 0xFFFFFFFF)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def alloc_seeds(target):
    # kinds: 0 malloc 1 calloc 2 realloc 3 aligned 4 free 5 usable 6 drain 7 drain_all 8 cpu
    for head in range(4):
        rnd = random.Random(head)
        ops = [op(0, 0, rnd.randrange(1 << 30)) for _ in range(20)]
        ops += [op(8, 1), op(4, 0, 3), op(2, 0, 1, 5000), op(3, 0, 100, 4), op(1, 0, 64)]
        ops += [op(4, 0, i) for i in range(10)] + [op(6, 0, 1), op(7)]
        write(target, "mixed_%d" % head, bytes([head]) + b"".join(ops))
    write(target, "churn", bytes([0]) + b"".join(op(0 if i % 2 == 0 else 4, 0, i * 7919) for i in range(120)))


def ring_seeds(target):
    # kinds: 0 offer 1 poll 2 offer_batch 3 poll_batch 4 cpu
    for head in range(4):
        ops = [op(2, 0, 9), op(4, 1), op(2, 0, 5), op(1), op(3, 0, 11), op(0), op(4, 0), op(2, 0, 8), op(3, 0, 7)]
        write(target, "fill_%d" % head, bytes([head]) + b"".join(ops))


def prim_seeds(target):
    # kinds: 0 addv 1 cmpeqv 2 trystore 3 memcpy 4 push 5 pop 6 cpu
    for head in range(4):
        ops = [op(0, 0, 5), op(1, 0, 7, 5), op(2, 0, 9, 1), op(3, 0, 17, 1), op(4, 0, 1), op(4, 0, 2),
               op(6, 1), op(5), op(6, 0), op(5), op(5), op(0, 0, 0xFFFFFFFF)]
        write(target, "all_%d" % head, bytes([head]) + b"".join(ops))


def size_seeds(target):
    for i, s in enumerate([0, 1, 16, 17, 128, 129, 1024, 1025, 4096, 65537, 262144]):
        write(target, "size_%d" % i, struct.pack("<Q", s))


alloc_seeds("allocator_ops_fuzzer")
alloc_seeds("allocator_diff_fuzzer")
ring_seeds("ring_ops_fuzzer")
ring_seeds("ring_diff_fuzzer")
prim_seeds("rseq_primitives_fuzzer")
size_seeds("size_class_fuzzer")

#!/usr/bin/env python3
"""Seeded random updates of one 64 MiB file: writes of 1 byte to 64 KiB at random offsets,
writes through a shared mapping, punched holes, truncates and fsyncs.

usage: random-updates.py DIR [OPS] [SEED] [--history N]
  --history N  first creates and deletes N small files in DIR/history (not timed)
Prints the seconds the updates took and the SHA-256 of the final content: the same seed
gives the same content on any filesystem, so two runs compare content as well as speed.
"""
import ctypes
import hashlib
import mmap
import os
import random
import sys
import time

SIZE = 64 << 20
PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def punch(fd, off, length):
    if libc.fallocate(fd, PUNCH, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def history(d, n):
    h = os.path.join(d, "history")
    os.makedirs(h, exist_ok=True)
    for i in range(n):
        with open(os.path.join(h, f"f{i}"), "wb") as f:
            f.write(b"%d\n" % i * 20)
    for i in range(n):
        os.unlink(os.path.join(h, f"f{i}"))
    os.rmdir(h)


def main():
    args = [a for a in sys.argv[1:]]
    n_history = 0
    if "--history" in args:
        i = args.index("--history")
        n_history = int(args[i + 1])
        del args[i : i + 2]
    d = args[0]
    ops = int(args[1]) if len(args) > 1 else 20000
    seed = int(args[2]) if len(args) > 2 else 1
    if n_history:
        history(d, n_history)
    rng = random.Random(seed)
    path = os.path.join(d, "updated.dat")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, SIZE)
    t = time.perf_counter()
    for _ in range(ops):
        size = os.fstat(fd).st_size
        r = rng.random()
        if r < 0.6:
            n = rng.randint(1, 65536)
            off = rng.randrange(0, SIZE - n)
            os.pwrite(fd, rng.randbytes(n), off)
        elif r < 0.8:
            if size < mmap.PAGESIZE:
                os.ftruncate(fd, SIZE)
                size = SIZE
            pages = max(1, size // mmap.PAGESIZE - 1)
            start = rng.randrange(0, pages) * mmap.PAGESIZE
            length = min(size - start, 256 << 10)
            with mmap.mmap(fd, length, offset=start) as m:
                for _ in range(8):
                    at = rng.randrange(0, length - 16)
                    m[at : at + 16] = rng.randbytes(16)
                m.flush()
        elif r < 0.9:
            n = rng.randint(4096, 1 << 20)
            punch(fd, rng.randrange(0, SIZE - n), n)
        elif r < 0.95:
            os.ftruncate(fd, rng.randrange(SIZE // 2, SIZE + 1))
        else:
            os.fsync(fd)
    os.fsync(fd)
    took = time.perf_counter() - t
    os.close(fd)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    os.unlink(path)
    print(f"{took:.2f} {h.hexdigest()}")


main()

#!/usr/bin/env python3
"""Requests and answers for `make invoke` and `make transform`, made from Fashion-MNIST's IDX
files (gzipped or not), in the formats `train serve` reads and writes.

    hosting_data.py csv IMAGES [--first I] [--count N]   one image per line: 784 values 0-255
    hosting_data.py png IMAGES [--first I]               that image as an 8-bit grayscale PNG
    hosting_data.py label LABELS [--first I]             its label: "9 Ankle boot"
    hosting_data.py score LABELS [--first I] < ANSWERS   accuracy of `class,p0,...,p9` lines

score reads one answer line per image, in order from image I (what a transform job with
AssembleWith Line writes for a CSV split by Line) and fails when an answer is missing or not a
class. Python standard library only.
"""

import argparse
import gzip
import struct
import sys
import zlib

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]


class DataError(Exception):
    pass


def read_idx(path):
    """(dims, bytes) of an IDX file of unsigned bytes."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes")
    ndims = data[3]
    dims = struct.unpack(">" + "I" * ndims, data[4:4 + 4 * ndims])
    body = data[4 + 4 * ndims:]
    size = 1
    for d in dims:
        size *= d
    if len(body) != size:
        raise DataError(f"{path}: {len(body)} bytes of data for dimensions {dims}")
    return dims, body


def images(path, first, count):
    dims, body = read_idx(path)
    if len(dims) != 3:
        raise DataError(f"{path}: not an image file (dimensions {dims})")
    n, rows, cols = dims
    count = n - first if count is None else count
    if first < 0 or count < 1 or first + count > n:
        raise DataError(f"{path}: images {first} to {first + count - 1} asked for, it has {n}")
    size = rows * cols
    return rows, cols, [body[(first + i) * size:(first + i + 1) * size] for i in range(count)]


def labels(path):
    dims, body = read_idx(path)
    if len(dims) != 1:
        raise DataError(f"{path}: not a label file (dimensions {dims})")
    return body


def png(rows, cols, pixels):
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    raw = b"".join(b"\0" + pixels[r * cols:(r + 1) * cols] for r in range(rows))
    header = struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def score(label_bytes, first, lines):
    lines = [line for line in lines if line.strip()]
    if first + len(lines) > len(label_bytes):
        raise DataError(f"{len(lines)} answers from image {first}, but only "
                        f"{len(label_bytes)} labels")
    right = 0
    for i, line in enumerate(lines):
        field = line.split(",", 1)[0].strip()
        if not field.isdigit() or int(field) >= len(CLASS_NAMES):
            raise DataError(f"answer {i + 1}: {line[:80]!r} does not start with a class")
        right += int(field) == label_bytes[first + i]
    if not lines:
        raise DataError("no answers")
    return right, len(lines)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["csv", "png", "label", "score"])
    ap.add_argument("file")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int)
    a = ap.parse_args(argv[1:])
    try:
        if a.what == "csv":
            _, _, imgs = images(a.file, a.first, a.count)
            out = sys.stdout
            for img in imgs:
                out.write(",".join(map(str, img)) + "\n")
        elif a.what == "png":
            rows, cols, (img,) = images(a.file, a.first, 1)
            sys.stdout.buffer.write(png(rows, cols, img))
        elif a.what == "label":
            label = labels(a.file)[a.first]
            print(f"{label} {CLASS_NAMES[label]}")
        else:
            right, n = score(labels(a.file), a.first, sys.stdin.read().splitlines())
            print(f"accuracy: {right / n:.4f} ({right} of {n} images right)")
    except (DataError, OSError, IndexError) as e:
        print(f"hosting_data.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""What every fuzz target shares: the settings, the seed corpus, byte mutations.

The fuzzers are hypothesis property tests (docs/reliability.md, "Fuzzing").
In the suite they are bounded and reproducible: a fixed number of examples
per target, derandomized (the same inputs on every run, no example
database), no deadline (a loaded machine must not turn slowness into a
failure).  ``TRICOPY_FUZZ_SCALE=N`` multiplies every target's examples by N
and draws new random inputs on each run: the longer command of
docs/reliability.md (``make fuzz``).

Each target has a folder of seed inputs under ``corpus/<target>/``: every
file is run through the target's property as it is (``test_*_corpus``) and
is the starting point of the mutation strategy, so the fuzzer begins from
well-formed inputs and gets past the checksums and the handshakes.  A crash
the fuzzer finds becomes a file there named ``regress-*`` next to its fix.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from hypothesis import HealthCheck, settings, strategies as st

from tricopy.host.wire import protocol

CORPUS = Path(__file__).parent / "corpus"
SCALE = max(1, int(os.environ.get("TRICOPY_FUZZ_SCALE", "1") or 1))


def fuzz_settings(examples: int) -> settings:
    """``examples`` inputs in the suite (``SCALE`` times more in a long run)."""
    return settings(
        max_examples=examples * SCALE,
        derandomize=SCALE == 1,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def corpus(target: str) -> list[tuple[str, bytes]]:
    """The seed inputs of ``target`` as (file name, bytes), sorted by name."""
    folder = CORPUS / target
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not files:
        raise AssertionError(f"no seed inputs in {folder}")
    return [(p.name, p.read_bytes()) for p in files]


def corpus_ids(target: str) -> list:
    """``pytest.param`` per seed file, named by the file (for parametrize)."""
    import pytest
    return [pytest.param(data, id=name) for name, data in corpus(target)]


@st.composite
def mutated(draw, seeds: list[bytes], *, max_mutations: int = 6) -> bytes:
    """A seed with a few byte-level mutations (flip, overwrite, insert,
    delete, duplicate, truncate, splice with another seed)."""
    buf = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, max_mutations))):
        op = draw(st.sampled_from(("flip", "set", "insert", "delete", "dup", "cut", "splice",
                                   "int")))
        n = len(buf)
        at = draw(st.integers(0, n))
        if op == "flip" and n:
            buf[min(at, n - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            value = st.sampled_from((0, 1, 0x7F, 0x80, 0xFF)) | st.integers(0, 255)
            buf[min(at, n - 1)] = draw(value)
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and n:
            del buf[at:at + draw(st.integers(1, 16))]
        elif op == "dup" and n:
            end = min(n, at + draw(st.integers(1, 64)))
            buf[at:at] = buf[at:end]
        elif op == "cut":
            del buf[at:]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            buf[at:] = other[draw(st.integers(0, len(other))):]
        elif op == "int" and n >= 4:
            # An interesting 32-bit value at any offset: lengths, counts, sizes.
            pos = min(at, n - 4)
            value = draw(st.sampled_from((0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 64, 4096,
                                          protocol.MAX_BODY, protocol.MAX_BODY + 1)))
            buf[pos:pos + 4] = struct.pack("<I", value)
    return bytes(buf)


def fix_crcs(raw: bytes) -> bytes:
    """``raw`` read as back-to-back frames, with every HCRC and BCRC made right.

    Mutations of a frame stream are nearly always caught by a checksum; with
    the checksums repaired they reach the header fields and the bodies,
    which is where a parser can go wrong."""
    buf = bytearray(raw)
    at = 0
    while at + protocol.HEADER_SIZE <= len(buf):
        struct.pack_into("<I", buf, at + 12, protocol.crc32c(buf[at:at + 12]))
        (length,) = struct.unpack_from("<I", buf, at + 8)
        if length > protocol.MAX_BODY:
            break
        end = at + protocol.HEADER_SIZE + length
        if not length:
            at = end
            continue
        if end + 4 > len(buf):
            break
        struct.pack_into("<I", buf, end, protocol.crc32c(buf[at + protocol.HEADER_SIZE:end]))
        at = end + 4
    return bytes(buf)


def frame_stream(seeds: list[bytes]):
    """Mutated frame streams, their checksums repaired most of the time."""
    return st.tuples(mutated(seeds), st.booleans(), st.booleans()).map(
        lambda t: fix_crcs(t[0]) if t[1] or t[2] else t[0])


def chunkings(data: bytes):
    """``data`` cut into pieces at drawn offsets (a stream arrives in any chunking)."""
    return st.lists(st.integers(0, max(0, len(data))), max_size=8).map(
        lambda cuts: _cut(data, sorted(set(cuts))))


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    out, last = [], 0
    for c in cuts + [len(data)]:
        out.append(data[last:c])
        last = c
    return out


def raw_frame(ftype: int, body: bytes, flags: int = 0, version: int = protocol.VERSION) -> bytes:
    """A frame with any TYPE, FLAGS and VERSION (``serialize_frame`` takes only
    valid ones), LENGTH and both checksums right."""
    head = struct.pack("<IBBHI", protocol.MAGIC, version, ftype, flags, len(body))
    out = head + struct.pack("<I", protocol.crc32c(head))
    return out + body + struct.pack("<I", protocol.crc32c(body)) if body else out


def seed_frames(seeds: list[bytes]) -> list[protocol.Frame]:
    return [f for raw in seeds for f in protocol.FrameParser().feed(raw)]


def structured_frames(seeds: list[bytes], *, max_frames: int = 4):
    """Streams of frames whose header is right (LENGTH, HCRC, BCRC) and whose
    TYPE, FLAGS, VERSION and body are drawn: a seed's body mutated (resized
    too), under its own type or another, now and then an undefined one."""
    frames = seed_frames(seeds)
    bodies = [f.body for f in frames] or [b""]
    types = sorted({int(t) for t in protocol.FrameType})

    @st.composite
    def one(draw) -> bytes:
        seed = draw(st.sampled_from(frames))
        ftype = draw(st.sampled_from([int(seed.type)] * 3 + types) | st.integers(0, 255))
        body = draw(mutated([seed.body]) | mutated(bodies) | st.binary(max_size=96))
        flags = draw(st.sampled_from((seed.flags, 0, 1, 2, 0x8000)))
        version = draw(st.sampled_from((protocol.VERSION,) * 6 + (0, 2, 255)))
        return raw_frame(ftype, body, flags, version)

    return st.lists(one(), min_size=1, max_size=max_frames).map(b"".join)

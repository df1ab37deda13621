"""The one image check: is this file (or these bytes) an image DALI can decode, and if not, why.

A leaf module (stdlib, numpy and PIL only): the indexes use it to name the sample that broke a
pipeline, check-data to check every file. Which files are images follows torchvision's
``ImageFolder`` (:data:`IMG_EXTENSIONS`, any case). A check answers None (fine) or
``(reason, detail)``; reasons are keys of :data:`BAD_REASONS` (unusable) or
:data:`WARNING_REASONS` (usable, worth knowing).
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from typing import (
    IO,
    Any,
    Callable,
    Optional,
    Tuple,
    Union,
)

import numpy as np

__all__ = [
    "BAD_REASONS",
    "IMG_EXTENSIONS",
    "MAX_DECODE_PIXELS",
    "WARNING_REASONS",
    "check_bytes",
    "check_file",
    "first_broken",
    "is_utf8",
    "printable",
]


# Mirrors torchvision.datasets.folder.IMG_EXTENSIONS (matched case-insensitively).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
BAD_REASONS = {
    "broken_symlink": "symlink whose target does not exist",
    "unreadable": "cannot be opened (permissions or I/O error)",
    "unreadable_dir": "folder cannot be listed (permissions or I/O error)",
    "not_a_file": "not a regular file (FIFO, socket, device): never opened, left out of the index",
    "bad_name": "the file or folder name is not valid UTF-8",
    "empty_file": "zero bytes",
    "not_an_image": "content is no known image format",
    "unsupported_format": "an image format DALI cannot decode (GIF)",
    "truncated": "the image data ends early",
    "too_large": "the header declares more pixels than the decoders accept",
    "decode_error": "full decode failed",
    "missing": "named by the file list or labels CSV, but not in the folder",
    # tar shards (orderdp_dali.data.tar): the path is <shard>.tar/<member>
    "not_a_tar": "not an uncompressed tar file",
    "missing_label": "an image without its .cls member",
    "missing_image": "a .cls member without an image",
    "bad_label": "the .cls member is no class index",
    "duplicate_key": "the same key twice in one shard",
}


WARNING_REASONS = {
    "wrong_extension": "decodable, but the content's format does not match the extension",
    "trailing_data": "decodable, with extra bytes after the end of the image",
    "huge_image": "beyond PIL's decompression-bomb limit; PIL refuses it by default",
    "symlink_loop": "a symlinked folder that contains itself; skipped",
}


# format name -> extensions whose files may hold it
_FORMAT_EXTENSIONS = {
    "jpeg": (".jpg", ".jpeg"),
    "png": (".png",),
    "pnm": (".ppm", ".pgm"),
    "bmp": (".bmp",),
    "tiff": (".tif", ".tiff"),
    "webp": (".webp",),
    "gif": (),
    "jpeg2000": (),
}


_UNSUPPORTED_FORMATS = {"gif"}


_HEAD_BYTES = 1024  # a JPEG's frame header is mostly inside it (after EXIF data it is read on its own)


_TAIL_BYTES = 512


_PNG_END = b"IEND\xaeB`\x82"


# DALI's CPU decoders refuse larger images (OpenCV's CV_IO_MAX_IMAGE_PIXELS is 2^30; libjpeg-turbo
# stops at a few GB of pixels): such a file fails training mid-epoch, and even below that each
# sample would take gigabytes. PIL's own decompression-bomb limit (huge_image, a warning) is lower.
MAX_DECODE_PIXELS = 1 << 30


# JPEG start-of-frame markers (SOF0-SOF15 but DHT C4, JPG C8, DAC CC), which carry the image size
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def is_utf8(name: str) -> bool:
    """Whether ``name`` (a path or file name as ``os`` returns it) is valid UTF-8 on disk.

    Python hands back undecodable bytes as lone surrogates (``surrogateescape``); such a name
    cannot be written to a UTF-8 list, log or fingerprint, so the walk reports it instead.
    """
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(name: str) -> str:
    """``name`` with undecodable bytes spelled ``\\xNN``, for messages and reports."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# A check result: None when fine, else (reason, detail).
_Result = Optional[Tuple[str, str]]


def _sniff(head: bytes) -> Optional[str]:
    """The image format of a file from its first bytes, or None."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n#":
        return "pnm"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "jpeg2000"
    return None


# read(offset, count) -> at most count bytes of the image from offset
_Read = Callable[[int, int], bytes]


def _jpeg_size(head: bytes, read: _Read) -> Optional[Tuple[int, int]]:
    """(width, height) from a JPEG's frame header, walking the marker segments before it (in
    ``head`` while they fit, else through ``read``)."""
    pos, size = 2, len(head)  # after SOI
    for _ in range(1024):  # segments before the frame header; bounded against garbage
        seg = head[pos : pos + 9] if pos + 9 <= size else read(pos, 9)
        if len(seg) < 4 or seg[0] != 0xFF:
            return None
        marker = seg[1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
        elif marker in _SOF:
            return ((seg[7] << 8) | seg[8], (seg[5] << 8) | seg[6]) if len(seg) == 9 else None
        elif marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header came
            return None
        else:
            length = (seg[2] << 8) | seg[3]
            if length < 2:
                return None
            pos += 2 + length
    return None


def _image_size(fmt: str, head: bytes, read: _Read) -> Optional[Tuple[int, int]]:
    """(width, height) that an image's header declares, for the formats whose headers say it
    cheaply (JPEG, PNG, BMP, WebP); None when unknown (TIFF and PNM are sized by the deep decode)."""
    if fmt == "jpeg":
        return _jpeg_size(head, read)
    if fmt == "png" and len(head) >= 24 and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if fmt == "bmp" and len(head) >= 26:
        if int.from_bytes(head[14:18], "little") == 12:  # OS/2 header: 16-bit sizes
            return int.from_bytes(head[18:20], "little"), int.from_bytes(head[20:22], "little")
        return (abs(int.from_bytes(head[18:22], "little", signed=True)),
                abs(int.from_bytes(head[22:26], "little", signed=True)))  # a negative height is top-down
    if fmt == "webp" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8 ":
            return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _decode(path: Union[str, IO[bytes]]) -> _Result:
    """Fully decode ``path`` (a file name or a binary file) with PIL; None if it decodes, else (reason, message)."""
    from PIL import Image, ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not come back grey
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette chatter
            with Image.open(path) as im:
                im.load()
    except Image.DecompressionBombError as e:
        return "huge_image", str(e)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        message = f"{type(e).__name__}: {e}"
        return ("truncated" if "truncated" in str(e).lower() else "decode_error"), message
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return None


def check_file(path: str, deep: bool = True) -> _Result:
    """Check one image file; None if fine, else (reason, detail).

    ``deep`` decodes it fully; without it only the header, size and end marker are read.
    The one answer to "can this file be read and decoded?" (the iterator asks it too).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return "broken_symlink", f"points to {os.readlink(path)!r}, which does not exist"
        return "unreadable", "vanished during the check"
    except OSError as e:  # ELOOP, EACCES on a parent, ...
        if os.path.islink(path):
            return "broken_symlink", e.strerror or str(e)
        return "unreadable", e.strerror or str(e)
    if not stat.S_ISREG(st.st_mode):
        return "not_a_file", stat.filemode(st.st_mode)
    if st.st_size == 0:
        return "empty_file", "0 bytes"
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            head = os.pread(fd, _HEAD_BYTES, 0)
            tail = os.pread(fd, _TAIL_BYTES, max(0, st.st_size - _TAIL_BYTES))

            size = _image_size(_sniff(head) or "", head, lambda offset, count: os.pread(fd, count, offset))
        finally:
            os.close(fd)
    except OSError as e:
        return "unreadable", e.strerror or str(e)
    return _check_content(head, tail, os.path.splitext(path)[1].lower(), lambda: _decode(path), deep, size)


def check_bytes(data: Union[bytes, memoryview, Any], name: str, deep: bool = True) -> _Result:
    """:func:`check_file` of an image held in memory (e.g. a tar shard member); ``name`` gives the extension."""
    data = memoryview(data).cast("B")
    if len(data) == 0:
        return "empty_file", "0 bytes"
    head, tail = bytes(data[:_HEAD_BYTES]), bytes(data[-_TAIL_BYTES:])
    size = _image_size(_sniff(head) or "", head, lambda offset, count: bytes(data[offset : offset + count]))
    return _check_content(head, tail, os.path.splitext(name)[1].lower(), lambda: _decode(io.BytesIO(data)), deep,
                          size)


def _check_content(head: bytes, tail: bytes, ext: str, decode: Callable[[], _Result], deep: bool,
                   size: Optional[Tuple[int, int]] = None) -> _Result:
    """The format, declared size, end-marker and (``deep``) decode checks of an image's first and last bytes."""
    fmt = _sniff(head)
    if fmt is None:
        return "not_an_image", f"starts with {head[:8].hex(' ')}"
    if fmt in _UNSUPPORTED_FORMATS:
        return "unsupported_format", f"{fmt.upper()} content; DALI's decoders cannot read it"
    if size is not None and size[0] * size[1] > MAX_DECODE_PIXELS:
        return "too_large", (f"the header declares {size[0]}x{size[1]} pixels, more than the {MAX_DECODE_PIXELS} "
                             "DALI's decoders accept; resize or remove it")
    warning: _Result = None
    end = tail.rstrip(b"\x00")
    if fmt == "png" and _PNG_END not in tail:
        # PIL decodes a PNG cut inside its last chunks without complaint; libpng does not.
        return "truncated", "no IEND chunk at the end of the file"
    if (fmt == "jpeg" and not end.endswith(b"\xff\xd9")) or (fmt == "png" and not end.endswith(_PNG_END)):
        # Truncated, or valid with trailing data: only a decode tells them apart (rare, so cheap).
        failure = decode()
        if failure is not None:
            return failure if failure[0] != "decode_error" else ("truncated", failure[1])
        warning = "trailing_data", f"no {fmt.upper()} end marker at the end of the file, but it decodes"
        deep = False  # just decoded
    if deep:
        failure = decode()
        if failure is not None:
            return failure
    if warning is None and ext not in _FORMAT_EXTENSIONS[fmt]:
        warning = "wrong_extension", f"{fmt.upper()} content in a {ext} file"
    return warning


def first_broken(indices: np.ndarray, check: Callable[[int], Tuple[str, Optional[Tuple[str, str]]]]
                 ) -> Optional[Tuple[int, str, str]]:
    """``find_broken``'s rule over ``check(i) -> (where, problem or None)``: the first bad sample,
    else the first ``huge_image`` one (a warning for check-data, but the likeliest reason a batch
    that holds it failed), else None."""
    suspect = None
    for i in dict.fromkeys(int(s) for s in indices):
        where, problem = check(i)
        if problem is None:
            continue
        if problem[0] in BAD_REASONS:
            return i, where, f"{problem[0]}: {problem[1]}"
        if problem[0] == "huge_image" and suspect is None:
            suspect = i, where, f"{problem[0]}: {problem[1]} ('check-data --strict' lists it)"
    return suspect

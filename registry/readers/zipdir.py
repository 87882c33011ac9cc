"""A strict reader of zip directories, written for torch checkpoints.

It reads the end record, the central directory and the local headers - never member data
except the one member a caller asks for - and refuses what a careful loader refuses: an archive
not starting at byte 0 (a polyglot), members whose local and central headers disagree, duplicate
or overlapping members, encrypted members, and multi-disk archives. Zip64 is supported (torch
always writes it).
"""

from __future__ import annotations

import os
import struct
import zlib

from .limits import FormatError, LimitError, Limits

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record (22 bytes)
_LOCATOR = struct.Struct("<4sLQL")  # zip64 end of central directory locator (20 bytes)
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record (56 bytes)
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory file header (46 bytes)
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header (30 bytes)
_MAX_COMMENT = 0xFFFF
_CHUNK = 1 << 20


class Member:
    """One zip member as the central directory describes it (`data_offset` after `check_local`)."""

    __slots__ = ("name", "raw_name", "flags", "method", "crc", "csize", "usize", "offset", "data_offset")

    def __init__(self, name: str, raw_name: bytes, flags: int, method: int, crc: int, csize: int,
                 usize: int, offset: int):
        self.name = name
        self.raw_name = raw_name
        self.flags = flags
        self.method = method
        self.crc = crc
        self.csize = csize
        self.usize = usize
        self.offset = offset
        self.data_offset = -1


class FileView:
    """Positioned reads of exactly the bytes asked for (`os.pread`: no seek, no buffering)."""

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size

    def read(self, offset: int, count: int, what: str) -> bytes:
        if offset < 0 or count < 0 or offset + count > self.size:
            raise FormatError(f"the file is truncated: {what} runs past its end")
        data = os.pread(self.fd, count, offset)
        if len(data) != count:
            raise FormatError(f"the file is truncated: {what} runs past its end")
        return data


def read_directory(view: FileView, limits: Limits) -> dict[str, Member]:
    """Every member by name, in central-directory order, local headers checked.

    Raises FormatError for a bad archive, LimitError for an absurdly large directory."""
    eocd_at, entries, cd_size, cd_offset = _find_end(view)
    if cd_size > limits.max_central_directory_bytes or entries > limits.max_zip_members:
        raise LimitError(f"the zip directory lists {entries:,} members in {cd_size:,} bytes; "
                         "far more than a checkpoint holds")
    if cd_offset + cd_size != eocd_at:
        if cd_offset + cd_size < eocd_at and _looks_shifted(view, eocd_at - cd_size):
            raise PolyglotError(eocd_at - cd_size - cd_offset)
        raise FormatError("the zip central directory is not where the end record says")
    directory = view.read(cd_offset, cd_size, "the zip central directory")
    members: dict[str, Member] = {}
    pos = 0
    while pos < cd_size:
        if cd_size - pos < _CENTRAL.size:
            raise FormatError("the zip central directory is truncated")
        (sig, _made, _needed, flags, method, _time, _date, crc, csize, usize, name_len, extra_len,
         comment_len, disk, _iattr, _eattr, offset) = _CENTRAL.unpack_from(directory, pos)
        if sig != b"PK\x01\x02":
            raise FormatError(f"the zip central directory is corrupt at entry {len(members) + 1}")
        start = pos + _CENTRAL.size
        pos = start + name_len + extra_len + comment_len
        if pos > cd_size:
            raise FormatError("the zip central directory is truncated")
        raw_name = directory[start:start + name_len]
        extra = directory[start + name_len:start + name_len + extra_len]
        if 0xFFFFFFFF in (csize, usize, offset) or disk == 0xFFFF:
            usize, csize, offset, disk = _zip64_extra(extra, usize, csize, offset, disk)
        if disk != 0:
            raise FormatError("multi-disk zip archives are not supported")
        if flags & 0x41:
            raise FormatError(f"zip member {raw_name!r} is encrypted")
        name = _decode_name(raw_name, flags)
        if name in members:
            raise FormatError(f"the zip holds two members named {name!r}; torch and a scanner could read "
                              "different ones")
        members[name] = Member(name, raw_name, flags, method, crc, csize, usize, offset)
        if len(members) > entries:
            break
    if len(members) != entries:
        raise FormatError(f"the zip end record announces {entries} members but the directory lists {len(members)}")
    _check_local(view, members, cd_offset)
    return members


def _check_local(view: FileView, members: dict[str, Member], cd_offset: int) -> None:
    """Check each member's local header against the central directory and that members neither
    overlap nor leave bytes before the first one. Sets `Member.data_offset`. Reads 30 bytes plus
    the name per member, never member data."""
    ordered = sorted(members.values(), key=lambda m: m.offset)
    if ordered and ordered[0].offset != 0:
        raise PolyglotError(ordered[0].offset)
    end_of_data = 0
    for member in ordered:
        if member.offset < end_of_data:
            raise FormatError(f"zip member {member.name!r} overlaps the member before it")
        header = view.read(member.offset, _LOCAL.size + len(member.raw_name), f"zip member {member.name!r}")
        sig, _needed, flags, method, _time, _date, crc, csize, usize, name_len, extra_len = _LOCAL.unpack_from(header)
        if (sig != b"PK\x03\x04" or header[_LOCAL.size:] != member.raw_name or name_len != len(member.raw_name)
                or method != member.method or (flags & 0x08) != (member.flags & 0x08)):
            raise FormatError(f"the local header of zip member {member.name!r} disagrees with the central directory")
        if not flags & 0x08 and (crc != member.crc or not _same_size(csize, member.csize)
                                 or not _same_size(usize, member.usize)):
            raise FormatError(f"the local header of zip member {member.name!r} disagrees with the central directory")
        member.data_offset = member.offset + _LOCAL.size + name_len + extra_len
        end_of_data = member.data_offset + member.csize
        if end_of_data > view.size:
            raise FormatError(f"the file is truncated: zip member {member.name!r} runs past its end")
    if end_of_data > cd_offset:
        raise FormatError("zip member data overlaps the central directory")


def read_member(view: FileView, member: Member, cap: int) -> bytes:
    """The member's bytes (decompressed, at most `cap` of them) after a CRC check.

    Declared sizes are not trusted: deflated data is inflated in bounded steps and the output
    counted. Raises LimitError past `cap`, FormatError for a bad CRC or an unknown method.
    """
    if member.data_offset < 0:
        raise AssertionError("read_directory must check local headers before read_member")
    if member.usize > cap:
        raise LimitError(f"{member.name} is {member.usize:,} bytes, over the {cap:,}-byte limit for a pickle record")
    if member.method == 0:
        if member.csize != member.usize:
            raise FormatError(f"zip member {member.name!r} is stored with two different sizes")
        data = view.read(member.data_offset, member.csize, f"zip member {member.name!r}")
    elif member.method == 8:
        data = _inflate(view, member, cap)
    else:
        raise FormatError(f"zip member {member.name!r} uses compression method {member.method}, which torch never writes")
    if zlib.crc32(data) != member.crc:
        raise FormatError(f"zip member {member.name!r} fails its CRC check (the file is corrupt or was altered)")
    return data


def _inflate(view: FileView, member: Member, cap: int) -> bytes:
    inflater = zlib.decompressobj(-15)
    parts, produced, position, end = [], 0, member.data_offset, member.data_offset + member.csize
    while position < end or inflater.unconsumed_tail:
        if inflater.unconsumed_tail:
            chunk = inflater.unconsumed_tail
        else:
            count = min(_CHUNK, end - position)
            chunk = view.read(position, count, f"zip member {member.name!r}")
            position += count
        try:
            out = inflater.decompress(chunk, cap + 1 - produced)
        except zlib.error as exc:
            raise FormatError(f"zip member {member.name!r} does not inflate ({exc})") from None
        produced += len(out)
        if produced > cap:
            raise LimitError(f"{member.name} inflates past the {cap:,}-byte limit for a pickle record "
                             "(a zip bomb, or not a checkpoint)")
        parts.append(out)
        if inflater.eof:
            break
    data = b"".join(parts)
    if not inflater.eof or len(data) != member.usize:
        raise FormatError(f"zip member {member.name!r} inflates to a different size than its header says")
    return data


class PolyglotError(FormatError):
    """A zip archive preceded by other bytes: a file that different tools read differently."""

    def __init__(self, prefix: int):
        super().__init__(f"the zip archive does not start at byte 0 ({prefix:,} bytes precede it): a polyglot "
                         "file, which torch and scanners read differently")
        self.prefix = prefix


def _find_end(view: FileView) -> tuple[int, int, int, int]:
    """(offset where the central directory must end, entries, cd size, cd offset)."""
    tail_start = max(0, view.size - _EOCD.size - _MAX_COMMENT)
    tail = view.read(tail_start, view.size - tail_start, "the zip end record")
    index = len(tail)
    while True:
        index = tail.rfind(b"PK\x05\x06", 0, index)
        if index < 0:
            raise FormatError("not a complete zip archive: no end-of-directory record (truncated or corrupt)")
        if len(tail) - index >= _EOCD.size:
            fields = _EOCD.unpack_from(tail, index)
            if index + _EOCD.size + fields[7] == len(tail):
                break
    _sig, disk, cd_disk, _on_disk, entries, cd_size, cd_offset, _comment = fields
    eocd_at = tail_start + index
    if disk != 0 or cd_disk != 0:
        raise FormatError("multi-disk zip archives are not supported")
    locator_at = eocd_at - _LOCATOR.size
    if locator_at >= 0 and view.read(locator_at, 4, "the zip64 locator") == b"PK\x06\x07":
        _sig, _disk, record_at, _disks = _LOCATOR.unpack(view.read(locator_at, _LOCATOR.size, "the zip64 locator"))
        expected_at = locator_at - _EOCD64.size  # where writers put it (no zip64 extensible data)
        if (record_at < expected_at and expected_at >= 0
                and view.read(expected_at, 4, "the zip64 end record") == b"PK\x06\x06"):
            raise PolyglotError(expected_at - record_at)
        record = view.read(record_at, _EOCD64.size, "the zip64 end record")
        (sig, _size, _made, _needed, disk, cd_disk, _on_disk, entries, cd_size, cd_offset) = _EOCD64.unpack(record)
        if sig != b"PK\x06\x06" or disk != 0 or cd_disk != 0:
            raise FormatError("the zip64 end record is corrupt")
        return record_at, entries, cd_size, cd_offset
    if 0xFFFFFFFF in (cd_size, cd_offset) or entries == 0xFFFF:
        raise FormatError("the zip needs a zip64 end record and has none")
    return eocd_at, entries, cd_size, cd_offset


def polyglot_prefix(view: FileView) -> int | None:
    """Bytes before a zip archive that ends the file but does not start it (a polyglot), or None."""
    try:
        eocd_at, _entries, cd_size, cd_offset = _find_end(view)
    except PolyglotError as exc:
        return exc.prefix
    except FormatError:
        return None
    shift = eocd_at - cd_size - cd_offset
    return shift if shift > 0 and _looks_shifted(view, eocd_at - cd_size) else None


def _looks_shifted(view: FileView, cd_start: int) -> bool:
    return cd_start >= 0 and view.read(cd_start, 4, "the zip central directory") == b"PK\x01\x02"


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int, disk: int) -> tuple[int, int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<2H", extra, pos)
        body = extra[pos + 4:pos + 4 + size]
        pos += 4 + size
        if tag != 0x0001:
            continue
        values = []
        wanted = [usize == 0xFFFFFFFF, csize == 0xFFFFFFFF, offset == 0xFFFFFFFF]
        need = 8 * sum(wanted) + (4 if disk == 0xFFFF else 0)
        if len(body) < need:
            break
        values = list(struct.unpack_from(f"<{sum(wanted)}Q", body))
        usize = values.pop(0) if wanted[0] else usize
        csize = values.pop(0) if wanted[1] else csize
        offset = values.pop(0) if wanted[2] else offset
        if disk == 0xFFFF:
            disk = struct.unpack_from("<L", body, 8 * sum(wanted))[0]
        return usize, csize, offset, disk
    raise FormatError("a zip64 member has no valid zip64 size field")


def _same_size(local: int, central: int) -> bool:
    return local == central or local == 0xFFFFFFFF


def _decode_name(raw: bytes, flags: int) -> str:
    try:
        return raw.decode("utf-8") if flags & 0x800 else raw.decode("cp437")
    except UnicodeDecodeError:
        raise FormatError(f"zip member name {raw!r} is not valid UTF-8") from None

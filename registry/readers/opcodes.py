"""The pickle opcodes `MetadataUnpickler.load` does not inline: `TABLE[opcode byte]`.

Each function takes `(vm, data, pos)` - the machine, the record, the offset just past the opcode
byte - and returns the offset of the next opcode (-1 after STOP). Lengths are checked against
the bytes left before anything is allocated; nothing is imported or called.
"""

from __future__ import annotations

import codecs
import struct
from typing import Callable

from .limits import FormatError, NeedMoreData
from .records import Instance, check_key

_u8 = struct.Struct("<Q").unpack_from
_u4 = struct.Struct("<I").unpack_from
_i4 = struct.Struct("<i").unpack_from
_u2 = struct.Struct("<H").unpack_from
_f8 = struct.Struct(">d").unpack_from


def _unknown(vm, data, pos):
    raise FormatError(f"not a pickle record: unknown opcode 0x{data[pos - 1]:02x} at byte {pos - 1}")


def _proto(vm, data, pos):
    version = vm.take(pos, 1)[0]
    if version > 5:
        raise FormatError(f"unsupported pickle protocol {version}")
    vm.proto = version  # protocols 0-2 name Python 2 globals (`policy.python3_name`)
    return pos + 1


def _frame(vm, data, pos):
    vm.take(pos, 8)  # frames only group opcodes; the record is in memory already
    return pos + 8


def _stop(vm, data, pos):
    vm.stop_at = pos
    return -1


def _pop(vm, data, pos):
    if vm.stack:
        vm.stack.pop()
    else:
        vm.pop_mark()
    return pos


def _pop_mark(vm, data, pos):
    vm.pop_mark()
    return pos


def _dup(vm, data, pos):
    vm.stack.append(vm.stack[-1])
    return pos


def _push(value):
    def push(vm, data, pos):
        vm.stack.append(value)
        return pos
    return push


def _empty_list(vm, data, pos):
    vm.stack.append([])
    return pos


def _empty_dict(vm, data, pos):
    vm.stack.append({})
    return pos


def _empty_set(vm, data, pos):
    vm.stack.append(set())
    return pos


def _int(vm, data, pos):
    text, pos = vm.line(pos)
    vm.stack.append(True if text == b"01" else False if text == b"00" else int(text))
    return pos


def _long(vm, data, pos):
    text, pos = vm.line(pos)
    vm.stack.append(int(text[:-1] if text.endswith(b"L") else text))
    return pos


def _float(vm, data, pos):
    text, pos = vm.line(pos)
    vm.stack.append(float(text))
    return pos


def _binint(vm, data, pos):
    vm.take(pos, 4)
    vm.stack.append(_i4(data, pos)[0])
    return pos + 4


def _long_n(width):
    def long_n(vm, data, pos):
        size = int.from_bytes(vm.take(pos, width), "little", signed=True)
        if size < 0 or size > vm.limits.max_long_bytes:
            raise FormatError(f"a pickled integer claims {size:,} bytes")
        vm.stack.append(int.from_bytes(vm.take(pos + width, size), "little", signed=True))
        return pos + width + size
    return long_n


def _binfloat(vm, data, pos):
    vm.take(pos, 8)
    vm.stack.append(_f8(data, pos)[0])
    return pos + 8


def _sized(width, make):
    """Opcodes holding `width` length bytes then that many bytes (BINUNICODE, BINBYTES, ...).

    The length is checked against the bytes left before anything is allocated."""
    unpack = {1: None, 4: _u4, 8: _u8}[width]

    def sized(vm, data, pos):
        if width == 1:
            if pos >= vm.end:
                raise vm.short(pos, 1)
            size = data[pos]
        else:
            vm.take(pos, width)
            size = unpack(data, pos)[0]
        start = pos + width
        if size > vm.end - start:
            if vm.complete:
                raise FormatError(f"a pickled string at byte {pos} claims {size:,} bytes; only "
                                  f"{vm.end - start:,} are left")
            raise NeedMoreData()
        vm.stack.append(make(data[start:start + size]))
        return start + size
    return sized


def _utf8(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def _latin1(raw: bytes) -> str:
    return raw.decode("latin-1")


def _string(vm, data, pos):
    text, pos = vm.line(pos)
    if len(text) < 2 or text[0] != text[-1] or text[:1] not in (b"'", b'"'):
        raise FormatError("corrupt pickle record (a STRING opcode is not quoted)")
    vm.stack.append(codecs.escape_decode(text[1:-1])[0].decode("latin-1"))
    return pos


def _unicode(vm, data, pos):
    text, pos = vm.line(pos)
    vm.stack.append(text.decode("raw-unicode-escape"))
    return pos


def _global(vm, data, pos):
    module, pos = vm.line(pos)
    name, pos = vm.line(pos)
    vm.stack.append(vm.find_global(module.decode("utf-8"), name.decode("utf-8")))
    return pos


def _stack_global(vm, data, pos):
    name = vm.stack.pop()
    module = vm.stack.pop()
    if type(module) is not str or type(name) is not str:
        raise FormatError("corrupt pickle record (STACK_GLOBAL needs two strings)")
    vm.stack.append(vm.find_global(module, name))
    return pos


def _persid(vm, data, pos):
    text, pos = vm.line(pos)
    vm.stack.append(_persistent(vm, text.decode("ascii")))
    return pos


def _binpersid(vm, data, pos):
    vm.stack.append(_persistent(vm, vm.stack.pop()))
    return pos


def _persistent(vm, pid):
    if vm.persistent_load is None:
        raise FormatError("the pickle refers to external data (a persistent id) where none is expected")
    return vm.persistent_load(pid)


def _newobj(vm, data, pos):
    args = vm.stack.pop()
    cls = vm.stack.pop()
    vm.stack.append(vm.new(cls, args))
    return pos


def _newobj_ex(vm, data, pos):
    vm.stack.pop()  # keyword arguments: kept by nobody, as with positional ones of unknown classes
    args = vm.stack.pop()
    cls = vm.stack.pop()
    vm.stack.append(vm.new(cls, args))
    return pos


def _inst(vm, data, pos):
    module, pos = vm.line(pos)
    name, pos = vm.line(pos)
    cls = vm.find_global(module.decode("ascii"), name.decode("ascii"))
    args = tuple(vm.pop_mark())
    vm.stack.append(vm.call(cls, args))
    return pos


def _obj(vm, data, pos):
    items = vm.pop_mark()
    if not items:
        raise FormatError("corrupt pickle record (OBJ without a class)")
    vm.stack.append(vm.call(items[0], tuple(items[1:])))
    return pos


def _build(vm, data, pos):
    state = vm.stack.pop()
    vm.build(vm.stack[-1], state)
    return pos


def _ext(vm, data, pos):
    raise FormatError("the pickle uses the copyreg extension registry (EXT opcodes), which no "
                      "checkpoint writer uses")


def _buffer(vm, data, pos):
    raise FormatError("the pickle expects out-of-band buffers (protocol 5), which torch.load never provides")


def _readonly_buffer(vm, data, pos):
    return pos


def _tuple3(vm, data, pos):
    stack = vm.stack
    if len(stack) < 3:
        raise IndexError("stack underflow")
    stack[-3:] = [tuple(stack[-3:])]
    return pos


def _list(vm, data, pos):
    items = vm.pop_mark()  # before `vm.stack` is looked up: popping the mark replaces it
    vm.stack.append(items)
    return pos


def _dict(vm, data, pos):
    items = vm.pop_mark()
    if len(items) % 2:
        raise FormatError("corrupt pickle record (DICT with an odd number of items)")
    vm.stack.append({check_key(items[i]): items[i + 1] for i in range(0, len(items), 2)})
    return pos


def _frozenset(vm, data, pos):
    items = vm.pop_mark()
    vm.stack.append(frozenset(check_key(item) for item in items))
    return pos


def _append(vm, data, pos):
    value = vm.stack.pop()
    _extend(vm, vm.stack[-1], [value])
    return pos


def _appends(vm, data, pos):
    items = vm.pop_mark()
    _extend(vm, vm.stack[-1], items)
    return pos


def _extend(vm, target, items):
    if type(target) is list:
        target.extend(items)
    elif type(target) is Instance:
        if target.listitems is None:
            target.listitems = []
        target.listitems.extend(items)
    else:
        raise FormatError(f"corrupt pickle record (APPEND to a {type(target).__name__})")


def _setitem(vm, data, pos):
    value = vm.stack.pop()
    key = vm.stack.pop()
    _update(vm, vm.stack[-1], [key, value])
    return pos


def _setitems(vm, data, pos):
    items = vm.pop_mark()
    if len(items) % 2:
        raise FormatError("corrupt pickle record (SETITEMS with an odd number of items)")
    _update(vm, vm.stack[-1], items)
    return pos


def _update(vm, target, items):
    if type(target) is Instance:
        if target.items is None:
            target.items = {}
        target = target.items
    elif type(target) is not dict:
        raise FormatError(f"corrupt pickle record (SETITEM on a {type(target).__name__})")
    for i in range(0, len(items), 2):
        key = items[i]
        target[key if type(key) is str else check_key(key)] = items[i + 1]


def _additems(vm, data, pos):
    items = vm.pop_mark()
    target = vm.stack[-1]
    if type(target) is set:
        target.update(check_key(item) for item in items)
    elif type(target) is Instance:
        _extend(vm, target, items)
    else:
        raise FormatError(f"corrupt pickle record (ADDITEMS to a {type(target).__name__})")
    return pos


def _get(vm, data, pos):
    text, pos = vm.line(pos)
    vm.stack.append(vm.memo[int(text)])
    return pos


def _long_binget(vm, data, pos):
    vm.take(pos, 4)
    vm.stack.append(vm.memo[_u4(data, pos)[0]])
    return pos + 4


def _put(vm, data, pos):
    text, pos = vm.line(pos)
    vm.memo_put(int(text))
    return pos


def _binput(vm, data, pos):
    if pos >= vm.end:
        raise vm.short(pos, 1)
    vm.memo_put(data[pos])
    return pos + 1


def _memoize(vm, data, pos):
    vm.memo_put(len(vm.memo))
    return pos


# MARK, TUPLE, TUPLE1, TUPLE2, REDUCE, BININT1, BININT2, BINGET and LONG_BINPUT are inlined in load().
OPCODES: dict[bytes, Callable] = {
    b".": _stop, b"0": _pop, b"1": _pop_mark, b"2": _dup, b"F": _float, b"I": _int, b"J": _binint,
    b"L": _long, b"N": _push(None), b"P": _persid, b"Q": _binpersid, b"S": _string,
    b"T": _sized(4, _latin1), b"U": _sized(1, _latin1), b"V": _unicode, b"X": _sized(4, _utf8),
    b"a": _append, b"b": _build, b"c": _global, b"d": _dict, b"}": _empty_dict, b"e": _appends,
    b"g": _get, b"i": _inst, b"j": _long_binget, b"l": _list, b"]": _empty_list, b"o": _obj,
    b"p": _put, b"q": _binput, b"s": _setitem, b")": _push(()), b"u": _setitems, b"G": _binfloat,
    # protocol 2
    b"\x80": _proto, b"\x81": _newobj, b"\x82": _ext, b"\x83": _ext, b"\x84": _ext, b"\x87": _tuple3,
    b"\x88": _push(True), b"\x89": _push(False), b"\x8a": _long_n(1), b"\x8b": _long_n(4),
    # protocol 3
    b"B": _sized(4, bytes), b"C": _sized(1, bytes),
    # protocol 4
    b"\x8c": _sized(1, _utf8), b"\x8d": _sized(8, _utf8), b"\x8e": _sized(8, bytes),
    b"\x8f": _empty_set, b"\x90": _additems, b"\x91": _frozenset, b"\x92": _newobj_ex,
    b"\x93": _stack_global, b"\x94": _memoize, b"\x95": _frame,
    # protocol 5
    b"\x96": _sized(8, bytearray), b"\x97": _buffer, b"\x98": _readonly_buffer,
}

TABLE: list[Callable] = [_unknown] * 256
for _code, _handler in OPCODES.items():
    TABLE[_code[0]] = _handler

"""A pickle machine written for metadata: it reads a pickle record and never imports or calls.

It implements every opcode of protocols 0-5 over an in-memory record. Globals become `Global`
names classified by `policy.classify`; calls to interpreted globals (tensor rebuilds, plain
containers) are interpreted by `interpret.py`; any other call, `NEWOBJ` or `BUILD` becomes an
`Instance` record, and what would have run code is written down in a `Findings` for the reader
to judge. Every bound of `Limits` is enforced while running, so hostile input ends in a
`FormatError` (or `LimitError`) within bounded time and memory.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

from .limits import FormatError, LimitError, Limits, NeedMoreData
from .opcodes import TABLE
from .policy import Findings, classify, python3_name
from .records import Global, Instance, StorageRef, TensorRecord

_u4 = struct.Struct("<I").unpack_from
_u2 = struct.Struct("<H").unpack_from

_LINE_MAX = 1 << 16  # text opcodes (protocol 0) hold short lines; a longer one is garbage


class MetadataUnpickler:
    """Runs one pickle record held in `data` (bytes) starting at `start`.

    `persistent_load(pid)` turns a persistent id into a value (torch: a `StorageRef`).
    `complete=False` says `data` may be a prefix of the record: running past its end raises
    `NeedMoreData` instead of a truncation error, so the caller can read more and retry.
    """

    def __init__(
        self,
        data: bytes,
        *,
        limits: Limits,
        findings: Findings,
        persistent_load: Callable[[Any], Any] | None = None,
        complete: bool = True,
    ):
        self.data = data
        self.end = len(data)
        self.complete = complete
        self.limits = limits
        self.findings = findings
        self.persistent_load = persistent_load
        self.stack: list = []
        self.metastack: list[list] = []
        self.memo: dict[int, Any] = {}
        self.globals: dict[tuple[str, str], Global] = {}
        self.proto = 0  # set by the PROTO opcode; a record without one is protocol 0 or 1
        self.tensors: list[TensorRecord] = []
        self.stop_at = -1

    # --- running -------------------------------------------------------------------------------

    def load(self, start: int = 0) -> Any:
        """The record's value; `self.stop_at` is then the offset just past its STOP opcode.

        Raises FormatError (corrupt), LimitError (a bound reached) or NeedMoreData.
        """
        self.proto = 0
        data, table, end = self.data, TABLE, self.end
        memo, metastack = self.memo, self.metastack
        max_memo, max_depth = self.limits.max_memo, self.limits.max_depth
        budget = self.limits.max_instructions
        stack = self.stack
        pos, op = start, -1
        try:
            # The opcodes torch's data.pkl is made of are handled inline (a function call per
            # opcode would double the cost); every other opcode goes through `opcodes.TABLE`.
            while True:
                if pos >= end:
                    raise self.short(pos, 1)
                budget -= 1
                if budget < 0:
                    raise LimitError(
                        f"the pickle record runs past {self.limits.max_instructions:,} instructions; "
                        "a checkpoint needs far fewer"
                    )
                op = data[pos]
                pos += 1
                if op == 0x72:  # LONG_BINPUT
                    if pos + 4 > end:
                        raise self.short(pos, 4)
                    memo[_u4(data, pos)[0]] = stack[-1]
                    pos += 4
                    if len(memo) > max_memo:
                        raise self.memo_limit()
                elif op == 0x68:  # BINGET
                    if pos >= end:
                        raise self.short(pos, 1)
                    stack.append(memo[data[pos]])
                    pos += 1
                elif op == 0x4B:  # BININT1
                    if pos >= end:
                        raise self.short(pos, 1)
                    stack.append(data[pos])
                    pos += 1
                elif op == 0x4D:  # BININT2
                    if pos + 2 > end:
                        raise self.short(pos, 2)
                    stack.append(_u2(data, pos)[0])
                    pos += 2
                elif op == 0x28:  # MARK
                    if len(metastack) >= max_depth:
                        raise LimitError(f"the pickle nests deeper than {max_depth} levels")
                    metastack.append(stack)
                    stack = self.stack = []
                elif op == 0x74:  # TUPLE
                    if not metastack:
                        raise self.no_mark()
                    items = tuple(stack)
                    stack = self.stack = metastack.pop()
                    stack.append(items)
                elif op == 0x52:  # REDUCE
                    args = stack.pop()
                    stack[-1] = self.call(stack[-1], args)
                elif op == 0x85:  # TUPLE1
                    stack[-1] = (stack[-1],)
                elif op == 0x86:  # TUPLE2
                    second = stack.pop()
                    stack[-1] = (stack[-1], second)
                else:
                    pos = table[op](self, data, pos)
                    stack = self.stack  # the handler may have pushed or popped a mark
                    if pos < 0:
                        break
        except (FormatError, NeedMoreData):
            raise
        except MemoryError:
            raise LimitError("the pickle record needs more memory than a checkpoint's metadata can") from None
        except (IndexError, KeyError, TypeError, ValueError, AttributeError, struct.error, OverflowError,
                RecursionError) as exc:
            raise FormatError(f"corrupt pickle: {_describe(exc)} ({_opcode_name(op)} near byte {pos - 1})") from exc
        return self.stack.pop() if self.stack else None

    def short(self, pos: int, wanted: int) -> Exception:
        """The exception for reading `wanted` bytes at `pos` past the end of what we hold."""
        if not self.complete:
            return NeedMoreData()
        return FormatError(f"the pickle record is truncated at byte {pos} (it needs {wanted} more bytes)")

    def take(self, pos: int, size: int) -> bytes:
        if size > self.end - pos:
            raise self.short(pos, size)
        return self.data[pos:pos + size]

    def line(self, pos: int) -> tuple[bytes, int]:
        newline = self.data.find(b"\n", pos, pos + _LINE_MAX)
        if newline < 0:
            if self.end - pos < _LINE_MAX:
                raise self.short(pos, 1)
            raise FormatError(f"a text opcode at byte {pos} has no end of line")
        return self.data[pos:newline], newline + 1

    def pop_mark(self) -> list:
        items = self.stack
        if not self.metastack:
            raise self.no_mark()
        self.stack = self.metastack.pop()
        return items

    def no_mark(self) -> FormatError:
        return FormatError("corrupt pickle record (an opcode needs a MARK that is not there)")

    def memo_put(self, index: int) -> None:
        memo = self.memo
        memo[index] = self.stack[-1]
        if len(memo) > self.limits.max_memo:
            raise self.memo_limit()

    def memo_limit(self) -> LimitError:
        return LimitError(f"the pickle memo grows past {self.limits.max_memo:,} entries")

    # --- meaning of globals and calls -----------------------------------------------------------

    def find_global(self, module: str, name: str) -> Global:
        if self.proto < 3:  # as torch.load's unpickler resolves it (fix_imports)
            module, name = python3_name(module, name)
        key = (module, name)
        found = self.globals.get(key)
        if found is None:
            found = self.globals[key] = classify(module, name)
            self.findings.referenced(found)
        return found

    def call(self, func: Any, args: Any) -> Any:
        """What `func(*args)` stands for. Nothing is called: interpreted globals are interpreted,
        any other call is recorded in the findings and becomes an `Instance`."""
        if type(args) is not tuple:
            raise FormatError("corrupt pickle record (call arguments are not a tuple)")
        if type(func) is Global:
            if func.handler is not None:
                return func.handler(self, func, args)
            self.findings.called(func)
            return Instance(func, args)
        self.findings.opaque_call(func)
        return Instance(None, args)

    def new(self, cls: Any, args: Any) -> Any:
        """What `cls.__new__(cls, *args)` (NEWOBJ) stands for: a container, or an `Instance`."""
        if type(cls) is not Global:
            self.findings.opaque_call(cls)
            return Instance(None, args)
        if cls.kind == "container":
            return cls.handler(self, cls, tuple(args))
        return Instance(cls, args)

    def build(self, target: Any, state: Any) -> None:
        """BUILD: pickle would call `target.__setstate__(state)` or update its `__dict__`."""
        kind = type(target)
        if kind is Instance:
            target.state = state
            self.findings.check_state(target, state)
        elif kind is Global:
            # BUILD on a class or module rewrites its attributes (monkey-patching), e.g. torch.load
            self.findings.patched(target)
        # tensors (parameter state), dicts (OrderedDict attributes), lists: nothing to keep

    def tensor(self, dtype: str, shape: Any, storage: StorageRef | None = None, offset: Any = 0,
               stride: Any = None) -> TensorRecord:
        """Register a tensor record after checking its fields; raises FormatError if malformed."""
        shape = _dims(shape, "size")
        stride = shape_strides(shape) if stride is None else _dims(stride, "stride")
        if len(stride) != len(shape):
            raise FormatError(f"a tensor has {len(shape)} dimensions but {len(stride)} strides")
        if type(offset) is not int or offset < 0:
            raise FormatError(f"a tensor has an invalid storage offset {offset!r}")
        record = TensorRecord(dtype, shape, storage, offset, stride)
        self.tensors.append(record)
        if len(self.tensors) > self.limits.max_tensors:
            raise LimitError(f"the file holds more than {self.limits.max_tensors:,} tensors")
        return record


def shape_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Contiguous strides of `shape` (in elements)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _dims(value: Any, what: str) -> tuple[int, ...]:
    if type(value) not in (tuple, list) or len(value) > 64:
        raise FormatError(f"a tensor has an invalid {what} {_short_repr(value)}")
    for dim in value:
        if type(dim) is not int or dim < 0:
            raise FormatError(f"a tensor has an invalid {what} {_short_repr(value)}")
    return tuple(value)


def _short_repr(value: Any) -> str:
    if type(value) in (tuple, list) and len(value) <= 8 and all(type(v) is int and abs(v) < 1 << 64 for v in value):
        return repr(value)
    return f"({type(value).__name__})"


# What a Python exception raised while interpreting a pickle means, in a user's words.
_PLAIN = (
    (IndexError, "an opcode takes more values than the stack holds"),
    (KeyError, "it refers to a memo entry it never stored"),
    (RecursionError, "it nests too deeply"),
    ((struct.error, OverflowError), "a number in it is out of range"),
    ((TypeError, ValueError, AttributeError), "an opcode is applied to a value of the wrong kind"),
)


def _describe(exc: BaseException) -> str:
    return next((text for kinds, text in _PLAIN if isinstance(exc, kinds)), "it cannot be interpreted")


def _opcode_name(op: int) -> str:
    import pickletools  # only on this error path

    opcode = pickletools.code2op.get(chr(op)) if op >= 0 else None
    return opcode.name if opcode is not None else f"opcode 0x{op:02x}"

"""Contract reverts, decoded in one place.

Each backend surfaces a custom-error revert its own way:

- eth-tester (py-evm) raises ``eth_tester.exceptions.TransactionFailed`` whose
  message is ``"execution reverted: b'\\x98\\x8d...'"``: the *Python repr* of
  the raw revert bytes (web3's eth-tester provider formats it so);
- anvil or any JSON-RPC node, through web3: ``ContractCustomError`` (a
  ``ContractLogicError``) with ``.data`` the ``0x`` hex of the revert bytes;
- ``Error(string)`` and ``Panic(uint256)`` are the compiler's built-in reverts.

:func:`decode_revert` takes any of these (or the bytes / hex themselves) and
maps the 4-byte selector to an error of *any* of our ABIs (chain/artifacts),
so ``revert.name`` is e.g. ``"StakeBelowMinimum"`` whatever the backend.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, cast

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_typing import ABIError
from eth_utils.abi import (
    abi_to_signature,
    function_signature_to_4byte_selector,
    get_abi_input_names,
    get_abi_input_types,
)
from eth_utils.address import to_checksum_address

from chain.abi import all_artifacts

TOKEN_DECIMALS = 18
TOKEN_SYMBOL = "LIVE"
# argument names that hold token amounts, shown in LIVE by str()
_AMOUNT_ARGS = frozenset({"amount", "stake", "min", "max", "requested", "available"})
_BUILTIN: dict[bytes, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    bytes.fromhex("08c379a0"): ("Error", ("string",), ("message",)),
    bytes.fromhex("4e487b71"): ("Panic", ("uint256",), ("code",)),
}
# a Python bytes repr: b'...' or b"...", with backslash escapes inside
_BYTES_LITERAL = re.compile(r"b'(?:[^'\\]|\\.)*'" "|" r'b"(?:[^"\\]|\\.)*"')
_HEX = re.compile(r"0x[0-9a-fA-F]{8,}")


class ChainRevert(Exception):
    """A decoded revert: ``name`` is the error's name, ``args_dict`` its arguments."""

    def __init__(self, name: str, args_dict: Mapping[str, Any], *, data: bytes = b"") -> None:
        super().__init__(name, dict(args_dict))
        self.name = name
        self.args_dict: dict[str, Any] = dict(args_dict)
        self.data = data

    @property
    def selector(self) -> bytes:
        return self.data[:4]

    def __str__(self) -> str:
        parts = ", ".join(f"{k}={_format_arg(k, v)}" for k, v in self.args_dict.items())
        return f"{self.name}({parts})"

    def __repr__(self) -> str:
        return f"ChainRevert({self.name!r}, {self.args_dict!r})"


def format_live(amount: int) -> str:
    """``100 LIVE``, ``0.5 LIVE``: an amount of token base units (18 decimals)."""
    whole = Decimal(amount).scaleb(-TOKEN_DECIMALS)
    text = format(whole.normalize(), "f") if amount else "0"
    return f"{text} {TOKEN_SYMBOL}"


def _format_arg(name: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and name in _AMOUNT_ARGS:
        return format_live(value)
    if isinstance(value, bytes):
        if len(value) == 32 and value.rstrip(b"\0").isascii():
            text = value.rstrip(b"\0").decode("ascii")
            if text.isprintable():
                return repr(text)
        return "0x" + value.hex()
    return repr(value) if isinstance(value, str) else str(value)


@functools.cache
def _error_table() -> dict[bytes, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """selector -> (name, types, names) over every error in every artifact."""
    table = dict(_BUILTIN)
    for artifact in all_artifacts():
        for element in artifact.abi:
            if element.get("type") != "error":
                continue
            entry = cast(ABIError, element)
            signature = abi_to_signature(entry)
            selector = function_signature_to_4byte_selector(signature)
            types = tuple(get_abi_input_types(entry))
            names = tuple(n or f"arg{i}" for i, n in enumerate(get_abi_input_names(entry)))
            # the same signature in two contracts is the same error (e.g. NotGovernance)
            table.setdefault(selector, (str(entry["name"]), types, names))
    return table


def error_names() -> frozenset[str]:
    """Every custom error name our contracts can revert with."""
    return frozenset(name for name, _, _ in _error_table().values()) - {"Error", "Panic"}


def decode_revert_data(data: bytes) -> ChainRevert | None:
    """The revert for raw revert bytes; None for an unknown selector or bad encoding."""
    entry = _error_table().get(bytes(data[:4]))
    if entry is None:
        return None
    name, types, names = entry
    try:
        values = abi_decode(list(types), bytes(data[4:]))
    except (DecodingError, OverflowError, ValueError):
        return None
    args = {
        n: to_checksum_address(v) if t == "address" else v
        for n, t, v in zip(names, types, values, strict=True)
    }
    return ChainRevert(name, args, data=bytes(data))


def _data_from_text(text: str) -> list[bytes]:
    found: list[bytes] = []
    for literal in _BYTES_LITERAL.finditer(text):
        try:
            value = ast.literal_eval(literal.group(0))
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, bytes):
            found.append(value)
    for hex_text in _HEX.findall(text):
        hexits = hex_text[2:]
        found.append(bytes.fromhex(hexits[: len(hexits) // 2 * 2]))
    return found


def _candidates(source: object, depth: int = 0) -> list[bytes]:
    """Every piece of revert data ``source`` may carry, most specific first."""
    if depth > 3:
        return []
    if isinstance(source, bytes | bytearray | memoryview):
        return [bytes(source)]
    if isinstance(source, str):
        return _data_from_text(source)
    if isinstance(source, BaseException):
        found: list[bytes] = []
        data = getattr(source, "data", None)  # web3 ContractLogicError / ContractCustomError
        if isinstance(data, str | bytes | bytearray):
            found += _candidates(data, depth + 1)
        for arg in source.args:
            found += _candidates(arg, depth + 1)
        if source.__cause__ is not None:
            found += _candidates(source.__cause__, depth + 1)
        return found
    return []


def decode_revert(source: BaseException | bytes | str) -> ChainRevert | None:
    """Decodes a revert from an exception of any backend, raw bytes, or hex text.

    A ``ChainRevert`` passes through unchanged. None when nothing in ``source``
    decodes as one of our errors (or ``Error``/``Panic``).
    """
    if isinstance(source, ChainRevert):
        return source
    for data in _candidates(source):
        revert = decode_revert_data(data)
        if revert is not None:
            return revert
    return None

"""The music layer's data contract from Python: signing actions, reading events.

Every user action is one ``EntityManager.manageEntity(userId, entityType,
entityId, action, metadata, nonce, signature)`` call (chain/contracts/
EntityManager.sol). The user's wallet signs EIP-712 typed data over all the
fields; anyone (a relay) submits it. The contract recovers the signer, refuses
a signature used before and emits ``ManageEntity``; every business rule is
the discovery indexer's (docs/discovery-rules.md).

- :func:`typed_data_digest` / :func:`sign_action` / :func:`recover_signer`:
  the EIP-712 digest (domain ``"Entity Manager"`` version ``"1"``, the chain
  id and the contract address; the struct type keeps Audius's ``uint``
  spelling, see the contract's notes) and a :class:`SignedAction`;
- :class:`EntityReader`: what the indexer reads (the head, block headers,
  decoded :class:`EntityAction` events of a block range), either through the
  node's :class:`~chain.access.ChainAccess` (embedded chain, tests) or
  straight over JSON-RPC with batched requests (:meth:`EntityReader.for_rpc`,
  the fast path for a real chain: one HTTP round trip per batch of headers).
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import httpx
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3

from chain.access import ChainAccess, ChainUnavailable
from chain.deploy import Deployment

MANAGE_ENTITY_INPUTS: Final = (
    "uint256",
    "string",
    "uint256",
    "string",
    "string",
    "bytes32",
    "bytes",
)
MANAGE_ENTITY_SELECTOR: Final = keccak(text=f"manageEntity({','.join(MANAGE_ENTITY_INPUTS)})")[:4]

NAME: Final = "Entity Manager"
VERSION: Final = "1"
MAX_METADATA: Final = 8192
MAX_NAME: Final = 32
MANAGE_ENTITY_TYPE: Final = (
    "ManageEntity(uint userId,string entityType,uint entityId,string action,"
    "string metadata,bytes32 nonce)"
)
DOMAIN_TYPE: Final = (
    "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
EVENT_SIGNATURE: Final = "ManageEntity(uint256,address,string,uint256,string,string)"
EVENT_TOPIC: Final = keccak(text=EVENT_SIGNATURE)
_SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
UINT256_MAX: Final = 2**256 - 1


def _check_uint(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= UINT256_MAX:
        raise ValueError(f"{name} must be an integer in [0, 2**256), not {value!r}")


def domain_separator(chain_id: int, contract: str) -> bytes:
    return keccak(
        abi_encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                keccak(text=DOMAIN_TYPE),
                keccak(text=NAME),
                keccak(text=VERSION),
                chain_id,
                to_checksum_address(contract),
            ],
        )
    )


def typed_data_digest(
    *,
    chain_id: int,
    contract: str,
    user_id: int,
    entity_type: str,
    entity_id: int,
    action: str,
    metadata: str,
    nonce: bytes,
) -> bytes:
    """The 32-byte EIP-712 digest the wallet signs (equal to the contract's ``digestOf``)."""
    _check_uint("user id", user_id)
    _check_uint("entity id", entity_id)
    if len(nonce) != 32:
        raise ValueError("nonce must be 32 bytes")
    struct_hash = keccak(
        abi_encode(
            ["bytes32", "uint256", "bytes32", "uint256", "bytes32", "bytes32", "bytes32"],
            [
                keccak(text=MANAGE_ENTITY_TYPE),
                user_id,
                keccak(text=entity_type),
                entity_id,
                keccak(text=action),
                keccak(text=metadata),
                nonce,
            ],
        )
    )
    return keccak(b"\x19\x01" + domain_separator(chain_id, contract) + struct_hash)


@dataclass(frozen=True, slots=True)
class SignedAction:
    """One action with its signature: the arguments of ``manageEntity``."""

    chain_id: int
    contract: str
    user_id: int
    entity_type: str
    entity_id: int
    action: str
    metadata: str
    nonce: bytes  # 32 bytes
    signature: bytes  # 65 bytes r || s || v, v in {27, 28}

    def digest(self) -> bytes:
        return typed_data_digest(
            chain_id=self.chain_id,
            contract=self.contract,
            user_id=self.user_id,
            entity_type=self.entity_type,
            entity_id=self.entity_id,
            action=self.action,
            metadata=self.metadata,
            nonce=self.nonce,
        )

    def call_args(self) -> tuple[int, str, int, str, str, bytes, bytes]:
        """The positional arguments of ``manageEntity``."""
        return (
            self.user_id,
            self.entity_type,
            self.entity_id,
            self.action,
            self.metadata,
            self.nonce,
            self.signature,
        )

    def calldata(self) -> bytes:
        """The transaction input of this ``manageEntity`` call (what a relay is sent)."""
        args = abi_encode(list(MANAGE_ENTITY_INPUTS), list(self.call_args()))
        return MANAGE_ENTITY_SELECTOR + args


def sign_action(
    private_key: bytes | str,
    *,
    chain_id: int,
    contract: str,
    user_id: int,
    entity_type: str,
    entity_id: int,
    action: str,
    metadata: str = "",
    nonce: bytes | None = None,
) -> SignedAction:
    """Signs the action by ``private_key`` (a fresh random nonce unless given)."""
    unsigned = SignedAction(
        chain_id=chain_id,
        contract=to_checksum_address(contract),
        user_id=user_id,
        entity_type=entity_type,
        entity_id=entity_id,
        action=action,
        metadata=metadata,
        nonce=secrets.token_bytes(32) if nonce is None else nonce,
        signature=b"",
    )
    signed = Account.unsafe_sign_hash(unsigned.digest(), private_key)
    return dataclasses.replace(unsigned, signature=bytes(signed.signature))


def recover_signer(signed: SignedAction) -> str | None:
    """The wallet (0x, lowercase) the contract would see as signer, or None
    where the contract reverts ``InvalidSignature`` (wrong length, bad v,
    high s, unrecoverable)."""
    sig = signed.signature
    if len(sig) != 65 or sig[64] not in (27, 28):
        return None
    if int.from_bytes(sig[32:64], "big") > _SECP256K1_N // 2:
        return None
    try:
        address = Account._recover_hash(signed.digest(), signature=sig)
    except Exception:  # eth_keys raises several types for an unrecoverable r/s
        return None
    return str(address).lower()


# --- reading ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    number: int
    hash: bytes
    parent_hash: bytes
    timestamp: int


@dataclass(frozen=True, slots=True)
class EntityAction:
    """One decoded ``ManageEntity`` event."""

    block_number: int
    block_hash: bytes
    log_index: int
    tx_hash: bytes
    user_id: int
    signer: str  # 0x lowercase
    entity_type: str
    entity_id: int
    action: str
    metadata: str


def _hexbytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value.startswith("0x"):
        return bytes.fromhex(value[2:])
    raise ValueError(f"not hex bytes: {value!r}")


def _int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.startswith("0x"):
        return int(value, 16)
    raise ValueError(f"not a quantity: {value!r}")


def _string_at(data: bytes, head: int) -> str:
    offset = int.from_bytes(data[head : head + 32], "big")
    if offset % 32 or not 128 <= offset <= len(data) - 32:
        raise ValueError(f"string offset {offset} out of the data")
    length = int.from_bytes(data[offset : offset + 32], "big")
    end = offset + 32 + length
    if end > len(data):
        raise ValueError(f"string of {length} bytes past the data's end")
    # Solidity does not check that a string is UTF-8: a bad byte becomes
    # U+FFFD (the same on every node), never an error that stalls indexing
    return data[offset + 32 : end].decode("utf-8", errors="replace")


def decode_event_data(data: bytes) -> tuple[str, int, str, str]:
    """``abi.encode(string entityType, uint256 entityId, string metadata,
    string action)``: the event's data (eth-abi's decoder, by hand: it is
    the indexer's hottest path, and 20x faster so)."""
    if len(data) < 128 or len(data) % 32:
        raise ValueError(f"event data of {len(data)} bytes")
    return (
        _string_at(data, 0),
        int.from_bytes(data[32:64], "big"),
        _string_at(data, 64),
        _string_at(data, 96),
    )


def decode_log(raw: Any) -> EntityAction:
    """A ``ManageEntity`` log (web3's dict or raw JSON-RPC) as an EntityAction.

    Raises ChainUnavailable for a log that is not one (an RPC answering nonsense)."""
    try:
        topics = [_hexbytes(t) for t in raw["topics"]]
        if len(topics) != 3 or topics[0] != EVENT_TOPIC:
            raise ValueError("not a ManageEntity log")
        entity_type, entity_id, metadata, action = decode_event_data(_hexbytes(raw["data"]))
        return EntityAction(
            block_number=_int(raw["blockNumber"]),
            block_hash=_hexbytes(raw["blockHash"]),
            log_index=_int(raw["logIndex"]),
            tx_hash=_hexbytes(raw["transactionHash"]),
            user_id=int.from_bytes(topics[1], "big"),
            signer="0x" + topics[2][12:].hex(),
            entity_type=str(entity_type),
            entity_id=int(entity_id),
            action=str(action),
            metadata=str(metadata),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ChainUnavailable(f"malformed ManageEntity log from the RPC: {exc}") from None


def _header(raw: Any) -> Header:
    try:
        return Header(
            number=_int(raw["number"]),
            hash=_hexbytes(raw["hash"]),
            parent_hash=_hexbytes(raw["parentHash"]),
            timestamp=_int(raw["timestamp"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ChainUnavailable(f"malformed block header from the RPC: {exc}") from None


class EntityReader(abc.ABC):
    """The indexer's view of the chain (discovery.indexer.ChainSource)."""

    @abc.abstractmethod
    async def head(self) -> int: ...

    @abc.abstractmethod
    async def headers(self, numbers: Sequence[int]) -> dict[int, Header]:
        """The headers of ``numbers`` that exist (a missing one is left out)."""

    @abc.abstractmethod
    async def actions(self, from_block: int, to_block: int) -> list[EntityAction]:
        """The range's events, in chain order."""

    @staticmethod
    def for_access(access: ChainAccess, deployment: Deployment) -> EntityReader:
        return AccessReader(access, deployment)

    @staticmethod
    def for_rpc(url: str, deployment: Deployment, *, timeout: float = 10.0) -> EntityReader:
        return RpcReader(url, deployment, timeout=timeout)


def _contract_of(deployment: Deployment) -> str:
    if deployment.entity_manager is None:
        raise ValueError("the deployment names no EntityManager contract")
    return deployment.entity_manager


class AccessReader(EntityReader):
    """Reads through the node's one web3 (the embedded chain and the tests)."""

    def __init__(self, access: ChainAccess, deployment: Deployment) -> None:
        self.access = access
        self.contract = _contract_of(deployment)

    async def head(self) -> int:
        return await self.access.run(lambda w3: int(w3.eth.block_number))

    async def headers(self, numbers: Sequence[int]) -> dict[int, Header]:
        wanted = sorted(set(numbers))

        def read(w3: Web3) -> dict[int, Header]:
            found: dict[int, Header] = {}
            for n in wanted:
                try:
                    block = w3.eth.get_block(n)
                except Exception as exc:  # BlockNotFound: past the head after a reorg
                    if type(exc).__name__ == "BlockNotFound":
                        continue
                    raise
                found[n] = _header(block)
            return found

        return await self.access.run(read)

    async def actions(self, from_block: int, to_block: int) -> list[EntityAction]:
        flt: Any = {
            "address": self.contract,
            "fromBlock": from_block,
            "toBlock": to_block,
            "topics": ["0x" + EVENT_TOPIC.hex()],
        }
        logs = await self.access.run(lambda w3: w3.eth.get_logs(flt))
        return sorted(
            (decode_log(raw) for raw in logs), key=lambda a: (a.block_number, a.log_index)
        )


class RpcReader(EntityReader):
    """Reads straight over JSON-RPC with httpx: headers in one batched request."""

    MAX_BATCH: Final = 500

    def __init__(self, url: str, deployment: Deployment, *, timeout: float = 10.0) -> None:
        self.url = url
        self.contract = _contract_of(deployment).lower()
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._ids = itertools.count(1)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout)
        return self._client

    async def _post(self, body: Any) -> Any:
        try:
            response = await self._http().post(self.url, json=body)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ChainUnavailable(f"chain RPC {self.url} failed: {exc}") from None

    def _request(self, method: str, params: list[Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}

    @staticmethod
    def _result(reply: Any) -> Any:
        if not isinstance(reply, dict):
            raise ChainUnavailable(f"chain RPC answered {type(reply).__name__}, not an object")
        if reply.get("error") is not None:
            raise ChainUnavailable(f"chain RPC error: {reply['error']}")
        if "result" not in reply:
            raise ChainUnavailable("chain RPC reply without a result")
        return reply["result"]

    async def _call(self, method: str, params: list[Any]) -> Any:
        return self._result(await self._post(self._request(method, params)))

    async def head(self) -> int:
        try:
            return _int(await self._call("eth_blockNumber", []))
        except ValueError as exc:
            raise ChainUnavailable(f"chain RPC: bad block number: {exc}") from None

    async def headers(self, numbers: Sequence[int]) -> dict[int, Header]:
        wanted = sorted(set(numbers))
        found: dict[int, Header] = {}
        for start in range(0, len(wanted), self.MAX_BATCH):
            batch = [
                self._request("eth_getBlockByNumber", [hex(n), False])
                for n in wanted[start : start + self.MAX_BATCH]
            ]
            replies = await self._post(batch)
            if not isinstance(replies, list) or len(replies) != len(batch):
                raise ChainUnavailable("chain RPC answered a batch with the wrong shape")
            for reply in replies:
                block = self._result(reply)
                if block is not None:  # past the head (a reorg shortened the chain)
                    header = _header(block)
                    found[header.number] = header
        return found

    async def actions(self, from_block: int, to_block: int) -> list[EntityAction]:
        logs = await self._call(
            "eth_getLogs",
            [
                {
                    "address": self.contract,
                    "fromBlock": hex(from_block),
                    "toBlock": hex(to_block),
                    "topics": ["0x" + EVENT_TOPIC.hex()],
                }
            ],
        )
        if not isinstance(logs, list):
            raise ChainUnavailable("chain RPC answered eth_getLogs with a non-list")
        actions = [decode_log(raw) for raw in logs if not raw.get("removed")]
        return sorted(actions, key=lambda a: (a.block_number, a.log_index))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

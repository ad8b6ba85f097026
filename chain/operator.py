"""What a node operator does on chain: stake, register, leave, delegate.

A sync library (web3 is sync here) under the ``coliving operator`` and
``coliving chain`` commands. Two accounts are involved:

- the *wallet* (the provider's owner): holds the tokens and the ETH for gas,
  signs every transaction. It comes from a keystore file (password from
  ``COLIVING_KEYSTORE_PASSWORD`` or a prompt) or from the hex key in
  ``COLIVING_OPERATOR_KEY`` (:func:`load_wallet`); it is never printed;
- the *delegate*: the Ethereum address of the node's secp256k1 key, which
  signs its consent to be registered by that wallet (chain.deploy.sign_registration).

Every failure a user can act on is an :class:`OperatorError` with one
sentence: an unreachable RPC, a deployment for another chain, a missing
contract, a bad wallet, and each custom error the contracts revert with
(:data:`ERROR_MESSAGES`). Transactions are simulated (``eth_call``) before
they are sent, so a rejected one costs no gas, and ``register`` fails before
it spends an ``approve``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.address import is_address, to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3Exception, Web3RPCError

from chain.deploy import (
    DEFAULT_SERVICE_TYPES,
    Contracts,
    Deployment,
    DeploymentError,
    Sender,
    bind,
    deploy_all,
    service_type_id,
    service_type_name,
    sign_registration,
)
from chain.errors import TOKEN_DECIMALS, ChainRevert, decode_revert, format_live

KEYSTORE_PASSWORD_ENV = "COLIVING_KEYSTORE_PASSWORD"
OPERATOR_KEY_ENV = "COLIVING_OPERATOR_KEY"
RPC_TIMEOUT = 10.0
RECEIPT_TIMEOUT = 120.0
GAS_MARGIN = 20_000
T = TypeVar("T")
# register, increase, delegate: simulated before their approve
_ALLOWANCE = frozenset({"ERC20InsufficientAllowance"})
_AMOUNT = re.compile(r"(\d+)(?:\.(\d+))?")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


class OperatorError(Exception):
    """A failure the operator can act on; ``str()`` is one sentence, no secrets."""


# -- amounts -------------------------------------------------------------------


def parse_amount(text: str) -> int:
    """``"1.5"`` tokens -> base units (18 decimals; ``_`` and a trailing ``LIVE`` allowed)."""
    cleaned = text.strip().removesuffix("LIVE").strip().replace("_", "")
    if cleaned.startswith("-"):
        raise ValueError(f"amount must not be negative: {text!r}")
    match = _AMOUNT.fullmatch(cleaned)
    if match is None:
        raise ValueError(f"not an amount of tokens: {text!r} (write e.g. 200000 or 1.5)")
    whole, fraction = match.group(1), match.group(2) or ""
    if len(fraction) > TOKEN_DECIMALS:
        raise ValueError(f"too many decimals in {text!r}: the token has {TOKEN_DECIMALS}")
    units: int = int(whole) * 10**TOKEN_DECIMALS + int(fraction.ljust(TOKEN_DECIMALS, "0") or "0")
    return units


def parse_eth(text: str) -> int:
    """An amount of ether (18 decimals too) -> wei."""
    return parse_amount(text.strip().removesuffix("ETH").strip())


def format_amount(amount: int) -> str:
    """Base units -> ``"1.5 LIVE"``."""
    return format_live(amount)


# -- the wallet ----------------------------------------------------------------


def load_wallet(
    keystore: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    prompt: Callable[[str], str] | None = None,
) -> LocalAccount:
    """The owner wallet: a keystore file, else the hex key in ``COLIVING_OPERATOR_KEY``.

    A keystore's password comes from ``COLIVING_KEYSTORE_PASSWORD`` or, if unset,
    from ``prompt`` (called with a question). Errors never contain the key or password.
    """
    environ = os.environ if env is None else env
    if keystore is not None:
        return _from_keystore(keystore, environ, prompt)
    raw = environ.get(OPERATOR_KEY_ENV, "").strip()
    if raw:
        hexits = raw.removeprefix("0x")
        if len(hexits) != 64 or not all(c in "0123456789abcdefABCDEF" for c in hexits):
            raise OperatorError(f"{OPERATOR_KEY_ENV} is not a 32-byte hex private key")
        try:
            account: LocalAccount = Account.from_key(bytes.fromhex(hexits))
            return account
        except (ValueError, TypeError):
            raise OperatorError(f"{OPERATOR_KEY_ENV} is not a valid secp256k1 key") from None
    raise OperatorError(
        f"no wallet: pass --keystore FILE (password from {KEYSTORE_PASSWORD_ENV} or a prompt) "
        f"or set {OPERATOR_KEY_ENV} to the wallet's hex private key"
    )


def wallet_configured(keystore: Path | None, *, env: Mapping[str, str] | None = None) -> bool:
    environ = os.environ if env is None else env
    return keystore is not None or bool(environ.get(OPERATOR_KEY_ENV, "").strip())


def _from_keystore(
    path: Path, environ: Mapping[str, str], prompt: Callable[[str], str] | None
) -> LocalAccount:
    try:
        keyfile = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OperatorError(f"keystore {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OperatorError(f"cannot read keystore {path}: {exc}") from None
    except ValueError:
        raise OperatorError(f"keystore {path} is not JSON") from None
    if not isinstance(keyfile, dict) or not ("crypto" in keyfile or "Crypto" in keyfile):
        raise OperatorError(f"{path} is not an Ethereum keystore (no 'crypto' section)")
    password = environ.get(KEYSTORE_PASSWORD_ENV)
    if password is None:
        if prompt is None:
            raise OperatorError(f"keystore {path} needs a password: set {KEYSTORE_PASSWORD_ENV}")
        password = prompt(f"password for {path}")
    try:
        secret = Account.decrypt(keyfile, password)
    except ValueError as exc:
        reason = "wrong password" if "MAC" in str(exc) else "cannot decrypt it"
        raise OperatorError(f"keystore {path}: {reason}") from None
    except (KeyError, TypeError):
        raise OperatorError(f"keystore {path} is malformed") from None
    account: LocalAccount = Account.from_key(secret)
    return account


def _sender_address(sender: Sender) -> ChecksumAddress:
    return sender.address if isinstance(sender, LocalAccount) else to_checksum_address(sender)


def checked_address(text: str, what: str = "address") -> ChecksumAddress:
    """An Ethereum address from user input, or ``OperatorError``."""
    if not is_address(text.strip()):
        raise OperatorError(f"not an Ethereum {what}: {text!r}")
    return to_checksum_address(text.strip())


# -- revert messages -----------------------------------------------------------


def _t(value: Any) -> str:
    return format_live(int(value))


def _type(value: Any) -> str:
    return repr(service_type_name(bytes(value)))


ERROR_MESSAGES: Mapping[str, Callable[[Mapping[str, Any]], str]] = {
    "NotGovernance": lambda a: f"{a['caller']} is not governance: only governance may do this",
    "ZeroAddress": lambda a: "an address is the zero address",
    "ZeroAmount": lambda a: "the amount must be more than zero (and buy at least one share)",
    "UnknownServiceType": lambda a: f"unknown service type {_type(a['serviceType'])}",
    "StakeBelowMinimum": lambda a: (
        f"the stake would be {_t(a['stake'])}, below the service type's minimum of {_t(a['min'])}"
    ),
    "StakeAboveMaximum": lambda a: (
        f"the total stake would be {_t(a['stake'])}, "
        f"above the service type's maximum of {_t(a['max'])}"
    ),
    "AlreadyRegistered": lambda a: f"the node {a['delegate']} is already registered",
    "WithdrawalPending": lambda a: (
        f"the node {a['delegate']} was deregistered and its stake is not withdrawn yet: "
        "withdraw first"
    ),
    "NotRegistered": lambda a: f"the node {a['delegate']} is not registered",
    "StillActive": lambda a: (
        f"the node {a['delegate']} is still registered: deregister first, "
        "then withdraw after the lockup"
    ),
    "NotOwner": lambda a: f"the wallet {a['caller']} is not the owner of this node",
    "BadDelegateSignature": lambda a: (
        "the node's signature does not match the delegate address "
        "(signed by another key, for another owner wallet, chain or registry)"
    ),
    "TooManyMultiaddrs": lambda a: f"{a['count']} multiaddrs given, at most {a['max']} allowed",
    "EmptyMultiaddr": lambda a: f"multiaddr #{int(a['index']) + 1} is empty",
    "MultiaddrTooLong": lambda a: (
        f"multiaddr #{int(a['index']) + 1} is {a['length']} bytes long, at most {a['max']}"
    ),
    "LockupNotOver": lambda a: f"the lockup is not over: it ends at block {a['unlockBlock']}",
    "LockupTooLong": lambda a: f"a lockup of {a['blocks']} blocks is over the limit {a['max']}",
    "NoPendingRequest": lambda a: "there is no pending request to finish or cancel",
    "RequestAlreadyPending": lambda a: (
        "a request is already pending: finish it after its lockup, or cancel it"
    ),
    "InsufficientStake": lambda a: (
        f"requested {_t(a['requested'])} but only {_t(a['available'])} is staked"
    ),
    "InsufficientDelegation": lambda a: (
        f"requested {_t(a['requested'])} but the delegation is worth {_t(a['available'])}"
    ),
    "EmptyServiceType": lambda a: "the service type name is empty",
    "ServiceTypeExists": lambda a: f"service type {_type(a['serviceType'])} already exists",
    "InvalidStakeBounds": lambda a: (
        f"invalid stake bounds: minimum {_t(a['min'])}, maximum {_t(a['max'])}"
    ),
    "ERC20InsufficientBalance": lambda a: (
        f"the wallet {a['sender']} holds {_t(a['balance'])}, needs {_t(a['needed'])}"
    ),
    "ERC20InsufficientAllowance": lambda a: (
        f"the registry may spend {_t(a['allowance'])} of the wallet's tokens, "
        f"needs {_t(a['needed'])}"
    ),
    "ERC20InvalidApprover": lambda a: f"invalid token approver {a['approver']}",
    "ERC20InvalidReceiver": lambda a: f"invalid token receiver {a['receiver']}",
    "ERC20InvalidSender": lambda a: f"invalid token sender {a['sender']}",
    "ERC20InvalidSpender": lambda a: f"invalid token spender {a['spender']}",
    "SafeERC20FailedOperation": lambda a: f"the token {a['token']} refused the transfer",
    "InvalidSignature": lambda a: "the action's signature is malformed (length, v or a high s)",
    "NonceAlreadyUsed": lambda a: "this signed action was submitted before (its nonce is used)",
    "MetadataTooLarge": lambda a: f"metadata of {a['length']} bytes is over {a['limit']}",
    "EntityTypeTooLong": lambda a: f"an entity type of {a['length']} bytes is over {a['limit']}",
    "ActionTooLong": lambda a: f"an action of {a['length']} bytes is over {a['limit']}",
    "Error": lambda a: f"reverted: {a['message']}",
    "Panic": lambda a: f"the contract panicked (code {int(a['code']):#x})",
}


def explain_revert(revert: ChainRevert) -> str:
    """One sentence for a decoded revert; unknown errors show their name and arguments."""
    message = ERROR_MESSAGES.get(revert.name)
    if message is None:
        return f"the contract rejected it: {revert}"
    try:
        return message(revert.args_dict)
    except (KeyError, TypeError, ValueError):
        return f"the contract rejected it: {revert}"


# -- connecting ----------------------------------------------------------------


def _short_reason(exc: BaseException) -> str:
    text = str(exc)
    errno = _ERRNO.search(text)
    if errno:
        return errno.group(1).strip().lower()
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def open_rpc(url: str, *, timeout: float = RPC_TIMEOUT) -> Web3:
    """A Web3 on a JSON-RPC URL that has answered ``eth_chainId``."""
    if not url.startswith(("http://", "https://")):
        raise OperatorError(f"the chain RPC must be an http(s) URL, not {url!r}")
    w3 = Web3(
        Web3.HTTPProvider(
            url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
        )
    )
    try:
        w3.eth.chain_id  # noqa: B018 - the reachability probe
    except (requests.RequestException, OSError) as exc:
        raise OperatorError(f"cannot reach chain RPC at {url}: {_short_reason(exc)}") from None
    except (Web3Exception, ValueError) as exc:
        raise OperatorError(f"{url} is not an Ethereum JSON-RPC endpoint: {exc}") from None
    return w3


def load_deployment(path: Path) -> Deployment:
    try:
        return Deployment.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OperatorError(
            f"deployment file {path} not found (`coliving chain deploy --out {path}` writes one)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OperatorError(f"cannot read deployment file {path}: {exc}") from None
    except ValueError as exc:
        raise OperatorError(f"{path}: {exc}") from None


def write_deployment(deployment: Deployment, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(deployment.to_json(), encoding="utf-8")
    tmp.replace(path)


@dataclass(frozen=True)
class Chain:
    """A checked connection: web3, the deployment, its contracts bound."""

    w3: Web3
    deployment: Deployment
    contracts: Contracts
    url: str = "embedded"


def check_deployment(
    w3: Web3,
    deployment: Deployment,
    *,
    url: str = "embedded",
    expected_chain_id: int | None = None,
    source: str = "deployment",
) -> Chain:
    """Checks that ``deployment`` is for the chain ``w3`` talks to and its contracts exist."""
    try:
        chain_id = w3.eth.chain_id
        if expected_chain_id is not None and expected_chain_id != chain_id:
            raise OperatorError(
                f"expected chain {expected_chain_id}, RPC {url} is chain {chain_id}"
            )
        if deployment.chain_id != chain_id:
            raise OperatorError(
                f"{source} is for chain {deployment.chain_id}, RPC {url} is chain {chain_id}"
            )
        for name, address in (
            ("token", deployment.token),
            ("service type manager", deployment.service_types),
            ("registry", deployment.registry),
        ):
            if len(w3.eth.get_code(address)) == 0:
                raise OperatorError(
                    f"no {name} contract at {address} on chain {chain_id}: "
                    f"is {source} from an older run of this chain?"
                )
        contracts = bind(w3, deployment)
        registry = contracts.registry.functions
        if (
            registry.token().call() != deployment.token
            or registry.serviceTypeManager().call() != deployment.service_types
        ):
            raise OperatorError(f"{source}: the registry does not use its token and type manager")
    except (requests.RequestException, OSError) as exc:
        raise OperatorError(f"cannot reach chain RPC at {url}: {_short_reason(exc)}") from None
    except (ContractLogicError, Web3RPCError) as exc:
        raise OperatorError(f"{source}: the registry does not answer as ours: {exc}") from None
    return Chain(w3, deployment, contracts, url)


def connect_rpc(url: str, deployment_path: Path, expected_chain_id: int | None = None) -> Chain:
    """Connects to ``url`` and checks the deployment file against the chain."""
    deployment = load_deployment(deployment_path)
    w3 = open_rpc(url)
    return check_deployment(
        w3, deployment, url=url, expected_chain_id=expected_chain_id, source=str(deployment_path)
    )


def first_unlocked_account(w3: Web3, url: str = "embedded") -> ChecksumAddress:
    try:
        accounts = list(w3.eth.accounts)
    except (Web3Exception, ValueError):
        accounts = []
    if not accounts:
        raise OperatorError(
            f"the chain at {url} has no unlocked account: pass --keystore or set {OPERATOR_KEY_ENV}"
        )
    return to_checksum_address(accounts[0])


def deploy(
    w3: Web3,
    deployer: Sender | None = None,
    *,
    url: str = "embedded",
    service_types: Mapping[str, tuple[int, int]] = DEFAULT_SERVICE_TYPES,
    decrease_lockup_blocks: int = 10,
    undelegate_lockup_blocks: int = 10,
) -> Deployment:
    """Deploys the contracts (the whole token supply to the deployer).

    ``deployer`` defaults to the chain's first unlocked account (anvil, eth-tester).
    """
    sender = deployer if deployer is not None else first_unlocked_account(w3, url)
    try:
        return deploy_all(
            w3,
            deployer=sender,
            service_types=service_types,
            decrease_lockup_blocks=decrease_lockup_blocks,
            undelegate_lockup_blocks=undelegate_lockup_blocks,
        )
    except Exception as exc:
        raise _translate(exc, "deploy", url) from None


def _translate(exc: Exception, what: str, url: str) -> Exception:
    """The OperatorError for ``exc``, or ``exc`` itself if it is a bug, not a chain answer."""
    if isinstance(exc, OperatorError):
        return exc
    revert = decode_revert(exc)
    if revert is not None:
        return OperatorError(f"{what}: {explain_revert(revert)}")
    if isinstance(exc, requests.RequestException | ConnectionError):
        return OperatorError(f"cannot reach chain RPC at {url}: {_short_reason(exc)}")
    text = str(exc)
    if "insufficient funds" in text.lower() or "cannot afford txn gas" in text:
        return OperatorError(f"{what}: the wallet has too little ETH to pay for gas")
    if isinstance(exc, DeploymentError | TimeExhausted):
        return OperatorError(f"{what}: {text}")
    if isinstance(exc, ContractLogicError | Web3RPCError) or type(exc).__name__ in (
        "TransactionFailed",  # eth-tester, a revert without data
    ):
        return OperatorError(f"{what}: the chain rejected it: {text.splitlines()[0][:300]}")
    return exc


# -- status ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderStatus:
    """A provider as the chain has it now (all amounts in token base units)."""

    delegate: ChecksumAddress
    owner: ChecksumAddress | None  # None: never registered, or withdrawn
    service_type: str
    type_exists: bool
    own_stake: int
    delegated_stake: int
    min_stake: int
    max_stake: int
    pending_decrease: int
    unlock_block: int
    current_block: int
    active: bool
    multiaddrs: tuple[str, ...]
    decrease_lockup_blocks: int

    @property
    def registered(self) -> bool:
        return self.owner is not None

    @property
    def total_stake(self) -> int:
        return self.own_stake + self.delegated_stake

    @property
    def accepted(self) -> bool:
        """What peers check (chain.stake): active, of a known type, total >= the minimum."""
        return self.active and self.type_exists and self.total_stake >= self.min_stake

    @property
    def lockup_over(self) -> bool:
        return self.current_block >= self.unlock_block

    @property
    def state(self) -> str:
        if self.owner is None:
            return "not registered"
        if not self.active:
            return "deregistered (stake waiting for withdraw)"
        return "registered"


@dataclass(frozen=True)
class DelegationStatus:
    """One delegator's stake with one provider."""

    delegator: ChecksumAddress
    delegate: ChecksumAddress
    amount: int  # what the shares are worth now, pending ones included
    pending: int
    unlock_block: int
    current_block: int


@dataclass(frozen=True)
class TxResult:
    """A mined transaction and what it did."""

    tx_hash: str
    block: int
    amount: int = 0
    unlock_block: int = 0


# -- operations --------------------------------------------------------------------


class Operator:
    """The owner wallet acting on one deployment."""

    def __init__(self, chain: Chain, wallet: Sender) -> None:
        self.chain = chain
        self.w3 = chain.w3
        self.wallet = wallet
        self.address = _sender_address(wallet)
        self._registry = chain.contracts.registry
        self._token = chain.contracts.token
        self._types = chain.contracts.service_types

    def __repr__(self) -> str:  # never the key
        return f"Operator(wallet={self.address}, registry={self._registry.address})"

    # -- reading

    def head(self) -> int:
        return int(self._read(lambda: self.w3.eth.block_number))

    def token_balance(self, who: str | None = None) -> int:
        owner = self.address if who is None else checked_address(who)
        return int(self._read(lambda: self._token.functions.balanceOf(owner).call()))

    def eth_balance(self, who: str | None = None) -> int:
        owner = self.address if who is None else checked_address(who)
        return int(self._read(lambda: self.w3.eth.get_balance(owner)))

    def service_types(self) -> dict[str, tuple[int, int]]:
        """Every known service type: name -> (min, max)."""

        def read() -> dict[str, tuple[int, int]]:
            out: dict[str, tuple[int, int]] = {}
            for type_id in self._types.functions.serviceTypes().call():
                _exists, low, high = self._types.functions.getServiceType(type_id).call()
                out[service_type_name(type_id)] = (int(low), int(high))
            return out

        return dict(self._read(read))

    def status(self, delegate: str) -> ProviderStatus:
        address = checked_address(delegate, "delegate address")

        def read() -> ProviderStatus:
            owner, type_id, own, delegated, active, addrs = self._registry.functions.getProvider(
                address
            ).call()
            exists, low, high = self._types.functions.getServiceType(type_id).call()
            pending, unlock = self._registry.functions.pendingDecrease(address).call()
            return ProviderStatus(
                delegate=address,
                owner=None if int(owner, 16) == 0 else to_checksum_address(owner),
                service_type=service_type_name(type_id),
                type_exists=bool(exists),
                own_stake=int(own),
                delegated_stake=int(delegated),
                min_stake=int(low),
                max_stake=int(high),
                pending_decrease=int(pending),
                unlock_block=int(unlock),
                current_block=int(self.w3.eth.block_number),
                active=bool(active),
                multiaddrs=tuple(str(a) for a in addrs),
                decrease_lockup_blocks=int(self._registry.functions.decreaseLockupBlocks().call()),
            )

        return self._read(read)

    def delegation(self, delegate: str, delegator: str | None = None) -> DelegationStatus:
        provider = checked_address(delegate, "delegate address")
        who = self.address if delegator is None else checked_address(delegator)

        def read() -> DelegationStatus:
            amount = self._registry.functions.delegationOf(who, provider).call()
            pending, unlock = self._registry.functions.pendingUndelegation(who, provider).call()
            return DelegationStatus(
                who, provider, int(amount), int(pending), int(unlock), int(self.w3.eth.block_number)
            )

        return self._read(read)

    # -- the provider's life

    def register(
        self,
        service_type: str,
        stake: int,
        multiaddrs: Sequence[str] = (),
        *,
        node_key: bytes | None = None,
        delegate: str | None = None,
        signature: bytes | None = None,
    ) -> TxResult:
        """Approves ``stake`` and registers the node as a provider of ``service_type``.

        Pass the node's key (it signs its consent here), or the ``delegate``
        address with the ``signature`` its key made (see :func:`consent_signature`).
        """
        type_id = self._known_type(service_type)
        if node_key is not None:
            address = to_checksum_address(Account.from_key(node_key).address)
        elif delegate is not None:
            address = checked_address(delegate, "delegate address")
        else:
            raise OperatorError("register needs the node key or the delegate address")
        if signature is None:
            if node_key is None:
                raise OperatorError("register needs the node key or the node's signature")
            signature = consent_signature(node_key, self.chain.deployment, self.address)
        self._check_balance(stake, "register")
        call = self._registry.functions.register(
            type_id, address, list(multiaddrs), stake, signature
        )
        # every other check comes before the token transfer: fail before spending an approve
        self._simulate(call, "register", allowed=_ALLOWANCE)
        self._approve(stake, "register")
        return self._send(call, "register", amount=stake)

    def update_multiaddrs(self, delegate: str, multiaddrs: Sequence[str]) -> TxResult:
        address = checked_address(delegate, "delegate address")
        call = self._registry.functions.updateMultiaddrs(address, list(multiaddrs))
        return self._send(call, "update multiaddrs")

    def increase(self, delegate: str, amount: int) -> TxResult:
        address = checked_address(delegate, "delegate address")
        self._check_balance(amount, "increase stake")
        call = self._registry.functions.increaseStake(address, amount)
        self._simulate(call, "increase stake", allowed=_ALLOWANCE)
        self._approve(amount, "increase stake")
        return self._send(call, "increase stake", amount=amount)

    def request_decrease(self, delegate: str, amount: int) -> TxResult:
        """Starts a decrease; the result's ``unlock_block`` is when it can be finished."""
        address = checked_address(delegate, "delegate address")
        result = self._send(
            self._registry.functions.requestDecreaseStake(address, amount),
            "request decrease",
            amount=amount,
        )
        _pending, unlock = self._read(
            lambda: self._registry.functions.pendingDecrease(address).call()
        )
        return TxResult(result.tx_hash, result.block, amount, int(unlock))

    def decrease(self, delegate: str) -> TxResult:
        """Finishes the pending decrease after its lockup: the tokens go back to the owner."""
        address = checked_address(delegate, "delegate address")
        pending, _unlock = self._read(
            lambda: self._registry.functions.pendingDecrease(address).call()
        )
        return self._send(
            self._registry.functions.decreaseStake(address), "finish decrease", amount=int(pending)
        )

    def cancel_decrease(self, delegate: str) -> TxResult:
        address = checked_address(delegate, "delegate address")
        return self._send(self._registry.functions.cancelDecreaseStake(address), "cancel decrease")

    def deregister(self, delegate: str) -> TxResult:
        """Stops counting at once; the own stake can be withdrawn after ``unlock_block``."""
        address = checked_address(delegate, "delegate address")
        result = self._send(self._registry.functions.deregister(address), "deregister")
        pending, unlock = self._read(
            lambda: self._registry.functions.pendingDecrease(address).call()
        )
        return TxResult(result.tx_hash, result.block, int(pending), int(unlock))

    def withdraw(self, delegate: str) -> TxResult:
        """After deregistration and its lockup: the own stake goes back to the owner."""
        address = checked_address(delegate, "delegate address")
        own = self._read(lambda: self._registry.functions.getProvider(address).call())[2]
        return self._send(self._registry.functions.withdraw(address), "withdraw", amount=int(own))

    # -- delegating (the wallet as a delegator)

    def delegate(self, delegate: str, amount: int) -> TxResult:
        address = checked_address(delegate, "delegate address")
        self._check_balance(amount, "delegate")
        call = self._registry.functions.delegateStake(address, amount)
        self._simulate(call, "delegate", allowed=_ALLOWANCE)
        self._approve(amount, "delegate")
        return self._send(call, "delegate", amount=amount)

    def request_undelegate(self, delegate: str, amount: int) -> TxResult:
        address = checked_address(delegate, "delegate address")
        result = self._send(
            self._registry.functions.requestUndelegate(address, amount),
            "request undelegate",
            amount=amount,
        )
        _pending, unlock = self._read(
            lambda: self._registry.functions.pendingUndelegation(self.address, address).call()
        )
        return TxResult(result.tx_hash, result.block, amount, int(unlock))

    def undelegate(self, delegate: str) -> TxResult:
        address = checked_address(delegate, "delegate address")
        pending, _unlock = self._read(
            lambda: self._registry.functions.pendingUndelegation(self.address, address).call()
        )
        return self._send(
            self._registry.functions.undelegate(address), "finish undelegate", amount=int(pending)
        )

    def cancel_undelegate(self, delegate: str) -> TxResult:
        address = checked_address(delegate, "delegate address")
        return self._send(self._registry.functions.cancelUndelegate(address), "cancel undelegate")

    # -- dev chains

    def fund(self, to: str, amount: int, *, eth: int = 0) -> TxResult:
        """Sends ``amount`` tokens (and ``eth`` wei for gas, if any) from the wallet to ``to``."""
        address = checked_address(to)
        result = TxResult("", self.head())
        if amount:
            self._check_balance(amount, "fund")
            result = self._send(
                self._token.functions.transfer(address, amount), "fund", amount=amount
            )
        if eth:
            result = self._send_eth(address, eth)
        return result

    # -- internals

    def _known_type(self, service_type: str) -> bytes:
        try:
            type_id = service_type_id(service_type)
        except ValueError as exc:
            raise OperatorError(str(exc)) from None
        exists, _low, _high = self._read(
            lambda: self._types.functions.getServiceType(type_id).call()
        )
        if not exists:
            known = ", ".join(sorted(self.service_types())) or "none"
            raise OperatorError(f"unknown service type {service_type!r}: known types are {known}")
        return type_id

    def _check_balance(self, amount: int, what: str) -> None:
        held = self.token_balance()
        if held < amount:
            raise OperatorError(
                f"{what}: the wallet {self.address} holds {format_live(held)}, "
                f"needs {format_live(amount)}"
            )

    def _approve(self, amount: int, what: str) -> None:
        registry = self._registry.address
        allowance = self._read(
            lambda: self._token.functions.allowance(self.address, registry).call()
        )
        if int(allowance) < amount:
            self._send(self._token.functions.approve(registry, amount), f"{what} (approve)")

    def _read(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            raise _translate(exc, "read", self.chain.url) from None

    def _simulate(self, call: Any, what: str, *, allowed: frozenset[str] = frozenset()) -> None:
        try:
            call.call({"from": self.address})
        except Exception as exc:
            revert = decode_revert(exc)
            if revert is not None and revert.name in allowed:
                return
            raise self._explain(exc, what) from None

    def _explain(self, exc: Exception, what: str) -> Exception:
        revert = decode_revert(exc)
        if revert is not None and revert.name == "LockupNotOver":
            unlock = int(revert.args_dict["unlockBlock"])
            head = self.head()
            return OperatorError(
                f"{what}: the lockup is not over: it ends at block {unlock} "
                f"(now {head}, {max(unlock - head, 0)} blocks to go)"
            )
        if revert is not None and revert.name == "NotRegistered":
            delegate = str(revert.args_dict["delegate"])
            s = self.status(delegate)
            if s.registered and not s.active:
                return OperatorError(
                    f"{what}: the node {delegate} is deregistered: withdraw its stake after "
                    f"block {s.unlock_block}"
                )
        return _translate(exc, what, self.chain.url)

    def _send(self, call: Any, what: str, *, amount: int = 0) -> TxResult:
        self._simulate(call, what)
        try:
            params: dict[str, Any] = {"from": self.address}
            # anvil 1.7 under-estimates calls that free storage (the refund): deregister
            # with a pending decrease ran out of gas at exactly its estimate
            estimate = int(call.estimate_gas(params))
            params["gas"] = estimate * 5 // 4 + GAS_MARGIN
            if isinstance(self.wallet, LocalAccount):
                params["nonce"] = self.w3.eth.get_transaction_count(self.address)
                signed = self.wallet.sign_transaction(call.build_transaction(params))
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            else:
                tx_hash = call.transact(params)
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT)
        except Exception as exc:
            raise self._explain(exc, what) from None
        tx = "0x" + bytes(receipt["transactionHash"]).hex()
        if receipt["status"] != 1:
            raise OperatorError(
                f"{what}: transaction {tx} failed in block {receipt['blockNumber']} "
                f"(used {receipt['gasUsed']} of {params['gas']} gas)"
            )
        return TxResult(tx, int(receipt["blockNumber"]), amount)

    def _send_eth(self, to: ChecksumAddress, wei: int) -> TxResult:
        tx: dict[str, Any] = {"from": self.address, "to": to, "value": wei}
        try:
            if isinstance(self.wallet, LocalAccount):
                tx["nonce"] = self.w3.eth.get_transaction_count(self.address)
                tx["gas"] = 21_000
                tx["chainId"] = self.w3.eth.chain_id
                tx["gasPrice"] = self.w3.eth.gas_price
                signed = self.wallet.sign_transaction(tx)
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            else:
                tx_hash = self.w3.eth.send_transaction(tx)  # type: ignore[arg-type]
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        except Exception as exc:
            raise _translate(exc, "fund (ETH)", self.chain.url) from None
        return TxResult("0x" + bytes(tx_hash).hex(), int(receipt["blockNumber"]), wei)


def consent_signature(node_key: bytes, deployment: Deployment, owner: str) -> bytes:
    """The node key's consent to be registered by ``owner`` on this deployment."""
    return sign_registration(node_key, deployment.chain_id, deployment.registry, owner)


def delegate_of(node_key: bytes) -> ChecksumAddress:
    """The delegate address of a node key."""
    return to_checksum_address(Account.from_key(node_key).address)


__all__ = [
    "KEYSTORE_PASSWORD_ENV",
    "OPERATOR_KEY_ENV",
    "Chain",
    "DelegationStatus",
    "Operator",
    "OperatorError",
    "ProviderStatus",
    "TxResult",
    "check_deployment",
    "connect_rpc",
    "consent_signature",
    "delegate_of",
    "deploy",
    "explain_revert",
    "format_amount",
    "load_wallet",
    "open_rpc",
    "parse_amount",
    "write_deployment",
]

// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {ServiceTypeManager} from "./ServiceTypeManager.sol";

/// @title Who runs a Coliving node, and what they have at stake.
/// @notice A provider is keyed by its *delegate* address: the Ethereum account
/// of the node's libp2p secp256k1 key. Its *owner* wallet stakes and registers
/// it; the delegate proves consent by an EIP-191 `personal_sign` over
/// `keccak256(abi.encode(chainid, registry, owner))` (see registrationDigest).
///
/// Stake: a provider's total is its owner's stake plus a delegated pool.
/// Delegators hold shares of the pool, so a slash is O(1): it lowers the pool's
/// tokens and every share is worth less. A slash is split pro rata between the
/// own stake and the pool (the pool's part rounded down, the owner's up); the
/// slashed tokens go to governance. Tokens waiting in a lockup (a pending
/// decrease, an undelegation, a deregistered provider's stake) still count and
/// are slashed like the rest, so leaving does not escape a slash. A slash that
/// empties the pool starts a new pool epoch: the old shares are worth nothing.
///
/// Every state change emits an event indexed by delegate, so a node's stake
/// oracle can refresh its cache from logs. Every rejection is a custom error.
contract ServiceProviderRegistry {
    using SafeERC20 for IERC20;

    uint256 public constant MAX_MULTIADDRS = 8;
    uint256 public constant MAX_MULTIADDR_LENGTH = 256;
    /// @dev About 139 days of 12 s blocks: governance cannot lock stake forever.
    uint256 public constant MAX_LOCKUP_BLOCKS = 1_000_000;

    struct Provider {
        address owner; // zero: no record
        bool active;
        bytes32 serviceType;
        uint256 ownStake; // includes a pending decrease (still locked and slashable)
        uint256 pendingDecrease; // after deregistration: the whole own stake
        uint256 unlockBlock;
        string[] multiaddrs;
    }

    struct Pool {
        uint256 tokens;
        uint256 shares;
        uint256 epoch;
    }

    struct Delegation {
        uint256 epoch; // shares from an older pool epoch are worth nothing
        uint256 shares; // includes pendingShares
        uint256 pendingShares;
        uint256 unlockBlock;
    }

    IERC20 public immutable token;
    ServiceTypeManager public immutable serviceTypeManager;
    address public governance;
    uint256 public decreaseLockupBlocks;
    uint256 public undelegateLockupBlocks;

    mapping(address delegate => Provider) private _providers;
    mapping(address delegate => Pool) private _pools;
    mapping(address delegate => mapping(address delegator => Delegation)) private _delegations;
    mapping(bytes32 serviceType => address[]) private _activeOfType;
    /// @dev Position + 1 in `_activeOfType[type]`; 0 when inactive.
    mapping(address delegate => uint256) private _activePosition;

    event GovernanceChanged(address indexed previous, address indexed current);
    event LockupsChanged(uint256 decreaseBlocks, uint256 undelegateBlocks);
    event ProviderRegistered(
        address indexed delegate,
        address indexed owner,
        bytes32 indexed serviceType,
        uint256 stake,
        string[] multiaddrs
    );
    event MultiaddrsUpdated(address indexed delegate, string[] multiaddrs);
    event StakeIncreased(address indexed delegate, uint256 amount, uint256 ownStake);
    event DecreaseRequested(address indexed delegate, uint256 amount, uint256 unlockBlock);
    event DecreaseCancelled(address indexed delegate, uint256 amount);
    event StakeDecreased(address indexed delegate, uint256 amount, uint256 ownStake);
    event ProviderDeregistered(
        address indexed delegate,
        address indexed owner,
        bytes32 indexed serviceType,
        uint256 ownStake,
        uint256 unlockBlock
    );
    event Withdrawn(address indexed delegate, address indexed owner, uint256 amount);
    event Delegated(
        address indexed delegate, address indexed delegator, uint256 amount, uint256 shares
    );
    event UndelegateRequested(
        address indexed delegate, address indexed delegator, uint256 amount, uint256 unlockBlock
    );
    event UndelegateCancelled(address indexed delegate, address indexed delegator, uint256 amount);
    event Undelegated(address indexed delegate, address indexed delegator, uint256 amount);
    event Slashed(
        address indexed delegate, uint256 amount, uint256 ownSlashed, uint256 delegatedSlashed
    );

    error NotGovernance(address caller);
    error ZeroAddress();
    error ZeroAmount();
    error UnknownServiceType(bytes32 serviceType);
    error StakeBelowMinimum(uint256 stake, uint256 min);
    error StakeAboveMaximum(uint256 stake, uint256 max);
    error AlreadyRegistered(address delegate);
    error WithdrawalPending(address delegate);
    error NotRegistered(address delegate);
    error StillActive(address delegate);
    error NotOwner(address caller);
    error BadDelegateSignature();
    error TooManyMultiaddrs(uint256 count, uint256 max);
    error EmptyMultiaddr(uint256 index);
    error MultiaddrTooLong(uint256 index, uint256 length, uint256 max);
    error LockupNotOver(uint256 unlockBlock);
    error LockupTooLong(uint256 blocks, uint256 max);
    error NoPendingRequest();
    error RequestAlreadyPending();
    error InsufficientStake(uint256 requested, uint256 available);
    error InsufficientDelegation(uint256 requested, uint256 available);

    modifier onlyGovernance() {
        if (msg.sender != governance) revert NotGovernance(msg.sender);
        _;
    }

    constructor(
        IERC20 token_,
        ServiceTypeManager serviceTypeManager_,
        address governance_,
        uint256 decreaseLockupBlocks_,
        uint256 undelegateLockupBlocks_
    ) {
        if (
            address(token_) == address(0) || address(serviceTypeManager_) == address(0)
                || governance_ == address(0)
        ) revert ZeroAddress();
        token = token_;
        serviceTypeManager = serviceTypeManager_;
        governance = governance_;
        emit GovernanceChanged(address(0), governance_);
        _setLockups(decreaseLockupBlocks_, undelegateLockupBlocks_);
    }

    // -- governance --------------------------------------------------------------

    function setGovernance(address next) external onlyGovernance {
        if (next == address(0)) revert ZeroAddress();
        emit GovernanceChanged(governance, next);
        governance = next;
    }

    /// @notice Applies to requests made from now on; pending ones keep their unlock block.
    function setLockups(uint256 decreaseBlocks, uint256 undelegateBlocks) external onlyGovernance {
        _setLockups(decreaseBlocks, undelegateBlocks);
    }

    function slash(address delegate, uint256 amount) external onlyGovernance {
        if (amount == 0) revert ZeroAmount();
        Provider storage p = _providers[delegate];
        Pool storage pool = _pools[delegate];
        uint256 own = p.ownStake;
        uint256 total = own + pool.tokens;
        if (amount > total) revert InsufficientStake(amount, total);
        uint256 delegatedSlashed = amount * pool.tokens / total;
        uint256 ownSlashed = amount - delegatedSlashed;
        if (ownSlashed != 0) {
            uint256 remaining = own - ownSlashed;
            // a pending decrease is part of the own stake and shrinks with it
            p.pendingDecrease = p.pendingDecrease * remaining / own;
            p.ownStake = remaining;
        }
        if (delegatedSlashed != 0) {
            pool.tokens -= delegatedSlashed;
            if (pool.tokens == 0) {
                pool.shares = 0;
                pool.epoch += 1;
            }
        }
        emit Slashed(delegate, amount, ownSlashed, delegatedSlashed);
        token.safeTransfer(governance, amount);
    }

    // -- providers ---------------------------------------------------------------

    /// @notice Registers `delegate` (the node's key) with `stake` tokens from the
    /// caller, who must have approved them. `delegateSignature` is the delegate's
    /// `personal_sign` of registrationDigest(caller).
    function register(
        bytes32 serviceType,
        address delegate,
        string[] calldata multiaddrs,
        uint256 stake,
        bytes calldata delegateSignature
    ) external {
        if (delegate == address(0)) revert ZeroAddress();
        Provider storage p = _providers[delegate];
        if (p.active) revert AlreadyRegistered(delegate);
        if (p.ownStake != 0) revert WithdrawalPending(delegate);
        _checkRegistrationStake(serviceType, delegate, stake);
        _checkMultiaddrs(multiaddrs);
        _checkDelegateSignature(delegate, delegateSignature);

        p.owner = msg.sender;
        p.active = true;
        p.serviceType = serviceType;
        p.ownStake = stake;
        p.pendingDecrease = 0;
        p.unlockBlock = 0;
        _setMultiaddrs(p, multiaddrs);
        address[] storage active = _activeOfType[serviceType];
        active.push(delegate);
        _activePosition[delegate] = active.length;
        emit ProviderRegistered(delegate, msg.sender, serviceType, stake, multiaddrs);
        token.safeTransferFrom(msg.sender, address(this), stake);
    }

    function updateMultiaddrs(address delegate, string[] calldata multiaddrs) external {
        Provider storage p = _activeOwned(delegate);
        _checkMultiaddrs(multiaddrs);
        _setMultiaddrs(p, multiaddrs);
        emit MultiaddrsUpdated(delegate, multiaddrs);
    }

    function increaseStake(address delegate, uint256 amount) external {
        Provider storage p = _activeOwned(delegate);
        if (amount == 0) revert ZeroAmount();
        (, uint256 maxStake) = _bounds(p.serviceType);
        uint256 total = p.ownStake + _pools[delegate].tokens + amount;
        if (total > maxStake) revert StakeAboveMaximum(total, maxStake);
        p.ownStake += amount;
        emit StakeIncreased(delegate, amount, p.ownStake);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Starts a decrease of the own stake; what remains must stay at the
    /// type's minimum. One request at a time; it stays slashable until executed.
    function requestDecreaseStake(address delegate, uint256 amount) external {
        Provider storage p = _activeOwned(delegate);
        if (amount == 0) revert ZeroAmount();
        if (p.pendingDecrease != 0) revert RequestAlreadyPending();
        if (amount > p.ownStake) revert InsufficientStake(amount, p.ownStake);
        (uint256 minStake,) = _bounds(p.serviceType);
        uint256 remaining = p.ownStake - amount;
        if (remaining < minStake) revert StakeBelowMinimum(remaining, minStake);
        uint256 unlockBlock = block.number + decreaseLockupBlocks;
        p.pendingDecrease = amount;
        p.unlockBlock = unlockBlock;
        emit DecreaseRequested(delegate, amount, unlockBlock);
    }

    function cancelDecreaseStake(address delegate) external {
        Provider storage p = _activeOwned(delegate);
        uint256 amount = p.pendingDecrease;
        if (amount == 0) revert NoPendingRequest();
        p.pendingDecrease = 0;
        p.unlockBlock = 0;
        emit DecreaseCancelled(delegate, amount);
    }

    /// @notice Executes the pending decrease once its lockup is over: the tokens
    /// (less any slash since the request) go back to the owner.
    function decreaseStake(address delegate) external {
        Provider storage p = _activeOwned(delegate);
        uint256 amount = p.pendingDecrease;
        if (amount == 0) revert NoPendingRequest();
        if (block.number < p.unlockBlock) revert LockupNotOver(p.unlockBlock);
        p.ownStake -= amount;
        p.pendingDecrease = 0;
        p.unlockBlock = 0;
        emit StakeDecreased(delegate, amount, p.ownStake);
        token.safeTransfer(p.owner, amount);
    }

    /// @notice The provider stops counting at once; its own stake can be
    /// withdrawn after the decrease lockup. Delegators undelegate as usual.
    function deregister(address delegate) external {
        Provider storage p = _activeOwned(delegate);
        bytes32 serviceType = p.serviceType;
        uint256 unlockBlock = block.number + decreaseLockupBlocks;
        p.active = false;
        p.pendingDecrease = p.ownStake;
        p.unlockBlock = unlockBlock;
        delete p.multiaddrs;
        _removeActive(serviceType, delegate);
        emit ProviderDeregistered(delegate, p.owner, serviceType, p.ownStake, unlockBlock);
    }

    /// @notice After deregistration and its lockup: pays the own stake (less any
    /// slash) to the owner and deletes the record, so the delegate can register again.
    function withdraw(address delegate) external {
        Provider storage p = _owned(delegate);
        if (p.active) revert StillActive(delegate);
        if (block.number < p.unlockBlock) revert LockupNotOver(p.unlockBlock);
        address owner = p.owner;
        uint256 amount = p.ownStake;
        delete _providers[delegate];
        emit Withdrawn(delegate, owner, amount);
        if (amount != 0) token.safeTransfer(owner, amount);
    }

    // -- delegation --------------------------------------------------------------

    function delegateStake(address delegate, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Provider storage p = _providers[delegate];
        if (!p.active) revert NotRegistered(delegate);
        Pool storage pool = _pools[delegate];
        (, uint256 maxStake) = _bounds(p.serviceType);
        uint256 total = p.ownStake + pool.tokens + amount;
        if (total > maxStake) revert StakeAboveMaximum(total, maxStake);
        uint256 shares = pool.shares == 0 ? amount : amount * pool.shares / pool.tokens;
        if (shares == 0) revert ZeroAmount(); // dust that would buy no share
        Delegation storage d = _syncedDelegation(delegate, msg.sender, pool);
        d.shares += shares;
        pool.shares += shares;
        pool.tokens += amount;
        emit Delegated(delegate, msg.sender, amount, shares);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Starts undelegating `amount` tokens' worth of shares; one request
    /// at a time. The shares stay in the pool (and slashable) until undelegate.
    function requestUndelegate(address delegate, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        Pool storage pool = _pools[delegate];
        Delegation storage d = _syncedDelegation(delegate, msg.sender, pool);
        if (d.pendingShares != 0) revert RequestAlreadyPending();
        uint256 available = _value(d.shares, pool);
        if (amount > available) revert InsufficientDelegation(amount, available);
        // round shares up so the pool never pays out more than `amount` is worth
        uint256 shares = (amount * pool.shares + pool.tokens - 1) / pool.tokens;
        uint256 unlockBlock = block.number + undelegateLockupBlocks;
        d.pendingShares = shares;
        d.unlockBlock = unlockBlock;
        emit UndelegateRequested(delegate, msg.sender, amount, unlockBlock);
    }

    function cancelUndelegate(address delegate) external {
        Pool storage pool = _pools[delegate];
        Delegation storage d = _syncedDelegation(delegate, msg.sender, pool);
        uint256 shares = d.pendingShares;
        if (shares == 0) revert NoPendingRequest();
        d.pendingShares = 0;
        d.unlockBlock = 0;
        emit UndelegateCancelled(delegate, msg.sender, _value(shares, pool));
    }

    /// @notice Executes the pending undelegation once its lockup is over and
    /// pays what the shares are worth now.
    function undelegate(address delegate) external {
        Pool storage pool = _pools[delegate];
        Delegation storage d = _syncedDelegation(delegate, msg.sender, pool);
        uint256 shares = d.pendingShares;
        if (shares == 0) revert NoPendingRequest();
        if (block.number < d.unlockBlock) revert LockupNotOver(d.unlockBlock);
        // the last shares out take the rounding dust with them
        uint256 amount = shares == pool.shares ? pool.tokens : _value(shares, pool);
        pool.shares -= shares;
        pool.tokens -= amount;
        d.shares -= shares;
        d.pendingShares = 0;
        d.unlockBlock = 0;
        emit Undelegated(delegate, msg.sender, amount);
        if (amount != 0) token.safeTransfer(msg.sender, amount);
    }

    // -- views -------------------------------------------------------------------

    /// @notice The digest the delegate signs (with the EIP-191 prefix) to let `owner` register it.
    function registrationDigest(address owner) public view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), owner));
    }

    /// @notice All zeros for an unknown delegate. After deregistration, until
    /// withdraw: active is false, the multiaddrs are empty, the stake still shown.
    function getProvider(address delegate)
        external
        view
        returns (
            address owner,
            bytes32 serviceType,
            uint256 ownStake,
            uint256 delegatedStake,
            bool active,
            string[] memory multiaddrs
        )
    {
        Provider storage p = _providers[delegate];
        return (
            p.owner, p.serviceType, p.ownStake, _pools[delegate].tokens, p.active, p.multiaddrs
        );
    }

    /// @notice Own plus delegated stake: the tokens a slash can reach, whether
    /// or not the provider is active. isStaked is what counts for the network.
    function totalStakeOf(address delegate) public view returns (uint256) {
        return _providers[delegate].ownStake + _pools[delegate].tokens;
    }

    /// @notice Active, of an existing type, and own + delegated >= the type's minimum.
    function isStaked(address delegate) external view returns (bool) {
        Provider storage p = _providers[delegate];
        if (!p.active) return false;
        (bool exists, uint256 minStake,) = serviceTypeManager.getServiceType(p.serviceType);
        return exists && totalStakeOf(delegate) >= minStake;
    }

    /// @notice Active providers of a type, in no particular order.
    function providersOfType(bytes32 serviceType) external view returns (address[] memory) {
        return _activeOfType[serviceType];
    }

    /// @notice What the delegator's shares (pending ones included) are worth now.
    function delegationOf(address delegator, address delegate) external view returns (uint256) {
        Pool storage pool = _pools[delegate];
        Delegation storage d = _delegations[delegate][delegator];
        if (d.epoch != pool.epoch) return 0;
        return _value(d.shares, pool);
    }

    function delegationPool(address delegate)
        external
        view
        returns (uint256 tokens, uint256 shares, uint256 epoch)
    {
        Pool storage pool = _pools[delegate];
        return (pool.tokens, pool.shares, pool.epoch);
    }

    /// @notice The own stake waiting to leave (after deregistration: all of it).
    function pendingDecrease(address delegate)
        external
        view
        returns (uint256 amount, uint256 unlockBlock)
    {
        Provider storage p = _providers[delegate];
        return (p.pendingDecrease, p.unlockBlock);
    }

    /// @notice What the pending undelegation would pay now, and when it unlocks.
    function pendingUndelegation(address delegator, address delegate)
        external
        view
        returns (uint256 amount, uint256 unlockBlock)
    {
        Pool storage pool = _pools[delegate];
        Delegation storage d = _delegations[delegate][delegator];
        if (d.epoch != pool.epoch || d.pendingShares == 0) return (0, 0);
        return (_value(d.pendingShares, pool), d.unlockBlock);
    }

    // -- internals ---------------------------------------------------------------

    function _setLockups(uint256 decreaseBlocks, uint256 undelegateBlocks) private {
        if (decreaseBlocks > MAX_LOCKUP_BLOCKS) {
            revert LockupTooLong(decreaseBlocks, MAX_LOCKUP_BLOCKS);
        }
        if (undelegateBlocks > MAX_LOCKUP_BLOCKS) {
            revert LockupTooLong(undelegateBlocks, MAX_LOCKUP_BLOCKS);
        }
        decreaseLockupBlocks = decreaseBlocks;
        undelegateLockupBlocks = undelegateBlocks;
        emit LockupsChanged(decreaseBlocks, undelegateBlocks);
    }

    function _bounds(bytes32 serviceType) private view returns (uint256 minStake, uint256 maxStake) {
        bool exists;
        (exists, minStake, maxStake) = serviceTypeManager.getServiceType(serviceType);
        if (!exists) revert UnknownServiceType(serviceType);
    }

    function _checkRegistrationStake(bytes32 serviceType, address delegate, uint256 stake)
        private
        view
    {
        (uint256 minStake, uint256 maxStake) = _bounds(serviceType);
        if (stake < minStake) revert StakeBelowMinimum(stake, minStake);
        // delegators who stayed through a deregistration count for the new registration
        uint256 total = stake + _pools[delegate].tokens;
        if (total > maxStake) revert StakeAboveMaximum(total, maxStake);
    }

    function _checkDelegateSignature(address delegate, bytes calldata signature) private view {
        bytes32 digest = MessageHashUtils.toEthSignedMessageHash(registrationDigest(msg.sender));
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, signature);
        if (err != ECDSA.RecoverError.NoError || signer != delegate) revert BadDelegateSignature();
    }

    function _checkMultiaddrs(string[] calldata multiaddrs) private pure {
        if (multiaddrs.length > MAX_MULTIADDRS) {
            revert TooManyMultiaddrs(multiaddrs.length, MAX_MULTIADDRS);
        }
        for (uint256 i = 0; i < multiaddrs.length; ++i) {
            uint256 length = bytes(multiaddrs[i]).length;
            if (length == 0) revert EmptyMultiaddr(i);
            if (length > MAX_MULTIADDR_LENGTH) {
                revert MultiaddrTooLong(i, length, MAX_MULTIADDR_LENGTH);
            }
        }
    }

    function _setMultiaddrs(Provider storage p, string[] calldata multiaddrs) private {
        delete p.multiaddrs;
        for (uint256 i = 0; i < multiaddrs.length; ++i) {
            p.multiaddrs.push(multiaddrs[i]);
        }
    }

    function _removeActive(bytes32 serviceType, address delegate) private {
        address[] storage active = _activeOfType[serviceType];
        uint256 position = _activePosition[delegate];
        address last = active[active.length - 1];
        active[position - 1] = last;
        _activePosition[last] = position;
        active.pop();
        delete _activePosition[delegate];
    }

    /// @dev The record `delegate` has, checked to belong to the caller.
    function _owned(address delegate) private view returns (Provider storage p) {
        p = _providers[delegate];
        if (p.owner == address(0)) revert NotRegistered(delegate);
        if (p.owner != msg.sender) revert NotOwner(msg.sender);
    }

    function _activeOwned(address delegate) private view returns (Provider storage p) {
        p = _owned(delegate);
        if (!p.active) revert NotRegistered(delegate);
    }

    /// @dev The caller's delegation, emptied first if a slash reset the pool since.
    function _syncedDelegation(address delegate, address delegator, Pool storage pool)
        private
        returns (Delegation storage d)
    {
        d = _delegations[delegate][delegator];
        if (d.epoch != pool.epoch) {
            d.epoch = pool.epoch;
            d.shares = 0;
            d.pendingShares = 0;
            d.unlockBlock = 0;
        }
    }

    function _value(uint256 shares, Pool storage pool) private view returns (uint256) {
        if (shares == 0) return 0;
        return shares * pool.tokens / pool.shares;
    }
}

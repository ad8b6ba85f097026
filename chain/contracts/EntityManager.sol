// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title The music layer's data contract: signed entity actions, logged for the indexers.
/// @notice A user signs an action (EIP-712, Audius-compatible type string) and
/// anyone, typically a relay paying the gas, submits it. The contract only
/// recovers the signer, refuses a replayed signature and bounds the sizes;
/// every business rule (does the signer own that user id, does the track
/// exist) is the discovery indexer's, which reads the `ManageEntity` events.
/// @dev The type string keeps Audius's `uint` (not `uint256`) so signatures
/// made by Audius clients recover here; EIP-712 hashes the type string as
/// written, so the canonical `uint256` form would change every digest.
contract EntityManager {
    string public constant NAME = "Entity Manager";
    string public constant VERSION = "1";
    uint256 public constant MAX_METADATA = 8192;
    uint256 public constant MAX_NAME = 32;

    bytes32 public constant MANAGE_ENTITY_TYPEHASH = keccak256(
        "ManageEntity(uint userId,string entityType,uint entityId,string action,string metadata,bytes32 nonce)"
    );
    bytes32 private constant DOMAIN_TYPEHASH = keccak256(
        "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    );
    /// @dev secp256k1's group order halved: a signature with a larger s has a
    /// twin (n - s, flipped v) for the same digest; only the low one is accepted.
    uint256 private constant HALF_ORDER =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    bytes32 private immutable _deployedSeparator;
    uint256 private immutable _deployedChainId;

    /// @notice keccak256(abi.encodePacked(digest, signer)) of every accepted action.
    mapping(bytes32 key => bool) public usedNonces;

    event ManageEntity(
        uint256 indexed userId,
        address indexed signer,
        string entityType,
        uint256 entityId,
        string metadata,
        string action
    );

    error InvalidSignature();
    error NonceAlreadyUsed(bytes32 key);
    error MetadataTooLarge(uint256 length, uint256 limit);
    error EntityTypeTooLong(uint256 length, uint256 limit);
    error ActionTooLong(uint256 length, uint256 limit);

    constructor() {
        _deployedChainId = block.chainid;
        _deployedSeparator = _separator();
    }

    /// @notice Logs the action signed by `subjectSig` (65 bytes r|s|v, v 27 or 28).
    function manageEntity(
        uint256 userId,
        string calldata entityType,
        uint256 entityId,
        string calldata action,
        string calldata metadata,
        bytes32 nonce,
        bytes calldata subjectSig
    ) external {
        if (bytes(entityType).length > MAX_NAME) {
            revert EntityTypeTooLong(bytes(entityType).length, MAX_NAME);
        }
        if (bytes(action).length > MAX_NAME) revert ActionTooLong(bytes(action).length, MAX_NAME);
        if (bytes(metadata).length > MAX_METADATA) {
            revert MetadataTooLarge(bytes(metadata).length, MAX_METADATA);
        }
        address signer =
            _consume(_digest(userId, entityType, entityId, action, metadata, nonce), subjectSig);
        emit ManageEntity(userId, signer, entityType, entityId, metadata, action);
    }

    /// @notice The EIP-712 digest a user signs for these fields, on this chain.
    function digestOf(
        uint256 userId,
        string calldata entityType,
        uint256 entityId,
        string calldata action,
        string calldata metadata,
        bytes32 nonce
    ) external view returns (bytes32) {
        return _digest(userId, entityType, entityId, action, metadata, nonce);
    }

    /// @notice The EIP-712 domain separator; follows the chain id if the chain forks.
    function domainSeparator() public view returns (bytes32) {
        return block.chainid == _deployedChainId ? _deployedSeparator : _separator();
    }

    function _separator() private view returns (bytes32) {
        return keccak256(
            abi.encode(
                DOMAIN_TYPEHASH,
                keccak256(bytes(NAME)),
                keccak256(bytes(VERSION)),
                block.chainid,
                address(this)
            )
        );
    }

    function _digest(
        uint256 userId,
        string calldata entityType,
        uint256 entityId,
        string calldata action,
        string calldata metadata,
        bytes32 nonce
    ) private view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                MANAGE_ENTITY_TYPEHASH,
                userId,
                keccak256(bytes(entityType)),
                entityId,
                keccak256(bytes(action)),
                keccak256(bytes(metadata)),
                nonce
            )
        );
        return keccak256(abi.encodePacked(hex"1901", domainSeparator(), structHash));
    }

    /// @dev The signer of `digest`, once: a second use of the same signed digest reverts.
    function _consume(bytes32 digest, bytes calldata sig) private returns (address signer) {
        signer = _recover(digest, sig);
        bytes32 key = keccak256(abi.encodePacked(digest, signer));
        if (usedNonces[key]) revert NonceAlreadyUsed(key);
        usedNonces[key] = true;
    }

    function _recover(bytes32 digest, bytes calldata sig) private pure returns (address) {
        if (sig.length != 65) revert InvalidSignature();
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if ((v != 27 && v != 28) || uint256(s) > HALF_ORDER) revert InvalidSignature();
        address signer = ecrecover(digest, v, r, s);
        if (signer == address(0)) revert InvalidSignature();
        return signer;
    }
}

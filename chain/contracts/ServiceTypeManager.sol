// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title The kinds of service a provider can register, with their stake bounds.
/// @notice A service type id is the ASCII name right-padded to 32 bytes, as
/// Solidity's `bytes32("content-node")` makes it. Governance adds, updates and
/// removes types; the registry reads the bounds at every check, so a change
/// applies at once to every provider of that type (a provider below a raised
/// minimum stops counting as staked until it adds stake).
contract ServiceTypeManager {
    struct Bounds {
        uint256 minStake;
        uint256 maxStake;
    }

    address public governance;

    bytes32[] private _ids;
    mapping(bytes32 id => Bounds) private _bounds;
    /// @dev Position + 1 in `_ids`; 0 means the type does not exist.
    mapping(bytes32 id => uint256) private _position;

    event GovernanceChanged(address indexed previous, address indexed current);
    event ServiceTypeAdded(bytes32 indexed serviceType, uint256 minStake, uint256 maxStake);
    event ServiceTypeUpdated(bytes32 indexed serviceType, uint256 minStake, uint256 maxStake);
    event ServiceTypeRemoved(bytes32 indexed serviceType);

    error NotGovernance(address caller);
    error ZeroAddress();
    error EmptyServiceType();
    error ServiceTypeExists(bytes32 serviceType);
    error UnknownServiceType(bytes32 serviceType);
    error InvalidStakeBounds(uint256 min, uint256 max);

    modifier onlyGovernance() {
        if (msg.sender != governance) revert NotGovernance(msg.sender);
        _;
    }

    constructor(address governance_) {
        if (governance_ == address(0)) revert ZeroAddress();
        governance = governance_;
        emit GovernanceChanged(address(0), governance_);
    }

    function setGovernance(address next) external onlyGovernance {
        if (next == address(0)) revert ZeroAddress();
        emit GovernanceChanged(governance, next);
        governance = next;
    }

    function addServiceType(bytes32 serviceType, uint256 minStake, uint256 maxStake)
        external
        onlyGovernance
    {
        if (serviceType == bytes32(0)) revert EmptyServiceType();
        if (_position[serviceType] != 0) revert ServiceTypeExists(serviceType);
        _checkBounds(minStake, maxStake);
        _ids.push(serviceType);
        _position[serviceType] = _ids.length;
        _bounds[serviceType] = Bounds(minStake, maxStake);
        emit ServiceTypeAdded(serviceType, minStake, maxStake);
    }

    function updateServiceType(bytes32 serviceType, uint256 minStake, uint256 maxStake)
        external
        onlyGovernance
    {
        if (_position[serviceType] == 0) revert UnknownServiceType(serviceType);
        _checkBounds(minStake, maxStake);
        _bounds[serviceType] = Bounds(minStake, maxStake);
        emit ServiceTypeUpdated(serviceType, minStake, maxStake);
    }

    /// @notice Providers already registered under a removed type stop counting
    /// as staked; they can still deregister and withdraw.
    function removeServiceType(bytes32 serviceType) external onlyGovernance {
        uint256 position = _position[serviceType];
        if (position == 0) revert UnknownServiceType(serviceType);
        bytes32 last = _ids[_ids.length - 1];
        _ids[position - 1] = last;
        _position[last] = position;
        _ids.pop();
        delete _position[serviceType];
        delete _bounds[serviceType];
        emit ServiceTypeRemoved(serviceType);
    }

    function getServiceType(bytes32 serviceType)
        external
        view
        returns (bool exists, uint256 minStake, uint256 maxStake)
    {
        Bounds storage b = _bounds[serviceType];
        return (_position[serviceType] != 0, b.minStake, b.maxStake);
    }

    function serviceTypes() external view returns (bytes32[] memory) {
        return _ids;
    }

    function _checkBounds(uint256 minStake, uint256 maxStake) private pure {
        // A zero minimum would make "staked" meaningless.
        if (minStake == 0 || minStake > maxStake) revert InvalidStakeBounds(minStake, maxStake);
    }
}

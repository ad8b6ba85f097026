// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title Coliving (LIVE): the token service providers stake.
/// @notice A plain OpenZeppelin ERC20 with 18 decimals; the whole supply is
/// minted to the deployer, who hands it out.
contract ColivingToken is ERC20 {
    constructor(uint256 initialSupply) ERC20("Coliving", "LIVE") {
        _mint(msg.sender, initialSupply);
    }
}

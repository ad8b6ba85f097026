"""The Python SDK of Coliving (client side: nothing here runs a node)."""

"""HTTP resources, one module per area of the contract."""

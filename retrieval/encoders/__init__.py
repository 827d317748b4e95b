"""Model families (one module each) and the registry that maps model keys to them."""

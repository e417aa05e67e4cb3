"""dimerec-dist."""

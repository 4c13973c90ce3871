"""Lattice physics of the 2D Schwinger model: U(1) gauge fields and Wilson fermions."""

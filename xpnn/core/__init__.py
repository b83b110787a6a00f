"""The array-library layer: backends (NumPy, CuPy, torch, any array-API library) and argument checks."""

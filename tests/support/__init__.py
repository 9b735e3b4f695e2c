"""Test support: the CUDA sources as the GPU-free tests compile them, and CuPy
emulated on the host (the only check of the GPU paths on machines without a GPU)."""

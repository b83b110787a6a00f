"""How a step runs: CUDA graphs, worker threads, MPI processes, the allocator."""

"""Model work: llama.cpp handles, the runtime and its KV pool, constraints, sampling, the catalog."""

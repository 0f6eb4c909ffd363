"""The monokernel's Python side: the instruction list, its schedule on SMs, the validator and a
PyTorch interpreter that runs the list on CPU. See README.md in this folder for the design."""

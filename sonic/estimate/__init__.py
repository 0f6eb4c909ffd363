"""`sonic estimate`: bytes and FLOPs per token, and the speed they allow."""

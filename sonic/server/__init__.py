"""The OpenAI-compatible HTTP server (`sonic serve`); needs the `serve` extra (FastAPI, uvicorn)."""

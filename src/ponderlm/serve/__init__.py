"""`ponderlm serve`: OpenAI-compatible serving with continuous batching and real per-token early exit.

Modules: `scheduler` (the engine thread: queue, admission, one backbone call per step), `rows` (adding
and removing requests in a running `DecodeState`), `protocol` (request validation, response shapes),
`app` (FastAPI routes, server-sent events), `metrics` (Prometheus text) and `page` (the web page).
FastAPI and uvicorn are the optional `serve` extra; only `app` and `commands.cmd_serve` import them.
"""

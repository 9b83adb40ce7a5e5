"""`ponderlm serve`: OpenAI-compatible serving with continuous batching and real per-token early exit.

Modules: `scheduler` (the engine thread: queue, admission, one backbone call per step), `protocol` (request
validation, response shapes, OpenAI's error object), `limits` (request-size limits, stdlib only), `app` (FastAPI
routes, server-sent events, API key), `metrics` (Prometheus, through prometheus_client) and `page` (the web page).
FastAPI, uvicorn and prometheus_client are the optional `serve` extra; `app`, `metrics` (hence `scheduler`)
and `ponderlm.commands.serve.cmd_serve` import them, the CLI's parser does not.
"""

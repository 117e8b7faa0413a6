"""The fourth stage: an HTTP API, a web page to paint masks, a job queue and a Ray Serve deployment,
all on top of `Engine` (nothing below this package knows it exists).

`inpaint-serve --engine DIR` runs it; `create_app(Settings(...))` builds the FastAPI app.
Needs the `serve` extra: pip install 'inpaintrt[serve]'.
"""

TOKEN_VARIABLE = "INPAINTRT_TOKEN"  # the bearer token's environment variable (inpaint-serve --token)

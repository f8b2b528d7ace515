"""``npsam3 serve``: an HTTP API (FastAPI, the ``serve`` extra) and a browser page on one model.

    app = npsam3.serve.app.create_app(npsam3.load_model("weights/sam3-bundle"))

store.py keeps the encoded images (by content hash, within a memory budget), engine.py runs
every model call on the one inference thread that owns the model, app.py maps HTTP to both,
server.py runs it with uvicorn, static/ is the page. Importing this package does not import
FastAPI.
"""

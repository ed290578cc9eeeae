"""The data products' read APIs (app.py), what they serve (datasets.py), their server (serve.py), a client."""

"""`wsdm-serve serve`: the judge as an HTTP service (``pip install 'wsdm[serve]'``).

- :mod:`.config`: the service's settings (limits, key, batching).
- :mod:`.schema`: the JSON request/response models and one-message request parsing.
- :mod:`.service`: admission to the bounded queue, prompts as predict builds them, scoring, TTA.
- :mod:`.app`: the FastAPI routes, auth and request metrics; :mod:`.metrics`: Prometheus.
- :mod:`.runner`: uvicorn on a bound socket, in the main thread (graceful SIGTERM) or a thread.

The engines behind it are in :mod:`wsdm_serve.engines.asynchronous`.

Nothing is imported here, so the command line can read the defaults in :mod:`.config` without
loading FastAPI.
"""

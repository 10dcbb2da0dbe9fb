"""service: the HTTP service around one ``TextToImage``; never knows which backend runs.

Owns: the FastAPI app and schemas, admission (queue bound, auth, limits), the dynamic
batcher, metrics, logs, settings, the error envelope, and the service benchmarks.
Imports: ``retrieval`` (compose) and, for settings checks, ``engines``.
Entry points: ``service.app.create_app``, CLI ``ragturbo serve|bench service``.
"""

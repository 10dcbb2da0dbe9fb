"""service: the HTTP service around one ``TextToImage``; never knows which backend runs.

Owns: the FastAPI app and schemas, admission (queue bound, auth, limits), the dynamic
batcher, metrics, logs, settings and the error envelope.
Imports: ``retrieval`` (compose) and, for settings checks, ``engines``; never ``training``,
``toyworld``, ``bench`` or ``lab``.
Entry points: ``service.app.create_app``, CLI ``ragturbo serve``.
"""

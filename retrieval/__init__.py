"""retrieval: the pairs database and the one place a prompt becomes an image.

Owns: the vector index (Qdrant Edge embedded, Qdrant server via qdrant-client, and
``memory_index.MemoryIndex`` for in-memory databases such as training's own pairs), the
H-feature store, ingest, search, the device copy a searching backend serves from
(``resident``), the composition embed -> search -> gather -> generate (``compose``) and
what keeps it serving: health, warm-up, the device copy's refresh (``upkeep``).
Imports: ``engines`` (backends, pipeline types); never ``service``, ``training``,
``toyworld``, ``bench`` or ``lab``.
Entry points: ``retrieval.compose.build_text_to_image`` / ``TextToImage.generate``,
``retrieval.db.open_db``, CLI ``ragturbo ingest|search``.
"""

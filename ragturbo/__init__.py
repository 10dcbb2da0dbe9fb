"""ragturbo: one-step retrieval-augmented text-to-image service (ImageRAGTurbo).

Owns: the console script (``cli``: each package adds its commands through
``<package>.cli.register``) ``ragturbo generate`` (one image, here or through a server),
``ragturbo search`` (nearest captions, here or through a server) and ``ragturbo serve`` (``serve``).
Imports: every product package (``service``, ``training``, ``toyworld``, ``retrieval``,
``engines``) and ``bench`` (the benchmark commands); never ``lab``.
"""

__version__ = "0.1.0"

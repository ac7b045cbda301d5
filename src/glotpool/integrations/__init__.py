"""Bridges to the embedding ecosystem. Each submodule imports its library only when used.

- :mod:`glotpool.integrations.sentence_transformers`: any glotpool pooler as a sentence-transformers module
  (:class:`~glotpool.integrations.sentence_transformers.GLOTPoolingModule`), export of a frozen backbone +
  trained pooler to a sentence-transformers folder, pooler-only training with the ST trainer.
- :mod:`glotpool.integrations.mteb`: an MTEB v2 encoder (:class:`~glotpool.integrations.mteb.MTEBEncoder`),
  :func:`~glotpool.integrations.mteb.evaluate_mteb`, and offline tasks built from local files.
"""

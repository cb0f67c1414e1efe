"""The science: the explanation methods, the passes they share and the scores that judge them.

Nothing here draws, reads files or knows about pages: the services (`explainers.services`) do.
"""

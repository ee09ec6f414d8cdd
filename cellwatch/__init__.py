"""cellwatch's composition root: the ``cellwatch`` command line and the settings tree.

Imports point one way: ``cellwatch -> training, streaming -> detector``.
"""

"""Structure refinement against a measured LACBED pattern.

:mod:`.config` (settings and checks), :mod:`.objective` (figure of merit and its gradient),
:mod:`.stages` (thickness scan, surrogate stages, Bloch polish: :func:`refine`),
:mod:`.surrogate_search` (the surrogate stages), :mod:`.result` (result and figure),
:mod:`.files` (``fit`` from files), :mod:`.batch` (many fits).
"""

"""Simulators: the built-in Bloch engine applied to a crystal (:mod:`.bloch`), the registry of
simulator plugins (:mod:`.registry`, e.g. FELIX), and simulation from files (:mod:`.files`).
"""

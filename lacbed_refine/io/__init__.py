"""Input and output at the edges: CIF (:mod:`.cif`), images and pattern stacks (:mod:`.images`), FELIX
input files (:mod:`.felix_inp`), and the checks and atomic write every output goes through
(:mod:`.files`).
"""

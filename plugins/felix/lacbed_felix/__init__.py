"""FELIX plugin for lacbed-refine.

- :class:`FelixSimulator`, the simulator ``felix`` (entry point ``lacbed_refine.simulators``):
  runs the FELIX executable on lacbed-refine's crystals and settings;
- FELIX's inputs for any cell, space group, zone axis and absorption model
  (:func:`felix_input_for`, :func:`felix_pool`, :func:`write_felix_cif`); ``felix.inp`` itself is the
  core's :mod:`lacbed_refine.io.felix_inp` (re-exported here);
- writers and readers for FELIX's other files: ``felix.cif``, ``felix.hkl``, ``.bin``/``.img``
  images, ``StructureFactors.txt``, the refined CIF and ``iteration_log.txt``
  (:func:`read_refinement` reads a finished refinement);
- :func:`export_refinement`, a complete FELIX refinement set from a structure and a measured pattern
  (``lacbed-refine felix export``; command group :data:`lacbed_felix.cli.felix_group`, entry point
  ``lacbed_refine.commands``).
"""

from ._cif import (
    RefinedSite,
    RefinedStructure,
    felix_centring,
    felix_chem,
    felix_site_labels,
    format_felix_cif,
    read_refined_cif,
    refined_crystal,
    wyckoff_letters,
    write_felix_cif,
)
from ._export import (
    DEFAULT_REFINE,
    REFINEMENT_DEFAULTS,
    FelixExport,
    export_file,
    export_refinement,
    read_pattern,
    refine_letters,
)
from ._files import (
    FelixSimulation,
    IterationLog,
    StructureFactors,
    experimental_folder_name,
    image_name,
    iteration_log_columns,
    parse_image_name,
    parse_sim_folder,
    read_hkl,
    read_image,
    read_iteration_log,
    read_simulation,
    read_structure_factors,
    refine_folder_name,
    simulation_to_stack,
    sim_folder_name,
    write_hkl,
    write_image,
)
from ._inp import (
    ABSORPTION_FLAGS,
    INP_TITLE,
    FelixInput,
    FelixInputError,
    felix_beam_pool,
    felix_input_for,
    felix_pool,
    format_felix_inp,
    read_felix_inp,
    thickness_grid,
    write_felix_inp,
)
from ._refinement import FelixRefinement, parse_refine_folder, read_refinement
from ._runner import MULTI_RANK_BUG, FelixError, FelixRun, find_felix, find_mpirun, run_felix
from ._simulator import FelixSimulator, write_simulation_inputs
from ._version import __version__

__all__ = [
    "__version__",
    # simulator and runner
    "FelixSimulator",
    "write_simulation_inputs",
    "FelixError",
    "FelixRun",
    "find_felix",
    "find_mpirun",
    "run_felix",
    "MULTI_RANK_BUG",
    # felix.inp
    "FelixInput",
    "FelixInputError",
    "read_felix_inp",
    "write_felix_inp",
    "format_felix_inp",
    "felix_input_for",
    "felix_beam_pool",
    "felix_pool",
    "thickness_grid",
    "INP_TITLE",
    "ABSORPTION_FLAGS",
    # felix.cif and the refined CIF
    "felix_centring",
    "felix_chem",
    "felix_site_labels",
    "wyckoff_letters",
    "write_felix_cif",
    "format_felix_cif",
    "RefinedSite",
    "RefinedStructure",
    "read_refined_cif",
    "refined_crystal",
    "FelixRefinement",
    "read_refinement",
    "parse_refine_folder",
    # other files
    "image_name",
    "parse_image_name",
    "read_image",
    "write_image",
    "sim_folder_name",
    "parse_sim_folder",
    "refine_folder_name",
    "experimental_folder_name",
    "read_hkl",
    "write_hkl",
    "StructureFactors",
    "read_structure_factors",
    "IterationLog",
    "read_iteration_log",
    "iteration_log_columns",
    "FelixSimulation",
    "read_simulation",
    "simulation_to_stack",
    # seeding a refinement
    "export_refinement",
    "export_file",
    "read_pattern",
    "FelixExport",
    "REFINEMENT_DEFAULTS",
    "DEFAULT_REFINE",
    "refine_letters",
]

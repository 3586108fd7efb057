"""lacbed-refine: refine cubic crystal structures against LACBED patterns."""

__version__ = "0.1.0"

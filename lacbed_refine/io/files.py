"""Output files: checks before any work (may this path be written?) and the one atomic write
(:func:`atomic_path`: a temporary file in the same folder, renamed into place when complete).
"""

from __future__ import annotations
import contextlib
import os
import tempfile
from pathlib import Path

#: File types a pattern stack can be written as.
STACK_SUFFIXES = (".tif", ".tiff", ".npy", ".h5", ".hdf5")


def check_new_output(path, *, overwrite: bool = False, option: str = "-o", inputs=()) -> Path:
    """Check, before any work, that ``path`` may be written: not one of ``inputs``, not an existing
    file unless ``overwrite``, and its folder creatable and writable.

    Raises
    ------
    ValueError
        One line naming ``option`` and the path.
    """
    path = Path(path)
    for src in inputs:
        if src is not None and Path(src).exists() and path.exists() and path.resolve() == Path(src).resolve():
            raise ValueError(f"{option} {path}: is the input file; write to another path")
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder, a file path is needed")
    if path.exists() and not overwrite:
        raise ValueError(f"{option} {path}: exists; pass --overwrite to replace it")
    check_writable_folder(path.parent, option=option)
    return path


def check_stack_output(out, *, overwrite: bool = False, inputs=()) -> Path:
    """Check an output stack path before any work: a known suffix (.tif/.tiff/.npy/.h5/.hdf5),
    not an input, not an existing file (nor its PNG preview) unless ``overwrite``, a writable folder."""
    out = Path(out)
    if out.suffix.lower() not in STACK_SUFFIXES:
        raise ValueError(f"-o {out}: unknown output type {out.suffix!r}; use one of {', '.join(STACK_SUFFIXES)}")
    check_new_output(out, overwrite=overwrite, inputs=inputs)
    check_new_output(out.with_suffix(".png"), overwrite=overwrite, inputs=inputs)
    return out


def check_writable_folder(folder, *, option: str = "-o") -> Path:
    """Create ``folder`` if needed and check that files can be created in it (before any work)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{option} {folder}: cannot write there ({exc.strerror or exc})") from None
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds,
    so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the file the mode any new file of the user's gets
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

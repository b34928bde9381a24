"""Reading members of dataset archives, refusing damaged archives and unsafe member paths.

Members are read in memory, never extracted by their stored names; an archive that holds a
member whose path would escape a target folder (absolute, `..`, drive letter: "zip-slip")
is refused as a whole, since an archive built that way is not one to trust.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import PurePosixPath, PureWindowsPath

from autorec_jax.errors import DataError


def unsafe_member(name: str) -> bool:
    """True for a member path that would land outside the folder it is extracted into."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    return (posix.is_absolute() or windows.is_absolute() or bool(windows.drive)
            or ".." in posix.parts or ".." in windows.parts)


def _open_zip(archive: str | os.PathLike | bytes) -> tuple[zipfile.ZipFile, str]:
    shown = "archive" if isinstance(archive, bytes) else str(archive)
    try:
        zf = zipfile.ZipFile(io.BytesIO(archive) if isinstance(archive, bytes) else archive)
    except FileNotFoundError:
        raise DataError("no such archive", path=shown) from None
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise DataError(f"not a readable zip archive: truncated or corrupted ({err}); delete "
                        "it and download it again", path=shown) from None
    bad = [n for n in zf.namelist() if unsafe_member(n)]
    if bad:
        zf.close()
        raise DataError(f"refusing the archive: member {bad[0]!r} would be written outside "
                        "the target folder (zip-slip); get the archive from its official "
                        "source", path=shown)
    return zf, shown


def zip_member(archive: str | os.PathLike | bytes, member: str) -> bytes:
    """The bytes of one member of a zip archive (a path, or the archive's bytes).

    Raises:
      DataError: the archive is missing, truncated or corrupted (including a CRC mismatch
        while reading), lacks the member, or holds an unsafe member path.
    """
    zf, shown = _open_zip(archive)
    with zf:
        try:
            return zf.read(member)
        except KeyError:
            raise DataError(f"has no member {member}; members: "
                            f"{', '.join(zf.namelist()[:10])}", path=shown) from None
        except (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile) as err:
            raise DataError(f"member {member} cannot be read: the archive is truncated or "
                            f"corrupted ({err}); delete it and download it again",
                            path=shown) from None

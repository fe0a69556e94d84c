"""What Python's zipfile raises on damaged or hostile archives, in one place for every ZIP reader.

NotImplementedError is zipfile's answer to an entry that claims to need a newer "version to extract"
(Hypothesis found it escaping); ValueError comes from impossible header fields. Stdlib only, so the
torch-free sniffers share it.
"""

from __future__ import annotations

import lzma
import zipfile
import zlib

__all__ = ["ZIP_OPEN_ERRORS", "ZIP_READ_ERRORS"]

# Opening the archive (reading its central directory).
ZIP_OPEN_ERRORS = (zipfile.BadZipFile, OSError, ValueError, NotImplementedError)
# Reading a member's bytes (decompression included).
ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, OSError, EOFError, NotImplementedError)

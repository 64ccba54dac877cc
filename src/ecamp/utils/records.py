"""The names of the files a pipeline stage leaves in its folder.

Shared by the stage engine (which writes them) and the report (which reads them), so that
neither has to import the other.
"""

from __future__ import annotations

RECORD = "stage.json"  # a finished stage: fingerprint, result, seconds

"""Two transformers notices nobody using this project can act on, dropped where they are logged.

transformers >= 5 logs these once per class when diffusers' SD3 pipeline module imports
SiglipImageProcessor (pipeline_stable_diffusion_3.py) and CLIPImageProcessor (loaders/ip_adapter.py)
for IP-Adapter image encoders, which this project never loads, and torchvision is not installed
(it does not import beside the pinned CPU torch): transformers then uses the PIL processors. The
advice ("install torchvision") is for nothing the project does, so the two messages are dropped at
their logger; every other transformers message still shows.

``load_pipeline`` (every command line's model load) and the app call ``quiet_known_warnings``
before diffusers' pipelines are imported. No torch or transformers import here: the app's page is
served before they load.
"""

from __future__ import annotations

import logging

KNOWN_WARNINGS = ("`SiglipImageProcessor` requires torchvision", "`CLIPImageProcessor` requires torchvision")
TRANSFORMERS_IMPORT_LOGGER = "transformers.utils.import_utils"  # where transformers logs them


class _DropKnownWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(KNOWN_WARNINGS)


def quiet_known_warnings() -> None:
    """Drop the two torchvision notices (``KNOWN_WARNINGS``) at their logger; idempotent. Needs no
    transformers import: the filter waits on the logger until transformers logs there."""
    logger = logging.getLogger(TRANSFORMERS_IMPORT_LOGGER)
    if not any(isinstance(f, _DropKnownWarnings) for f in logger.filters):
        logger.addFilter(_DropKnownWarnings())

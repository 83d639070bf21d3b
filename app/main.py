"""Start the web editor: settings from flags and environment, then the Gradio app (``python app.py``, ``softrepa-edit``).

    python app.py [--model M] [--kind K] [--tokens FILE] [--host 127.0.0.1] [--port 7860]

With no flags it serves the bundled shapes model with its soft tokens (docs/app.md).
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from app.settings import SettingsError, parse_settings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = parse_settings(argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from app.ui import create_app  # imports gradio: after the settings chose its folders

    web = create_app(settings)
    try:
        web.launch()
    except OSError as exc:  # e.g. the port is taken
        print(f"error: cannot serve on {settings.host}:{settings.port} ({exc})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        web.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

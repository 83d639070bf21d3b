"""The web editor's script entry, and the Hugging Face Space's (README front matter ``app_file: app.py``).

    python app.py [--model M] [--kind K] [--tokens FILE] [--host 127.0.0.1] [--port 7860]

Installed, the same is ``softrepa-edit``; the code is ``app.main``.
"""

import sys

from app.main import main

if __name__ == "__main__":
    sys.exit(main())

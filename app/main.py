"""Start the web editor: settings from flags and environment, then the Gradio app (``python app.py``, ``softrepa-edit``).

    python app.py [--model M] [--kind K] [--tokens FILE] [--host 127.0.0.1] [--port 7860]

With no flags it serves the bundled shapes model with its soft tokens (docs/app.md).

Start-up order (benchmarks/app_load.py measures it): settings; Gradio imported without its import-time
stub writer (``skip_gradio_stub_writer``); the page built and served; only then the model loaded,
in a background thread (diffusers and transformers are imported there, with two warnings nobody can
act on filtered out: ``quiet_known_warnings``). ``--eager-load`` (and ZeroGPU) load it before serving.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import time
from types import ModuleType
from typing import Any

from softrepa.known_warnings import quiet_known_warnings

log = logging.getLogger(__name__)

GRADIO_STUB_MODULE = "gradio.component_meta"


class _NoStubLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader):
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        module.create_or_modify_pyi = _skip_stub


def _skip_stub(*_args: Any, **_kwargs: Any) -> None:
    """Stands in for ``gradio.component_meta.create_or_modify_pyi`` (see ``skip_gradio_stub_writer``)."""


class _NoStubFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name != GRADIO_STUB_MODULE:
            return None
        sys.meta_path.remove(self)  # once
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _NoStubLoader(spec.loader)
        return spec


def skip_gradio_stub_writer() -> bool:
    """Make the coming ``import gradio`` skip its type-stub writer; False when gradio is already imported.

    Gradio (6.31 here) rebuilds the ``.pyi`` type stub of every component class as the class is
    defined, on every import (``gradio.component_meta.create_or_modify_pyi``: it parses each
    component's source with ``ast`` and rewrites the stub in site-packages when it differs). That is
    40-50 % of ``import gradio`` (measured 7.7-11.5 s -> 4.8-6.7 s on 2 busy cores, docs/benchmarks.md)
    and only type checkers read stubs, so the app's entry point replaces that one function with a
    no-op as the module loads. Anything else of Gradio is untouched; if the module or function is
    renamed in a later Gradio, nothing is skipped and nothing breaks.
    """
    if GRADIO_STUB_MODULE in sys.modules or any(isinstance(f, _NoStubFinder) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _NoStubFinder())
    return True


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    from app.settings import SettingsError, parse_settings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = parse_settings(argv)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    quiet_known_warnings()
    skip_gradio_stub_writer()
    from app.ui import create_app  # imports gradio: after the settings chose its folders

    service = service_loading_after_serving(settings)
    web = create_app(settings, service)
    try:
        web.launch(block=False)
    except OSError as exc:  # e.g. the port is taken
        print(f"error: cannot serve on {settings.host}:{settings.port} ({exc})", file=sys.stderr)
        return 2
    log.info("page served %.1f s after start", time.perf_counter() - started)
    service.release()
    try:
        web.demo.block_thread()
    except KeyboardInterrupt:
        web.close()
    return 0


def service_loading_after_serving(settings):
    """An ``EditorService`` whose background model load, which ``create_app`` starts, waits for
    ``release()`` (called once the page is served).

    The load imports diffusers and transformers (seconds of CPU) and Python runs one thread at a
    time, so loading while the page is built only delays the page; the model is not ready sooner.
    An edit that arrives before ``release`` loads the model itself (``EditorService.editor``). Eager
    loads (``--eager-load``, ZeroGPU) call ``load`` and are not held.
    """
    from app.service import EditorService  # torch: only once the settings are known

    class LoadAfterServing(EditorService):
        _asked = False

        def start_loading(self) -> None:
            self._asked = True

        def release(self) -> None:
            if self._asked:
                super().start_loading()

    return LoadAfterServing(settings)


if __name__ == "__main__":
    sys.exit(main())

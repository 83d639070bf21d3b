"""The page's runs: Edit and Compare (and their public API endpoints, ``/edit`` and ``/compare``:
the same runs without the page's states), Cancel, and picking one of an edit's candidates (Variations).

Edits share one concurrency slot ("device") and wait in a bounded queue. A run stops between
steps when Cancel is pressed on its page (``EditorService.cancel``) or when its client goes away
(``app.components.client_gone``: ``gradio_client``'s ``job.cancel()``, a closed tab), so the
device is free for the next edit within a step. A cancelled run is not an error: the page says
"Cancelled" and the controls stay as they were.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import gradio as gr
from gradio.components import Component

from app.components import (HELPER_EVENT, LIGHT_EVENT, client_gone, describe_endpoint, inputs_for, session_of,
                            session_waits)
from app.controls import EditControls
from app.api import compare, edit, summary
from app.handlers import (EditCancelled, EditOutcome, add_to_history, choose_candidate, history_gallery, in_history,
                          picks_per_tokens_state, replace_in_history, reports_errors)
from app.page import Page, candidates_gallery
from app.service import EditorService

# the controls an Auto candidate differs in (with its seed): taking one sets them, Auto off
AUTO_SWEPT = ("n_max", "tar_cfg", "noise_offset", "use_tokens", "auto")
DEVICE_QUEUE = "device"  # the concurrency id every edit shares: one edit at a time on the one device
ZERO_GPU_SECONDS = 120  # the ZeroGPU slot an edit asks for (SD3 at 1024 px, compare: two edits)
CANCELLED = ("**Cancelled.** The edit stops after its current step (a waiting one as it starts) and keeps nothing: "
             "anything shown is from before it. The controls are ready for the next edit.")


def device_task(fn: Callable) -> Callable:
    """``spaces.GPU`` on Hugging Face ZeroGPU Spaces (the ``spaces`` package exists there): the GPU is
    attached only while ``fn`` runs. Elsewhere ``fn`` itself."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=ZERO_GPU_SECONDS)(fn)


def running_on_zero_gpu() -> bool:
    try:
        import spaces  # noqa: F401
    except ImportError:
        return False
    return True


def progress_callback(progress: gr.Progress) -> Callable[[int, int], None]:
    """The edit's progress bar, which also stops the edit (between steps) once its client is gone."""
    def report(done: int, total: int) -> None:
        if client_gone():
            raise EditCancelled()
        progress((done, total), desc="Editing", unit="steps")

    return report


def notify(outcome: EditOutcome) -> None:
    for notice in outcome.notices:
        gr.Info(notice)


def wire_runs(page: Page, service: EditorService, demo: gr.Blocks) -> None:
    """Edit, Compare (their parameters are the API's), the history after each, Cancel, picking a candidate."""

    @device_task
    def run_edit(image: str | None, source_prompt: str, target_prompt: str, use_tokens: bool, tar_cfg: float,
                 src_cfg: float, n_max: float, steps: float, n_min: float, n_avg: float, seed: float,
                 randomize_seed: bool, max_side: float, guidance: str, token_branches: str, mask_mode: str,
                 mask: str | None = None, variations: float = 1, auto: bool = False, noise_offset: float = 0,
                 request: gr.Request = None, progress: gr.Progress = gr.Progress(),
                 parent: dict[str, Any] | None = None) -> dict[Component, Any]:
        controls = EditControls(source_prompt=source_prompt, target_prompt=target_prompt, use_tokens=use_tokens,
                                tar_cfg=tar_cfg, src_cfg=src_cfg, n_max=n_max, steps=steps, n_min=n_min, n_avg=n_avg,
                                seed=seed, randomize_seed=randomize_seed, max_side=max_side, guidance=guidance,
                                token_branches=token_branches, mask_mode=mask_mode, variations=variations, auto=auto,
                                noise_offset=noise_offset)
        try:
            outcome = edit(service, image, controls, session_of(request), progress_callback(progress), mask, parent)
        except EditCancelled:
            return {page.summary: CANCELLED}  # the rest as it was (the finish step then skips)
        notify(outcome)
        # the API's returns: every candidate's PNG (the page then shows the chosen one's, see finish)
        return {page.slider: (outcome.source_path, outcome.final.path), page.result: outcome.final.path,
                page.files: outcome.all_files(), page.summary: outcome.summary, page.details: outcome.details,
                page.masks.region: outcome.final.region_path, page.shown_outcome: outcome}

    @device_task
    def run_compare(image: str | None, source_prompt: str, target_prompt: str, tar_cfg: float, src_cfg: float,
                    n_max: float, steps: float, n_min: float, n_avg: float, seed: float, randomize_seed: bool,
                    max_side: float, guidance: str, token_branches: str, mask_mode: str,
                    mask: str | None = None, auto: bool = False, noise_offset: float = 0, request: gr.Request = None,
                    progress: gr.Progress = gr.Progress(), parent: dict[str, Any] | None = None
                    ) -> dict[Component, Any]:
        controls = EditControls(source_prompt=source_prompt, target_prompt=target_prompt, use_tokens=True,
                                tar_cfg=tar_cfg, src_cfg=src_cfg, n_max=n_max, steps=steps, n_min=n_min, n_avg=n_avg,
                                seed=seed, randomize_seed=randomize_seed, max_side=max_side, guidance=guidance,
                                token_branches=token_branches, mask_mode=mask_mode, auto=auto,
                                noise_offset=noise_offset)
        try:
            outcome = compare(service, image, controls, session_of(request), progress_callback(progress), mask, parent)
        except EditCancelled:
            return {page.summary: CANCELLED}
        notify(outcome)
        # with Auto strength the sweep ran tokens off and on: each state's own pick (the strip shows all)
        without, with_ = (outcome.images[i] for i in picks_per_tokens_state(outcome)) if outcome.mode == "edit" \
            else outcome.images
        return {page.slider: (outcome.source_path, with_.path), page.without_tokens: without.path,
                page.with_tokens: with_.path, page.files: outcome.files(), page.summary: outcome.summary,
                page.details: outcome.details, page.masks.region: outcome.final.region_path,
                page.shown_outcome: outcome}

    # mask=None, variations=1, auto=False and noise_offset=0 above make them optional in the API (Gradio reads the defaults), and
    # they come last, so calls that pass the others by position still work; parent, the page's state
    # (Edit again), follows Gradio's own arguments: the API events have no input for it (None).
    _wire_buttons(page, service, run_edit, run_compare)
    _wire_cancel(page, service, demo)
    _wire_pick(page)


def _wire_buttons(page: Page, service: EditorService, run_edit: Callable, run_compare: Callable) -> None:
    """Each button's run (a public endpoint), then a private step that files it in the history."""

    finish_outputs = [page.history, page.history_state, page.controls.seed, page.result, page.compare_row,
                      page.candidates, page.files, page.details, page.shown_outcome, page.masks.region]

    def finish(outcome: EditOutcome | None, history_entries: list[EditOutcome]) -> dict[Component, Any]:
        """After a run: the history (with the chain: Edit again's parent), the seed actually used, which
        result areas show, the chosen candidate's files (not in the endpoints' returns: an API client
        gets plain values, never visibility updates). Nothing after a cancelled run (the outcome shown
        is the one before it, already in the history)."""
        if outcome is None or in_history(history_entries, outcome):
            return {component: gr.skip() for component in finish_outputs}  # Gradio takes no empty dict
        entries = add_to_history(history_entries, outcome, service.settings.history_size)
        pair = outcome.mode == "compare"
        return {page.history: history_gallery(entries), page.history_state: entries,
                page.controls.seed: outcome.controls.seed, page.result: gr.Image(visible=not pair),
                page.compare_row: gr.Row(visible=pair), page.candidates: gr.Gallery(**candidates_gallery(outcome)),
                page.files: outcome.files(), page.details: outcome.details, page.shown_outcome: outcome,
                page.masks.region: gr.Image(visible=outcome.final.region_path is not None)}

    named = {"image": page.image, "mask": page.masks.mask, **page.controls.by_name()}
    for button, run, outputs, action in (
            (page.edit_button, run_edit, [page.result], edit),
            (page.compare_button, run_compare, [page.without_tokens, page.with_tokens], compare)):
        returns = [page.slider, *outputs, page.files, page.summary, page.details, page.masks.region]
        event = button.click(run, inputs_for(run, {**named, "parent": page.parent}), [*returns, page.shown_outcome],
                             api_visibility="private", concurrency_id=DEVICE_QUEUE, concurrency_limit=1)
        event.success(finish, [page.shown_outcome, page.history_state], finish_outputs,
                      **LIGHT_EVENT)
        endpoint = describe_endpoint(without_state(run, returns), summary(action), name=action.__name__)
        gr.on([], endpoint, inputs_for(run, named), returns, api_name=action.__name__, concurrency_id=DEVICE_QUEUE,
              concurrency_limit=1)


def without_state(run: Callable, returns: list[Component]) -> Callable:
    """``run`` as an API endpoint: the same parameters (its ``parent`` left at None) and only the
    values the API returns. The page's button events also hand over and set Gradio ``State``s
    (the chain's parent, the outcome shown), but an endpoint with a ``State`` breaks Gradio's MCP
    server (6.31 drops a state's value that its own bookkeeping then pops: "pop index out of
    range"), so ``/edit`` and ``/compare`` are events of their own, like the API-only endpoints."""

    @functools.wraps(run)
    def endpoint(*args: Any, **kwargs: Any) -> dict[Component, Any]:
        return {component: value for component, value in run(*args, **kwargs).items() if component in returns}

    return endpoint


def _wire_cancel(page: Page, service: EditorService, demo: gr.Blocks) -> None:
    """Cancel: the session's running edit stops after its current step, a waiting one as it starts;
    either run then returns the "Cancelled" summary itself, as a result, not an error.

    Gradio's own ``cancels=`` is not used for the page: it drops the event on the page at once and
    races the run, and when Cancel follows Edit closely the page never hears the end of the run and
    marks its outputs "Error". (An API client's ``job.cancel()`` still goes through Gradio; the run
    then notices its client is gone, ``app.components.client_gone``.)"""

    def request_cancel(request: gr.Request = None) -> Any:
        session = session_of(request)
        if service.cancel(session):
            return CANCELLED
        if session_waits(demo, session, DEVICE_QUEUE):
            service.cancel_waiting(session)
            return CANCELLED
        return gr.skip()  # nothing to cancel: the summary stays

    page.cancel_button.click(request_cancel, None, [page.summary], **LIGHT_EVENT)


def _wire_pick(page: Page) -> None:
    """A click on a candidate makes it the result: slider, image, PNG, details, the seed box, the history entry."""

    @reports_errors
    def pick(outcome: EditOutcome | None, history_entries: list[EditOutcome],
             event: gr.SelectData) -> dict[Component, Any]:
        chosen = choose_candidate(outcome, event.index)
        entries = replace_in_history(history_entries, chosen)
        updates = page.outcome_updates(chosen)
        del updates[page.candidates]  # already showing the choice
        taken = "auto" in chosen.details  # an Auto candidate: its whole setting goes into the controls
        setting = {getattr(page.controls, name): getattr(chosen.controls, name) if taken else gr.skip()
                   for name in AUTO_SWEPT}
        return {**updates, page.history: history_gallery(entries), page.history_state: entries,
                page.controls.seed: chosen.controls.seed, **setting}

    outputs = [o for o in page.outcome_outputs() if o is not page.candidates]
    swept = [getattr(page.controls, name) for name in AUTO_SWEPT]
    page.candidates.select(pick, [page.shown_outcome, page.history_state],
                           [*outputs, page.history, page.history_state, page.controls.seed, *swept], **HELPER_EVENT)

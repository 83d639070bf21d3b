"""Prompt help (app/prompt_help.py): which helper the settings pick, the shapes model's describer and
instructions, LLaVA and the chat model loaded lazily (tiny random-weight models built offline: their
text is word salad, so the accept path runs with a scripted rewriter), and load failures that name the
flag without a traceback."""

from __future__ import annotations

import pytest
from PIL import Image

from app.controls import UserInputError
from app.prompt_help import (InstructionRewriter, LlavaDescriber, LlmInstructor, PromptHelpError, RewriterConfig,
                             ShapesDescriber, ShapesInstructor, pick_describer, pick_instructor)
from app.settings import ENV_VARS, parse_args, resolve_settings
from shapes.describe import describe_scene_image

SOURCE = "A brown dog sits on a red sofa next to a window."


def example_image() -> Image.Image:
    """A held-out shapes-world picture: a large solid orange circle and a solid purple square (val pair 0,
    seed 0; rendered here, as the gallery no longer ships it)."""
    from shapes.scenes import Scene
    from shapes.world import make_edit_pair, render

    return render(Scene.from_dict(make_edit_pair(0, 0, split="val")["source_labels"]), 64)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from data_prep.tiny_models import build_tiny_llama, build_tiny_llava

    root = tmp_path_factory.mktemp("tiny_models")
    return build_tiny_llava(root / "llava"), build_tiny_llama(root / "llama")


def settings_for(argv: list[str], env: dict | None = None):
    return resolve_settings(parse_args(argv), env or {})


# ----------------------------------------------------------------------------- settings and picking


def test_flags_then_environment_then_none():
    assert ENV_VARS["captioner"] == "SOFTREPA_CAPTIONER" and ENV_VARS["rewriter"] == "SOFTREPA_REWRITER"
    settings = settings_for(["--captioner", "flag/llava"], {"SOFTREPA_CAPTIONER": "env/llava",
                                                            "SOFTREPA_REWRITER": "env/llama"})
    assert (settings.captioner, settings.rewriter) == ("flag/llava", "env/llama")
    assert settings_for([]).captioner is None and settings_for([]).rewriter is None
    off = settings_for(["--rewriter", "none"], {"SOFTREPA_CAPTIONER": "off"})
    assert (off.captioner, off.rewriter) == (None, None)


def test_help_names_both_flags_and_their_variables(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--captioner MODEL" in text and "[SOFTREPA_CAPTIONER]" in text
    assert "--rewriter MODEL" in text and "[SOFTREPA_REWRITER]" in text


def test_the_shapes_model_always_gets_its_own_helpers_and_others_only_when_configured():
    shapes = settings_for(["--captioner", "some/llava"])  # the bundled model: the flag is not needed there
    assert isinstance(pick_describer(shapes), ShapesDescriber)
    assert isinstance(pick_instructor(shapes), ShapesInstructor)
    plain = settings_for(["--model", "some/sd3", "--kind", "sd3"])
    assert pick_describer(plain) is None and pick_instructor(plain) is None  # the page hides both
    configured = settings_for(["--model", "some/sd3", "--kind", "sd3", "--device", "cpu", "--captioner", "a/llava",
                               "--rewriter", "a/llama"])
    describer, instructor = pick_describer(configured), pick_instructor(configured)
    assert isinstance(describer, LlavaDescriber) and describer.model_id == "a/llava" and not describer.loaded
    assert isinstance(instructor, LlmInstructor) and instructor.model_id == "a/llama" and not instructor.loaded


# ----------------------------------------------------------------------------- the shapes model


def test_shapes_describer_writes_the_classifiers_reading():
    image = example_image()
    text = ShapesDescriber().describe(image)
    assert text == describe_scene_image(image.convert("RGB"))
    assert text.startswith("a large solid orange circle in the top left") and text.endswith("background")
    with pytest.raises(PromptHelpError, match="Upload a source image"):
        ShapesDescriber().describe(None)
    with pytest.raises(PromptHelpError, match="no shapes"):
        ShapesDescriber().describe(Image.new("RGB", (64, 64), (245, 245, 245)))


def test_shapes_instructor_writes_a_one_change_target_against_the_description():
    image = example_image()
    described = ShapesDescriber().describe(image)
    result = ShapesInstructor().rewrite("make the square an outline", "a circle and a square", image)
    assert result.ok and result.source == described and result.source_changed
    assert result.changed == ("solid", "outlined")
    assert result.target == described.replace("solid purple square", "outlined purple square")
    assert "from solid to outline" in result.message and "now the source prompt" in result.message
    same = ShapesInstructor().rewrite("make the purple square blue", described, image)
    assert same.ok and not same.source_changed and same.changed == ("purple", "blue")  # colours are allowed
    with pytest.raises(PromptHelpError, match="cannot use 'add'"):
        ShapesInstructor().rewrite("add a star", described, image)
    with pytest.raises(UserInputError, match="Upload a source image"):
        ShapesInstructor().rewrite("make the square an outline", described, None)


# ----------------------------------------------------------------------------- real models, lazily


def test_llava_describer_loads_on_first_use_and_returns_text(tiny_models):
    llava, _ = tiny_models
    describer = LlavaDescriber(str(llava), device="cpu")
    assert not describer.loaded
    text = describer.describe(Image.new("RGB", (900, 300), (30, 90, 160)))  # downscaled to 768 first
    assert isinstance(text, str) and describer.loaded
    assert describer.describe(Image.new("RGB", (40, 40))) is not None  # the loaded model is reused


def test_llm_instructor_gives_the_model_the_instruction_and_reports_the_verdict(tiny_models):
    _, llama = tiny_models
    instructor = LlmInstructor(str(llama), device="cpu", config=RewriterConfig(max_new_tokens=8, max_retries=1))
    assert not instructor.loaded
    result = instructor.rewrite("replace the dog with a cat", SOURCE)
    assert instructor.loaded and isinstance(instructor.model, InstructionRewriter)
    prompt = instructor.model.last_prompt
    assert "Instruction: replace the dog with a cat\nInput: " + SOURCE in prompt
    assert isinstance(result.target, str) and result.source == SOURCE
    if not result.ok:  # random weights: almost always; both attempts are reported
        assert [note.split(":")[0] for note in result.notes[:2]] == ["attempt 1", "attempt 2"]
    with pytest.raises(PromptHelpError, match="Type an instruction"):
        instructor.rewrite("  ", SOURCE)


class ScriptedRewriter:
    """Stands in for the chat model: a preamble at the first seed, then the given answer."""

    def __init__(self, answer: str):
        self.answer, self.calls = answer, []

    def rewrite(self, caption, instruction, seed):
        self.calls.append((caption, instruction, seed))
        return f"Sure! {caption}" if seed == 0 else self.answer


def scripted(answer: str, **config) -> tuple[LlmInstructor, ScriptedRewriter]:
    model = ScriptedRewriter(answer)
    instructor = LlmInstructor("scripted", config=RewriterConfig(**config))
    instructor._load = lambda device, dtype: model  # noqa: SLF001 - the loader is what a test replaces
    return instructor, model


def test_llm_instructor_retries_with_the_next_seed_until_the_rule_holds():
    instructor, model = scripted("A brown cat sits on a red sofa next to a window.")
    result = instructor.rewrite("replace the dog with a cat", SOURCE)
    assert result.ok and result.changed == ("dog", "cat") and "attempt 2" in result.message
    assert [seed for _, _, seed in model.calls] == [0, 1]
    assert model.calls[0][:2] == (SOURCE, "replace the dog with a cat")
    recoloured, _ = scripted("A brown dog sits on a blue sofa next to a window.")
    assert recoloured.rewrite("make the sofa blue", SOURCE).ok  # asked for: allowed
    strict, _ = scripted("A brown dog sits on a blue sofa next to a window.", allow_colour_change=False)
    assert not strict.rewrite("make the sofa blue", SOURCE).ok
    unasked, _ = scripted("A brown fox sits on a red sofa next to a window.")
    assert "not in your instruction" in unasked.rewrite("replace the dog with a cat", SOURCE).message


def test_llm_instructor_gives_up_after_the_retries_with_every_reason():
    instructor, model = scripted("A cat sits on a chair.", max_retries=2)
    result = instructor.rewrite("replace the dog with a cat", SOURCE)
    assert not result.ok and len(model.calls) == 3
    assert [note.split(":")[0] for note in result.notes[:3]] == ["attempt 1", "attempt 2", "attempt 3"]
    assert "preamble" in result.notes[0] and result.target == "A cat sits on a chair."


@pytest.mark.parametrize("helper, flag", [
    (lambda path: LlavaDescriber(path, device="cpu").describe(Image.new("RGB", (32, 32))), "--captioner"),
    (lambda path: LlmInstructor(path, device="cpu").rewrite("make it a cat", SOURCE), "--rewriter"),
])
def test_a_model_that_does_not_load_names_the_flag_without_a_traceback(tmp_path, helper, flag):
    with pytest.raises(PromptHelpError) as error:
        helper(str(tmp_path / "no-such-model"))
    message = str(error.value)
    assert flag in message and "SOFTREPA_" in message and "could not be loaded" in message
    assert "Traceback" not in message and "\n" not in message


def test_a_failed_load_is_reported_again_without_loading_again(tmp_path):
    describer = LlavaDescriber(str(tmp_path / "missing"), device="cpu")
    calls = []

    def failing_load():
        calls.append(1)
        raise SystemExit("error: no such model")  # as data_prep's loaders exit

    describer._model._load = failing_load  # noqa: SLF001 - the loader is what a test replaces
    for _ in range(2):
        with pytest.raises(PromptHelpError, match="could not be loaded: no such model"):
            describer.describe(Image.new("RGB", (32, 32)))
    assert calls == [1] and not describer.loaded


def test_a_device_the_machine_lacks_is_named_with_its_flag():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(PromptHelpError, match=r"--device / SOFTREPA_DEVICE 'cuda'.*no CUDA GPU"):
        LlmInstructor("any/model", device="cuda").rewrite("make it a cat", SOURCE)

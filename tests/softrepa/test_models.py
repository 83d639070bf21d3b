"""softrepa.models: names for reports, the kind a model folder belongs to, every kind's architecture."""

from softrepa.models import ARCHITECTURES, KINDS, SHAPES_MODEL_DIR, model_label, resolve_model


def test_model_label_names_a_kind_s_own_model_and_squeezes_anything_else(tmp_path):
    assert model_label(str(SHAPES_MODEL_DIR)) == "shapes-sd3"
    assert model_label(KINDS["sd3"].hub_id) == "sd3"
    assert model_label(str(tmp_path / "my model")) == "".join(str(tmp_path / "my model").split())


def test_resolve_model_reads_a_kind_name_as_its_model():
    assert resolve_model("sd3") == (KINDS["sd3"].hub_id, "sd3")
    assert resolve_model(str(SHAPES_MODEL_DIR)) == (str(SHAPES_MODEL_DIR), "shapes-sd3")


def test_every_kind_has_an_architecture_that_says_where_its_tokens_go():
    for name, spec in KINDS.items():
        arch = ARCHITECTURES[spec.arch]
        assert arch.model_class().__name__ == arch.model_class_name, name
        assert arch.placement, name
    assert {KINDS[k].arch for k in ("flux-dev", "flux-schnell")} == {"flux"}


def test_resolve_model_reads_the_flux_kinds():
    assert resolve_model("flux-dev") == ("black-forest-labs/FLUX.1-dev", "flux-dev")
    assert resolve_model("flux-schnell") == ("black-forest-labs/FLUX.1-schnell", "flux-schnell")

"""softrepa.models: names for reports and the kind a model folder belongs to."""

from softrepa.models import KINDS, SHAPES_MODEL_DIR, model_label, resolve_model


def test_model_label_names_a_kind_s_own_model_and_squeezes_anything_else(tmp_path):
    assert model_label(str(SHAPES_MODEL_DIR)) == "shapes-sd3"
    assert model_label(KINDS["sd3"].hub_id) == "sd3"
    assert model_label(str(tmp_path / "my model")) == "".join(str(tmp_path / "my model").split())


def test_resolve_model_reads_a_kind_name_as_its_model():
    assert resolve_model("sd3") == (KINDS["sd3"].hub_id, "sd3")
    assert resolve_model(str(SHAPES_MODEL_DIR)) == (str(SHAPES_MODEL_DIR), "shapes-sd3")

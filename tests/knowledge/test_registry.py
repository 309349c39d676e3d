"""The registry: terms by name, spec strings, flag lists, and registration by definition."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import pytest

import tfkd.knowledge as knowledge
from tfkd.knowledge import (AttentionTransfer, DecoupledKD, Hint, Knowledge, KerasDistillationLoss,
                            RelationalKD, SoftTargets, TeacherFree, base)


@pytest.fixture
def scratch_registry():
    """Terms defined inside a test leave the registry (and Keras' custom objects) as they were."""
    registry, keys = dict(base._REGISTRY), dict(base._KEYS)
    custom = keras.saving.get_custom_objects()
    saved_custom = dict(custom)
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(registry)
    base._KEYS.clear()
    base._KEYS.update(keys)
    custom.clear()
    custom.update(saved_custom)


def define_probe():
    class Probe(Knowledge):
        """A term that stores its arguments, to see how specs are read.

        >>> 1
        1
        """

        default_name = "probe"
        aliases = ("sonde",)
        example_args = {}

        def __init__(self, value=None, other=None, flag=False, rate=0.5, weight=1.0, name=None,
                     **kwargs):
            super().__init__(weight=weight, name=name, **kwargs)
            self.value, self.other, self.flag = value, other, flag
            self.rate = base.check_positive("rate", rate, "Probe")

        def compute(self, teacher, student, y_true=None, sample_weight=None):
            return keras.ops.zeros(())

        def get_config(self):
            config = super().get_config()
            config.update(value=self.value, other=self.other, flag=self.flag, rate=self.rate)
            return config

    return Probe


# ----- get_list: the command-line form ------------------------------------------------------


def test_get_list_reads_the_flag_form():
    terms = knowledge.get_list("soft_targets,hint:student_layer=stage3,teacher_layer=stage3")
    assert [type(t) for t in terms] == [SoftTargets, Hint]
    assert terms[0].temperature == 4.0
    assert (terms[1].student_layer, terms[1].teacher_layer) == ("stage3", "stage3")


def test_get_list_of_pieces_split_by_a_flag_parser_gives_the_same_terms():
    # absl's DEFINE_list splits "hint:student_layer=a,teacher_layer=b" at its commas.
    terms = knowledge.get_list(["dkd:beta=2", "temperature=3", "hint:student_layer=a",
                                "teacher_layer=b", " rkd "])
    assert [type(t) for t in terms] == [DecoupledKD, Hint, RelationalKD]
    assert (terms[0].beta, terms[0].temperature) == (2.0, 3.0)
    assert (terms[1].student_layer, terms[1].teacher_layer) == ("a", "b")


def test_get_list_accepts_terms_configs_and_keras_losses_in_a_list():
    term = SoftTargets(temperature=2.0)
    config = keras.saving.serialize_keras_object(TeacherFree(correct_prob=0.8))
    kd = keras.distillation.LogitsDistillation(loss=keras.losses.KLDivergence())
    terms = knowledge.get_list([term, "dkd", config, kd])
    assert terms[0] is term
    assert type(terms[1]) is DecoupledKD
    assert type(terms[2]) is TeacherFree and terms[2].correct_prob == 0.8
    assert isinstance(terms[3], KerasDistillationLoss)
    assert knowledge.get_list("") == [] and knowledge.get_list([]) == []


@pytest.mark.parametrize("spec,match", [
    ("soft_targets,,hint", "empty entry between commas"),
    ("temperature=3,soft_targets", "'temperature=3' is an argument with no term before it"),
    ([SoftTargets(), "temperature=3"], "no term before it"),
    ("dkd:4", r"'4' is not `argument=value`"),
    ("attention:pairs=[(a,b)", "unbalanced brackets"),
    ("hint:student_layer='a", "unbalanced brackets or quotes"),
    ("dkd:beta=1,beta=2", "`beta` is given twice"),
    ("dkd:beta=", "`beta=` has no value"),
    ("soft_targets:", "nothing after 'soft_targets:'"),
    (":beta=2", "the term's name is missing"),
])
def test_malformed_specs(spec, match):
    with pytest.raises(ValueError, match=match) as info:
        knowledge.get_list(spec)
    assert "Malformed knowledge spec" in str(info.value)
    assert "e.g. 'dkd:temperature=4,beta=8'" in str(info.value)


# ----- get: one term ------------------------------------------------------------------------


def test_get_by_every_name_and_the_values_are_literals():
    for name in ("dkd", "DecoupledKD", "decoupled_kd", "decoupled-kd", " DKD "):
        term = knowledge.get(f"{name}:temperature=4,beta=8,alpha=0")
        assert type(term) is DecoupledKD
        assert (term.temperature, term.beta, term.alpha) == (4.0, 8.0, 0.0)
    assert type(knowledge.get("kd")) is SoftTargets  # an alias
    assert knowledge.get("soft_targets:output=1").output_selector == 1
    assert knowledge.get("soft_targets:output=logits").output_selector == "logits"
    assert knowledge.get("soft_targets:output='logits'").output_selector == "logits"
    assert knowledge.get("soft_targets:output=none").output_selector is None
    assert knowledge.get("soft_targets:weight=1e-2,name=kd2").weight == 0.01
    hint = knowledge.get("hint:student_layer=backbone/conv4_block6_out,teacher_layer=t.x,"
                         "adapter=None")
    assert (hint.student_layer, hint.teacher_layer, hint.adapter_mode) == (
        "backbone/conv4_block6_out", "t.x", None)
    at = knowledge.get("attention:pairs=[(s2,t2),('backbone/s3', \"t-3\")],p=1,beta=0")
    assert at.pairs == [("s2", "t2"), ("backbone/s3", "t-3")] and (at.p, at.beta) == (1.0, 0.0)


def test_spec_values_of_every_literal_kind(scratch_registry):
    define_probe()
    probe = knowledge.get("probe:value=(1,-2.5,x),other=[True,none,'a,b'],flag=true,rate=+3")
    assert probe.value == (1, -2.5, "x") and probe.other == [True, None, "a,b"]
    assert probe.flag is True and probe.rate == 3.0
    probe = knowledge.get("sonde:value='1',other=\"quoted: yes\",flag=False")
    assert probe.value == "1" and probe.other == "quoted: yes" and probe.flag is False
    assert knowledge.get("probe:value=-x").value == "-x"  # not a literal: the text itself
    with pytest.raises(ValueError, match="cannot read `value=\\[a/b\\]` as a Python literal.*quote"):
        knowledge.get("probe:value=[a/b]")


def test_unknown_name_lists_close_matches_and_every_name():
    with pytest.raises(ValueError, match="Unknown knowledge term 'dkdd'. Did you mean 'dkd'") as e:
        knowledge.get("dkdd:beta=2")
    for name in knowledge.available():
        assert name in str(e.value)
    with pytest.raises(ValueError, match="Unknown knowledge term 'zzz'. Registered terms: attention"):
        knowledge.get("zzz")


def test_unknown_argument_lists_the_accepted_arguments():
    with pytest.raises(ValueError, match=r"DecoupledKD \('dkd'\) has no argument 'betta' "
                                         r"\(did you mean 'beta'\?\). Its arguments: alpha=1.0, "
                                         r"beta=8.0, temperature=4.0, weight=1.0, output=None, "
                                         r"name=None, standardize=False, "):
        knowledge.get("dkd:betta=2")
    # Layer keyword arguments (dtype, trainable) are not term arguments.
    with pytest.raises(ValueError, match="has no argument 'dtype'"):
        knowledge.get("soft_targets:dtype=float16")


def test_missing_required_arguments_show_a_complete_spec():
    with pytest.raises(ValueError, match=r"Hint \('hint'\) needs `student_layer`, `teacher_layer`: "
                                         r"e.g. 'hint:student_layer=...,teacher_layer=...'"):
        knowledge.get("hint")
    with pytest.raises(ValueError, match="needs `teacher_layer`"):
        knowledge.get("hint:student_layer=a")


def test_bad_values_are_the_constructors_errors():
    with pytest.raises(TypeError, match="SoftTargets: `temperature` must be a number, got 'four'"):
        knowledge.get("soft_targets:temperature=four")
    with pytest.raises(ValueError, match="DecoupledKD: `beta` must be a finite number >= 0"):
        knowledge.get("dkd:beta=-1")


def test_get_of_configs():
    term = DecoupledKD(beta=3.0, name="d")
    again = knowledge.get(keras.saving.serialize_keras_object(term))
    assert type(again) is DecoupledKD and again.get_config() == term.get_config()
    short = knowledge.get({"class_name": "dkd", "config": {"beta": 3.0, "name": "d"}})
    assert short.get_config() == term.get_config()
    with pytest.raises(ValueError, match="not a serialized knowledge term.*from_config"):
        knowledge.get(term.get_config())
    with pytest.raises(TypeError, match="deserializes to a Dense, not a knowledge term"):
        knowledge.get(keras.saving.serialize_keras_object(keras.layers.Dense(2)))


def test_get_of_other_things():
    term = Hint("a", "b")
    assert knowledge.get(term) is term and knowledge.as_knowledge(term) is term
    assert isinstance(knowledge.get(keras.distillation.FeatureDistillation(
        teacher_layer_name="t", student_layer_name="s")), KerasDistillationLoss)
    with pytest.raises(ValueError, match="describes 2 knowledge terms.*get_list"):
        knowledge.get("soft_targets,dkd")
    with pytest.raises(TypeError, match="class SoftTargets, not an instance.*'soft_targets'"):
        knowledge.get(SoftTargets)
    with pytest.raises(TypeError, match="3 \\(a int\\) is not a knowledge term.*spec string"):
        knowledge.get(3)


# ----- available and describe ---------------------------------------------------------------


def test_available_maps_canonical_names_to_classes():
    terms = knowledge.available()
    assert list(terms) == sorted(terms)
    assert terms["soft_targets"] is SoftTargets and terms["dkd"] is DecoupledKD
    assert terms["attention"] is AttentionTransfer
    assert all(cls.default_name == name for name, cls in terms.items())
    terms.pop("dkd")  # a copy: the registry is unchanged
    assert "dkd" in knowledge.available()


def test_describe_has_one_entry_per_term_with_its_arguments():
    text = knowledge.describe()
    lines = text.splitlines()
    assert lines[0].startswith("Knowledge terms: name or name:argument=value")
    assert len(lines) == 1 + 3 * len(knowledge.available())
    for name, cls in knowledge.available().items():
        i = lines.index(next(line for line in lines if line.startswith(f"{name} ({cls.__name__}")))
        assert lines[i + 1].strip() == cls.__doc__.strip().splitlines()[0]
        assert lines[i + 2].startswith("    arguments: ")
        assert "weight=1.0" in lines[i + 2] and "name=None" in lines[i + 2]
    assert "soft_targets (SoftTargets; also kd, hinton)" in text
    assert "    arguments: temperature=4.0, weight=1.0, output=None, name=None" in text
    assert "student_layer (required), teacher_layer (required), adapter='auto'" in text


# ----- registration by definition -----------------------------------------------------------


def test_defining_a_term_registers_it(scratch_registry):
    Probe = define_probe()
    assert knowledge.available()["probe"] is Probe
    assert base.lookup("Probe") is Probe and base.lookup("sonde") is Probe
    probe = knowledge.get("probe:rate=2")
    assert type(probe) is Probe and probe.rate == 2.0 and probe.name == "probe"
    config = keras.saving.serialize_keras_object(probe)
    assert config["registered_name"] == f"{Probe.__module__}>Probe"  # a user's package
    assert keras.saving.deserialize_keras_object(config).get_config() == probe.get_config()
    assert "probe (Probe; also sonde)" in knowledge.describe()
    define_probe()  # the same class defined again (a re-run cell) replaces itself


def test_a_taken_name_is_refused(scratch_registry):
    with pytest.raises(ValueError, match="Copy .* cannot register the name 'dkd': DecoupledKD "
                                         r"\(tfkd.knowledge.response\) is registered as 'dkd'"):
        class Copy(Knowledge):
            default_name = "dkd"
    with pytest.raises(ValueError, match="cannot register the name 'soft_targets'"):
        class SoftTargets(Knowledge):  # noqa: F811 - the clash is the point
            default_name = "my_soft_targets"
    assert knowledge.available()["dkd"] is DecoupledKD


def test_default_names_must_be_snake_case(scratch_registry):
    with pytest.raises(ValueError, match="default_name must be a snake_case name.*'my_kd'"):
        class MyKD(Knowledge):
            default_name = "My KD"


def test_opting_out_and_shared_plumbing(scratch_registry):
    class Hidden(SoftTargets, register=False):
        default_name = "hidden"

    class _Plumbing(Knowledge):
        default_name = "plumbing"

    class Inherited(SoftTargets):  # no default_name of its own: not a new registry name
        pass

    assert not {"hidden", "plumbing"} & set(knowledge.available())
    assert Inherited not in knowledge.available().values()
    # Public classes are still Keras-serializable; private ones are not registered at all.
    for cls in (Hidden, Inherited):
        config = keras.saving.serialize_keras_object(cls(temperature=2.0))
        assert type(keras.saving.deserialize_keras_object(config)) is cls
    assert f"{_Plumbing.__module__}>_Plumbing" not in keras.saving.get_custom_objects()

"""Each parameter declared once: one parser per kind with one clear message per mistake,
bounds that refuse nan, inf and huge values, the recorded parameters, and a fuzz over
every declared parameter of every method (binding, and a few runs of the CLI)."""

from __future__ import annotations

import inspect
import math
import re
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.app.cli import main
from engine.core.errors import MethodInputError, ParamError
from engine.core.jobs import drive
from engine.data.samples import sample_path
from engine.methods import METHODS, MethodContext
from engine.methods.params import KINDS, LIST_LIMIT, TEXT_LIMIT, Param, require_channel, require_position, shown
from tests.conftest import make_tiny_model

BRICK = str(sample_path("brick"))


@pytest.mark.parametrize("spec", list(METHODS.values()), ids=list(METHODS))
def test_every_method_binds_with_nothing_given(spec):
    """No field is required: every default is a value the method runs with (style and
    fast-style-train's shipped picture, adversarial's least-likely class)."""
    bound = spec.bind({})
    assert dict(bound) == {name: value for name, value in spec.defaults().items()}


def param(method_id: str, name: str) -> Param:
    return METHODS[method_id].param(name)


def refused(param_: Param, value) -> str:
    with pytest.raises(ParamError) as caught:
        param_.coerce(value)
    assert caught.value.name == param_.name
    return str(caught.value)


# -- the structured kinds: good values, and each bad value's message ----------------------------
@pytest.mark.parametrize("given, expected", [
    ("3,5", (3, 5)), (" 3 ; 5 ", (3, 5)), ("3 5", (3, 5)), ((3, 5), (3, 5)), ([0, 0], (0, 0)), ("", None), (None, None),
])
def test_a_position_is_a_row_and_a_column(given, expected):
    assert param("guided-backprop", "at").coerce(given) == expected


@pytest.mark.parametrize("given, message", [
    ("three", "--at takes a row and a column of the layer's map as Y,X, such as 3,5; not 'three'"),
    ("1,2,3", "--at takes a row and a column"),
    ("1.5,2", "--at takes a row and a column"),
    (3.5, "--at takes a row and a column"),
    ("-1,2", "--at -1,2 is outside the map: rows and columns count from 0"),
])
def test_a_bad_position_says_how_to_write_one(given, message):
    assert refused(param("class-viz", "at"), given).startswith(message)


@pytest.mark.parametrize("given, expected", [
    ("0.7,0.3", (0.7, 0.3)), ("1", (1.0,)), ([2, 1], (2.0, 1.0)), ("1,,2", (1.0, 2.0)), ("", None),
])
def test_weights_are_comma_separated_numbers(given, expected):
    assert param("style", "style_weights").coerce(given) == expected


@pytest.mark.parametrize("given, message", [
    ("a,b", "--style-weights takes weights, numbers separated by commas such as 0.7,0.3; not 'a,b'"),
    ("1,nan", "--style-weights takes weights"),
    ("1,inf", "--style-weights takes weights"),
    ("1,-1", "--style-weights must be non-negative and not all zero, not '1,-1'"),
    ("0,0", "--style-weights must be non-negative and not all zero"),
    ("1e7", "--style-weights must be at most 1e+06, not 1e+07"),
    (",".join(["1"] * (LIST_LIMIT + 1)), f"--style-weights names {LIST_LIMIT + 1} items; at most {LIST_LIMIT} at a time"),
])
def test_bad_weights_say_what_a_blend_takes(given, message):
    assert refused(param("style", "style_weights"), given).startswith(message)
    assert refused(param("fast-style", "style_mix"), given).startswith(message.replace("--style-weights", "--style-mix"))


@pytest.mark.parametrize("given, expected", [
    ({"early": 1}, (("early", 1.0),)), ([("late", 0.5)], (("late", 0.5),)), ("late:-2", (("late", -2.0),)),
])
def test_layer_weights_are_name_weight_pairs(given, expected):
    assert param("dream", "layers").coerce(given) == expected


@pytest.mark.parametrize("given, message", [
    ("early:lots", "--layers cannot read 'early:lots'; write layer:weight pairs separated by commas"),
    ("early:inf", "--layers cannot read 'early:inf'"),
    (":0.5", "--layers cannot read ':0.5'"),
    ("early:5000", "--layers must be at most 1000, not 5000"),
    (", ,", "--layers names no layer"),
])
def test_bad_layer_weights_say_how_to_write_them(given, message):
    assert refused(param("dream", "layers"), given).startswith(message)


@pytest.mark.parametrize("given, expected", [
    ("0-3,7", (0, 1, 2, 3, 7)), ("5,5,1", (5, 1)), (3, (3,)), ([1, 2], (1, 2)), ("0 - 2", (0, 1, 2)), ("", tuple(range(8))),
])
def test_channels_are_indices_and_ranges(given, expected):
    assert param("patches", "channels").coerce(given) == expected


@pytest.mark.parametrize("given, message", [
    ("a-b", "--channels takes indices and ranges such as 0-7 or 3,17,42, not 'a-b'"),
    ("7-0", "--channels takes indices and ranges"),
    ("-3", "--channels must not be negative, not -3"),
    ("0-99999999999", "--channels names 100000000000 channels; at most 64 at a time"),
    ("0-64", "--channels names 65 channels; at most 64 at a time"),
])
def test_bad_channels_say_how_to_write_them(given, message):
    assert refused(param("patches", "channels"), given).startswith(message)


@pytest.mark.parametrize("given, expected", [("20x15", (20, 15)), (" 3 X 4 ", (3, 4)), ((5, 6), (5, 6)), ("", None)])
def test_a_grid_is_columns_by_rows(given, expected):
    assert param("embed", "grid").coerce(given) == expected


@pytest.mark.parametrize("given, message", [
    ("twenty", "--grid must look like 20x15 (columns x rows), not 'twenty'"),
    ("0x5", "--grid must be between 1x1 and 100x100, not 0x5"),
    ("101x1", "--grid must be between 1x1 and 100x100, not 101x1"),
])
def test_a_bad_grid_says_how_to_write_one(given, message):
    assert refused(param("embed", "grid"), given) == message


def test_layer_and_method_lists_are_comma_separated_names():
    strip, methods = param("inversion", "strip"), param("sanity-check", "methods")
    assert strip.coerce("early, late") == ("early", "late") and strip.coerce(["a"]) == ("a",)
    assert methods.coerce("saliency,gradcam") == ("saliency", "gradcam") and methods.coerce("") is None
    assert refused(strip, ", ,") == "--strip names no layer: give layers separated by commas, e.g. early,late"
    assert refused(methods, " , ").startswith("--methods names no method: give methods separated by commas")


# -- numbers, choices and text ---------------------------------------------------------------------
@pytest.mark.parametrize("given, message", [
    ("abc", "--steps expects a whole number, not 'abc'"),
    ("2.5", "--steps expects a whole number, not '2.5'"),
    (2.5, "--steps expects a whole number, not 2.5"),
    (True, "--steps expects a whole number, not True"),
    ("9" * 5000, "--steps expects a whole number, not '9999"),
    (0, "--steps must be at least 1, not 0"),
    (10**30, "--steps must be at most 1000, not 1000000000000000000000000000000"),
])
def test_whole_numbers_are_whole_and_bounded(given, message):
    assert refused(param("dream", "steps"), given).startswith(message)
    assert param("dream", "steps").coerce(3.0) == 3 and param("dream", "steps").coerce(" 7 ") == 7


NON_FINITE = ["nan", float("nan"), "inf", float("inf"), "-inf", float("-inf"), "1e999", 10**400]


@pytest.mark.parametrize("given", NON_FINITE, ids=["nan", "float-nan", "inf", "float-inf", "-inf", "float--inf", "1e999",
                                                   "10**400"])
def test_no_float_parameter_takes_nan_or_infinity(given):
    floats = [declared for spec in METHODS.values() for declared in spec.params if declared.kind == "float"]
    assert len(floats) >= 30
    for declared in floats:
        assert refused(declared, given) == f"{declared.flag} must be a finite number, not {shown(given)}"


def test_numbers_below_above_or_beyond_their_bounds_are_refused():
    lr = param("class-viz", "lr")
    assert refused(lr, -1) == "--lr must not be negative, not -1"
    assert refused(lr, 11) == "--lr must be at most 10, not 11"
    assert refused(lr, "fast") == "--lr expects a number, not 'fast'"
    assert refused(param("adversarial", "eps"), 0) == "--eps must be above 0, not 0"
    assert refused(param("class-viz", "seed"), -1) == "--seed must not be negative, not -1"
    assert refused(param("class-viz", "seed"), 2**31) == "--seed must be at most 2147483647, not 2147483648"


def test_booleans_choices_targets_channels_and_text():
    overlay, sort, target = param("saliency", "overlay"), param("activations", "sort"), param("saliency", "target")
    assert overlay.coerce("yes") is True and overlay.coerce(0) is False
    assert refused(overlay, "maybe") == "--overlay expects true or false, not 'maybe'"
    assert refused(overlay, 2) == "--overlay expects true or false, not 2"
    assert refused(sort, "median") == "--sort must be one of none, mean, not 'median'"
    assert target.coerce(3) == "3" and target.coerce("  tabby ") == "tabby" and target.coerce("") is None
    assert refused(target, "-1") == "--target must not be negative, not -1: class indices start at 0"
    assert refused(target, 2.5) == "--target expects a class index or label, not 2.5"
    channel = param("activations", "channel")
    assert channel.coerce(None) is None and channel.coerce("4") == 4
    assert refused(channel, -1) == "--channel must not be negative, not -1: channels count from 0"
    layer = param("activations", "layer")
    assert refused(layer, "a\x00b") == "--layer must not contain control characters, not 'a\\x00b'"
    assert refused(layer, "x" * (TEXT_LIMIT + 1)) == f"--layer is too long ({TEXT_LIMIT + 1} characters; at most {TEXT_LIMIT})"
    style = param("style", "style")
    assert style.coerce("a.png") == ("a.png",) and style.coerce(["a.png", " ", "b.png"]) == ("a.png", "b.png")
    assert style.coerce("a.png; b.png") == ("a.png", "b.png") and style.coerce(["a;b.png"]) == ("a;b.png",)
    assert style.coerce([]) == ("stained-glass",)  # a list naming nothing: the default picture
    with pytest.raises(MethodInputError, match="filters has no option nope"):
        METHODS["filters"].bind({"nope": 1})


def test_checks_that_need_the_model_share_one_wording():
    assert str(pytest.raises(ParamError, require_channel, "channel", 16, 16, "features.3").value) == \
        "--channel must be between 0 and 15, not 16: features.3 has channels 0-15"
    assert str(pytest.raises(ParamError, require_position, "at", (9, 0), (8, 8), "features.3").value) == \
        "--at 9,0 is outside features.3's 8x8 map: rows 0-7, columns 0-7"
    assert require_position("at", (7, 7), (8, 8), "features.3") == (7, 7)


# One value of each kind, as bound, for the round trips through text (here) and the form (tests/test_gui.py).
BOUND_SAMPLES = {
    "int": 7, "float": 0.123456789, "bool": True, "choice": None, "layer": "features.3", "target": "3", "channel": 5,
    "dataset": "digits", "image": "/tmp/a.png", "images": ("a.png", "b.png"), "file": "/tmp/style.pt",
    "save_file": "/tmp/out.pt", "position": (3, 5), "weights": (0.7, 0.3),
    "layer_weights": (("early", 1.0), ("late", 0.5)), "channels": (0, 1, 2, 9), "grid": (20, 15),
    "layers": ("early", "late"), "methods": ("saliency", "gradcam"),
}


def test_every_kind_is_declared_by_some_method_and_has_a_sample():
    assert set(BOUND_SAMPLES) == set(KINDS)
    used = {declared.kind for spec in METHODS.values() for declared in spec.params}
    assert used == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_written_as_text_reads_back_the_same(kind):
    declared = Param("x", kind, choices=("a", "b") if kind == "choice" else ())
    value = BOUND_SAMPLES[kind] if kind != "choice" else "b"
    assert declared.coerce(declared.text(value)) == value
    assert declared.coerce(value) == value  # binding a bound value again changes nothing


# -- each parameter stated once -------------------------------------------------------------------
@pytest.mark.parametrize("spec", list(METHODS.values()), ids=list(METHODS))
def test_a_method_states_its_parameters_once(spec):
    """run(ctx, p) with no defaults of its own, no Result.params built by hand, every
    declared default binds, and the shared Params are the same objects everywhere."""
    signature = inspect.signature(spec.run)
    assert list(signature.parameters) == ["ctx", "p"]
    assert all(parameter.default is inspect.Parameter.empty for parameter in signature.parameters.values())
    source = inspect.getsource(inspect.getmodule(spec.run_many or spec.run))  # run_many's run is params.one_photo
    assert re.findall(r"\bparams\s*=\s*(?!\()", source) == [], "Result.params is filled by MethodSpec.start"
    assert re.findall(r"\bparse_\w+\(", source) == [], "structured values are parsed by their Param's kind"
    defaults = spec.defaults()
    assert list(defaults) == [declared.name for declared in spec.params]
    assert all(declared.help for declared in spec.params)


RESOLVED = {  # what each run writes back over the bound values: a keyword's path, the top-1 index, ...
    "filters": {"layer"}, "activations": {"layer"}, "saliency": {"target"}, "smoothgrad": {"target", "batch"},
    "integrated-gradients": {"target", "batch"}, "gradcam": {"target", "layer"}, "guided-gradcam": {"target", "layer"},
    "guided-backprop": {"target"}, "occlusion": {"target", "batch"},
    "class-viz": {"target", "layer", "channel", "at", "size", "diversity_layer"},
    "inversion": {"layer", "strip"}, "dream": {"layer", "layers"},
}
CHEAP = {"smoothgrad": {"samples": 2}, "integrated-gradients": {"steps": 2}, "occlusion": {"window": 8, "stride": 8},
         "class-viz": {"steps": 1, "size": 16, "target": 1}, "inversion": {"steps": 1}, "dream": {"steps": 1, "octaves": 1}}


@pytest.mark.parametrize("method_id", list(RESOLVED))
def test_the_recorded_parameters_are_the_bound_ones_with_what_the_run_resolved(method_id):
    from PIL import Image

    from engine.data.images import LoadedImage

    spec = METHODS[method_id]
    image = LoadedImage(Image.effect_noise((16, 16), 64).convert("RGB"), path="noise.png")
    bound = spec.bind(CHEAP.get(method_id, {}))
    result = drive(spec.start(MethodContext(model=make_tiny_model(), image=image), bound))
    assert list(result.params) == [declared.name for declared in spec.params]
    kept = {name: value for name, value in bound.recorded().items() if name not in RESOLVED[method_id]}
    assert {name: result.params[name] for name in kept} == kept
    if "target" in RESOLVED[method_id]:
        assert result.params["target"] == result.target["index"]
    if "layer" in RESOLVED[method_id] and method_id != "class-viz":
        assert result.params["layer"] == result.layer


def test_bound_parameters_are_read_only_but_for_record():
    bound = METHODS["filters"].bind({"page": 2})
    assert bound.page == bound["page"] == 2
    with pytest.raises(AttributeError, match="read-only"):
        bound.page = 3
    with pytest.raises(AttributeError, match="no parameter 'steps'"):
        bound.steps
    with pytest.raises(AttributeError, match="no parameter steps to record"):
        bound.record(steps=1)
    bound.record(layer="stem.conv")
    assert bound.layer == "stem.conv" and bound.recorded() == {"layer": "stem.conv", "scale": "auto", "page": 2}


# -- the fuzz: whatever is given, binding succeeds inside the bounds or says why in one line ----------
HOSTILE = [math.nan, math.inf, -math.inf, 1e308, -1e308, 10**20, -(10**20), 2**63, -1, 0, -0.0, 0.5, 1, 3, True, False,
           "", " ", "nan", "inf", "-inf", "1e999", "abc", "١٢٣", "\x00", "a\nb", "💥", "0-7", "3,5", "20x15", "early:1",
           "-5", "99999999999999999999", "1,2,3", "x" * 5000, None, [], [1, 2], ["a.png"], {}, {"a": 1}, (1.5, "b")]
hostile = st.one_of(st.sampled_from(HOSTILE), st.floats(), st.integers(), st.text(max_size=12),
                    st.lists(st.one_of(st.integers(-5, 5), st.floats(), st.text(max_size=4)), max_size=4))
FIELDS = [(spec.id, declared.name) for spec in METHODS.values() for declared in spec.params]


def assert_inside(declared: Param, value) -> None:
    """``value`` is what ``declared`` may hold: its kind's type, finite, within its bounds."""
    def number_inside(number):
        assert isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number)
        assert declared.minimum is None or number >= declared.minimum
        assert declared.maximum is None or number <= declared.maximum
        assert declared.above is None or number > declared.above

    kind = declared.kind
    if value is None:
        assert kind in ("channel", "target") or declared.default is None
    elif kind in ("int", "float"):
        number_inside(value)
        assert isinstance(value, int if kind == "int" else float)
    elif kind == "bool":
        assert isinstance(value, bool)
    elif kind == "choice":
        assert value in declared.choices
    elif kind == "channel":
        assert isinstance(value, int) and value >= 0
        number_inside(value)
    elif kind in ("position", "grid"):
        assert len(value) == 2 and all(isinstance(v, int) and v >= 0 for v in value)
        if kind == "grid":
            for cell in value:
                number_inside(cell)
    elif kind in ("weights", "layer_weights", "channels", "images", "layers", "methods"):
        assert isinstance(value, tuple) and 0 < len(value) <= (declared.most or LIST_LIMIT)
        numbers = [w for _, w in value] if kind == "layer_weights" else value if kind in ("weights", "channels") else []
        for number in numbers:
            number_inside(number)
        if kind == "weights":
            assert sum(value) > 0 and min(value) >= 0
        if kind == "channels":
            assert min(value) >= 0 and len(set(value)) == len(value)
    else:
        assert isinstance(value, str) and len(value) <= TEXT_LIMIT and len(value.splitlines()) <= 1
        assert not any(unicodedata.category(c) == "Cc" for c in value)


@settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=hostile)
def test_binding_any_value_succeeds_inside_the_bounds_or_refuses_in_one_line(field, value):
    method_id, name = field
    spec = METHODS[method_id]
    try:
        bound = spec.bind({name: value})
    except MethodInputError as error:
        message = str(error)
        assert message and "\n" not in message and len(message) < 400 and message.isprintable()
        if isinstance(error, ParamError):
            assert error.name in {declared.name for declared in spec.params}
        return
    assert_inside(spec.param(name), bound[name])
    assert dict(spec.bind(dict(bound))) == dict(bound)  # binding it again changes nothing


# -- the command line: exit 2 and one line for every escape, and a small fuzz ------------------------
ESCAPES = [
    ["run", "class-viz", "--lr", "nan"], ["run", "class-viz", "--lr", "inf"], ["run", "class-viz", "--lr=-inf"],
    ["run", "class-viz", "--lr", "1e999"], ["run", "texture", "--lr", "nan"], ["run", "style", "--lr", "nan"],
    ["run", "style", "--style-scale", "nan", "--style", BRICK], ["run", "dream", "--octave-scale", "nan"],
    ["run", "dream", "--lr", "nan"], ["run", "smoothgrad", "--noise", "nan"], ["run", "saliency", "--seed", "abc"],
    ["run", "smoothgrad", "--seed", "abc"], ["run", "class-viz", "--seed=-1"],
    ["run", "class-viz", "--steps", "99999999999999999999"], ["run", "dream", "--size", "100000"],
    ["run", "occlusion", "--window=-5"], ["run", "dream", "--fps", "nan"], ["run", "patches", "--channels", "0-9999999999"],
    ["run", "guided-backprop", "--at", "nan"], ["run", "embed", "--grid", "100000x100000"],
    ["layers", "--size", "100000"], ["layers", "--size=-5"], ["layers", "--size", "abc"],
]


@pytest.mark.parametrize("argv", ESCAPES, ids=[" ".join(a[1:3]) for a in ESCAPES])
def test_bad_flags_exit_2_with_one_line_before_any_work(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and err.startswith("error: --")


# Methods whose valid runs take a second at most, with the flag fuzzed.
CLI_CASES = [("filters", "--page", []), ("class-viz", "--lr", ["--steps", "1", "--size", "16", "--target", "1"]),
             ("class-viz", "--jitter", ["--steps", "1", "--size", "16", "--target", "1"]),
             ("dream", "--octave-scale", ["--steps", "1", "--octaves", "2", "--size", "24"])]


@settings(max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(CLI_CASES), text=st.one_of(st.sampled_from([v for v in HOSTILE if isinstance(v, str)]),
                                                       st.floats().map(repr), st.integers().map(str)))
def test_the_cli_exits_0_or_2_with_one_line_whatever_a_flag_says(case, text, capsys, chelsea_path):
    method_id, flag, extra = case
    code = main(["run", method_id, "--image", chelsea_path, *extra, f"{flag}={text}"])
    out, err = capsys.readouterr()
    assert code in (0, 2) and "Traceback" not in err
    if code == 0:
        assert len(out.strip().splitlines()) == 1
    else:
        assert out == "" and len(err.strip().splitlines()) == 1


def test_photos_run_together_record_their_own_parameters_and_refusals():
    from engine.core.jobs import Result
    from engine.methods.params import MethodSpec, one_photo

    def run_many(contexts, bound):
        yield from ()
        outcomes = []
        for number, p in enumerate(bound):
            p.record(target=number)  # each photo resolves its own class
            outcomes.append(MethodInputError(f"photo {number} is blank") if number == 1 else Result(display=None, array=None))
        return outcomes

    spec = MethodSpec(id="pair", title="Pair", summary="", params=(Param("target", "int", None, "class"),),
                      run=one_photo(run_many), run_many=run_many, gradients=False)
    model = make_tiny_model()
    first, blank, third = drive(spec.start_many([MethodContext(model=model, image=None) for _ in range(3)], {}))
    assert first.params == {"target": 0} and third.params == {"target": 2}
    assert isinstance(blank, MethodInputError)  # that photo's alone
    assert drive(spec.start(MethodContext(model=model, image=None), {})).params == {"target": 0}  # a group of one

    def refuse_all(contexts, bound):
        yield from ()
        return [MethodInputError("this photo is blank") for _ in contexts]

    refusing = MethodSpec(id="blank", title="Blank", summary="", params=(), run=one_photo(refuse_all),
                          run_many=refuse_all, gradients=False)
    with pytest.raises(MethodInputError, match="this photo is blank"):  # one photo's refusal is its run's error
        drive(refusing.start(MethodContext(model=model, image=None), {}))

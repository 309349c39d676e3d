"""Knowledge terms by name: `get`, `get_list`, `available`, `describe`.

A term registers itself when its class is defined (see `Knowledge`): its canonical name is
its `default_name` (`soft_targets`, `dkd`, `hint`, ...); its snake_case class name
(`decoupled_kd`) and its `aliases` work too. A spec is the name, optionally followed by
keyword arguments:

    soft_targets
    dkd:temperature=4,beta=8
    hint:student_layer=stage3,teacher_layer=backbone/conv4_block6_out
    attention:pairs=[(s2,t2),(s3,t3)],beta=500
    dkd:weight=warmup(1.0,2000)

Values are Python literals (numbers, True/False/None, quoted strings, lists and tuples);
lower-case true/false/none work too, `warmup(weight, steps)` is a weight schedule
(`tfkd.knowledge.warmup`), and a value that is no literal (`stage3`,
`backbone/conv4_block6_out`) is a string. Inside a list or tuple a bare word is a string as
well; quote names with `/` or `-` there.
"""
import ast
import difflib
import inspect

import keras

from tfkd.knowledge import base
from tfkd.knowledge.base import Knowledge
from tfkd.knowledge.keras_compat import KerasDistillationLoss
from tfkd.knowledge.keras_compat import is_keras_distillation_loss

_WORDS = {"true": True, "false": False, "none": None}
_SCHEDULES = {"warmup": base.warmup}
_SPEC_FORM = ("a spec is `name` or `name:argument=value,argument=value`, e.g. "
              "'dkd:temperature=4,beta=8'")


def available():
    """Every registered knowledge term: `{canonical name: class}`, sorted by name.

    Example:

    >>> import tfkd
    >>> terms = tfkd.knowledge.available()
    >>> terms["soft_targets"].__name__, terms["dkd"].__name__
    ('SoftTargets', 'DecoupledKD')
    """
    return base.registered()


def get(identifier):
    """Returns a knowledge term from a term, a `keras.distillation` loss, a config or a spec.

    - a `Knowledge` instance: returned as is;
    - a `keras.distillation.LogitsDistillation` / `FeatureDistillation`: wrapped in
      `KerasDistillationLoss`;
    - a dict: a serialized term (`keras.saving.serialize_keras_object(term)`), or
      `{"class_name": <registered name>, "config": {...}}`;
    - a string: a spec, `name` or `name:argument=value,...` (see the module docstring).

    Errors name the problem: an unknown term lists close matches and all registered names,
    an unknown argument lists the term's arguments, a malformed spec shows the form.

    Example:

    >>> import tfkd
    >>> term = tfkd.knowledge.get("dkd:temperature=4,beta=8")
    >>> type(term).__name__, term.temperature, term.beta, term.name
    ('DecoupledKD', 4.0, 8.0, 'dkd')
    >>> tfkd.knowledge.get(term) is term
    True
    >>> tfkd.knowledge.get("dkd:betta=8")
    Traceback (most recent call last):
    ...
    ValueError: DecoupledKD ('dkd') has no argument 'betta' (did you mean 'beta'?)...
    """
    if isinstance(identifier, Knowledge):
        return identifier
    if is_keras_distillation_loss(identifier):
        return KerasDistillationLoss(identifier)
    if isinstance(identifier, type) and issubclass(identifier, Knowledge):
        raise TypeError(
            f"Got the class {identifier.__name__}, not an instance: write "
            f"{identifier.__name__}(...) in `knowledge=[...]`, or the spec "
            f"{identifier.default_name!r}."
        )
    if isinstance(identifier, dict):
        return _from_config(identifier)
    if isinstance(identifier, str):
        terms = get_list(identifier)
        if len(terms) != 1:
            raise ValueError(
                f"{identifier!r} describes {len(terms)} knowledge terms; `get` builds one. Use "
                "tfkd.knowledge.get_list for a comma-separated list."
            )
        return terms[0]
    raise TypeError(
        f"{identifier!r} (a {type(identifier).__name__}) is not a knowledge term. Pass "
        "tfkd.knowledge terms (e.g. tfkd.knowledge.SoftTargets(temperature=4.0), "
        "Hint('student_layer', 'teacher_layer')), a spec string such as "
        "'dkd:temperature=4', a serialized term, or keras.distillation.LogitsDistillation / "
        "FeatureDistillation instances."
    )


def get_list(spec):
    """Returns the terms of a comma-separated spec list, as command-line flags give it.

    A piece with `:` (or with no `=`) starts a term; a piece with `=` and no `:` continues
    the previous term's arguments, so that

        "soft_targets,hint:student_layer=stage3,teacher_layer=stage3"

    is `[SoftTargets(), Hint(student_layer="stage3", teacher_layer="stage3")]`. A list or
    tuple is read item after item the same way (a flag parser that split the string at
    its commas gives the same terms), and may also hold terms, configs or
    `keras.distillation` losses. An empty string gives `[]`.

    Example:

    >>> import tfkd
    >>> terms = tfkd.knowledge.get_list("soft_targets:temperature=2,hint:student_layer=s3,teacher_layer=t3")
    >>> [(type(t).__name__, t.name) for t in terms]
    [('SoftTargets', 'soft_targets'), ('Hint', 'hint')]
    >>> terms[1].student_layer, terms[1].teacher_layer
    ('s3', 't3')
    """
    items = [spec] if isinstance(spec, str) else spec
    if not isinstance(items, (list, tuple)):
        return [get(items)]
    groups = _groups(items)
    return [get(g) if not isinstance(g, list) else _build(*g) for g in groups]


def split_specs(spec):
    """A comma list of specs -> one spec string per term, as `get_list` reads it.

    >>> import tfkd
    >>> tfkd.knowledge.split_specs("soft_targets,hint:student_layer=s3,teacher_layer=t3")
    ['soft_targets', 'hint:student_layer=s3,teacher_layer=t3']
    """
    out = []
    for group in _groups([spec] if isinstance(spec, str) else list(spec)):
        if not isinstance(group, list):
            raise TypeError(f"split_specs reads spec strings, got {group!r}.")
        name, pieces, _ = group
        out.append(name + (":" + ",".join(p.strip() for p in pieces) if pieces else ""))
    return out


def spec_arguments(spec):
    """One term's spec -> (name, {argument: value text}), without building the term (for
    tools that fill in defaults, e.g. the recipes' older flags).

    >>> import tfkd
    >>> tfkd.knowledge.spec_arguments("dkd:temperature=4,beta=8")
    ('dkd', {'temperature': '4', 'beta': '8'})
    """
    name, _, args = spec.partition(":")
    found = {}
    for piece in _split(args, ",", spec) if args.strip() else []:
        equals = _find(piece, "=")
        if equals <= 0:
            raise _malformed(spec, f"{piece.strip()!r} is not `argument=value`")
        found[piece[:equals].strip()] = piece[equals + 1:].strip()
    return name.strip(), found


def describe():
    """A multi-line description of every registered term, for `--helpfull` and the REPL.

    One entry per term: its name (and the other names it answers to), its class, the first
    line of its docstring, and its constructor arguments with their defaults.

    Example:

    >>> import tfkd
    >>> print(tfkd.knowledge.describe())
    Knowledge terms: name or name:argument=value,... (e.g. dkd:temperature=4,beta=8)
    ...
    hint (Hint)
        FitNets hint: a student feature, through a learned adapter, regresses a teacher feature.
        arguments: student_layer (required), teacher_layer (required), adapter='auto', weight=1.0, name=None
    ...
    """
    lines = ["Knowledge terms: name or name:argument=value,... (e.g. dkd:temperature=4,beta=8)"]
    for name, cls in available().items():
        others = [n for n in base.names_of(cls) if n != name]
        also = f"; also {', '.join(others)}" if others else ""
        doc = (inspect.getdoc(cls) or "").strip().splitlines()
        lines.append(f"{name} ({cls.__name__}{also})")
        lines.append(f"    {doc[0] if doc else '(no docstring)'}")
        args = ", ".join(
            f"{p.name} (required)" if p.default is inspect.Parameter.empty
            else f"{p.name}={p.default!r}"
            for p in _parameters(cls).values())
        lines.append(f"    arguments: {args}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def _groups(items):
    """Each item: a non-string identifier as is, or [name, [argument pieces], spec]."""
    groups = []
    for item in items:
        if not isinstance(item, str):
            groups.append(item)
            continue
        if not item.strip():
            continue
        for piece in _split(item, ",", item):
            piece = piece.strip()
            if not piece:
                raise _malformed(item, "an empty entry between commas")
            colon, equals = _find(piece, ":"), _find(piece, "=")
            if equals >= 0 and (colon < 0 or equals < colon):
                # `argument=value` without a name: the previous term's next argument.
                if not groups or not isinstance(groups[-1], list):
                    raise _malformed(item, f"{piece!r} is an argument with no term before it")
                groups[-1][1].append(piece)
            elif colon >= 0:
                groups.append([piece[:colon].strip(), [piece[colon + 1:]], item])
            else:
                groups.append([piece, [], item])
    return groups


def _from_config(config):
    class_name = config.get("class_name")
    if "config" in config and isinstance(class_name, str) and "registered_name" not in config \
            and "module" not in config:
        # {"class_name": "dkd", "config": {...}}: a registry name, not a Keras class path.
        cls = base.lookup(class_name)
        return cls.from_config(config["config"])
    if class_name is None:
        raise ValueError(
            f"{config!r} is not a serialized knowledge term: pass "
            "keras.saving.serialize_keras_object(term) (a dict with 'class_name' and "
            "'config'), or {'class_name': 'soft_targets', 'config': {...}}. A bare "
            "term.get_config() rebuilds with type(term).from_config(config)."
        )
    term = keras.saving.deserialize_keras_object(config)
    if is_keras_distillation_loss(term):
        return KerasDistillationLoss(term)
    if not isinstance(term, Knowledge):
        raise TypeError(
            f"The config deserializes to a {type(term).__name__}, not a knowledge term.")
    return term


def _malformed(spec, what):
    return ValueError(f"Malformed knowledge spec {spec!r}: {what}; {_SPEC_FORM}.")


def _parameters(cls):
    """The constructor's named parameters (no self, no *args / **kwargs)."""
    params = inspect.signature(cls.__init__).parameters
    return {name: p for i, (name, p) in enumerate(params.items())
            if i > 0 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _build(name, pieces, spec):
    if not name:
        raise _malformed(spec, "the term's name is missing")
    cls = base.lookup(name)
    accepted = _parameters(cls)
    where = f"{cls.__name__} ({cls.default_name!r})"
    kwargs = {}
    if pieces == [""]:
        raise _malformed(spec, f"nothing after {name + ':'!r} ({where} takes "
                               f"{_signature(accepted)})")
    for chunk in pieces:
        for piece in _split(chunk, ",", spec):
            piece = piece.strip()
            equals = _find(piece, "=")
            if equals <= 0:
                raise _malformed(spec, f"{piece!r} is not `argument=value` (the arguments of "
                                       f"{where} are named: {_signature(accepted)})")
            key, text = piece[:equals].strip(), piece[equals + 1:].strip()
            if key not in accepted:
                close = difflib.get_close_matches(key, list(accepted), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"{where} has no argument {key!r}{hint}. Its arguments: "
                    f"{_signature(accepted)}.")
            if key in kwargs:
                raise _malformed(spec, f"`{key}` is given twice")
            kwargs[key] = _value(text, key, spec)
    missing = [p for p, v in accepted.items() if v.default is inspect.Parameter.empty
               and p not in kwargs]
    if missing:
        example = ",".join(f"{p}=..." for p in missing)
        raise ValueError(
            f"{where} needs {', '.join(f'`{p}`' for p in missing)}: e.g. "
            f"'{cls.default_name}:{example}'. Its arguments: {_signature(accepted)}.")
    return cls(**kwargs)


def _signature(params):
    return ", ".join(p if v.default is inspect.Parameter.empty else f"{p}={v.default!r}"
                     for p, v in params.items())


def _value(text, key, spec):
    """A spec value: a Python literal, a bare word in a list, or else the text itself."""
    if not text:
        raise _malformed(spec, f"`{key}=` has no value")
    try:
        return _literal(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError):
        if text[0] in "([{'\"":
            raise _malformed(spec, f"cannot read `{key}={text}` as a Python literal (quote "
                                   "strings that contain '/', '-' or spaces inside brackets, "
                                   "e.g. pairs=[('backbone/conv3', 't3')])") from None
        return text  # a layer name such as backbone/conv4_block6_out


def _literal(node):
    """ast.literal_eval with bare names as strings (and lower-case true/false/none)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):  # True / False / None are ast.Constant already
        return _WORDS.get(node.id, node.id)
    if isinstance(node, (ast.Tuple, ast.List)):
        values = [_literal(e) for e in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in _SCHEDULES and not node.keywords):
        # weight=warmup(1.0,2000): a schedule, the one call a spec may hold.
        try:
            return _SCHEDULES[node.func.id](*(_literal(a) for a in node.args))
        except (TypeError, ValueError) as e:  # a bad schedule is no bare string either
            raise TypeError(f"{node.func.id}(...) in a spec: {e}") from None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    raise ValueError("not a literal")


def _scan(text):
    """Yields (index, char, top_level) for each character, tracking brackets and quotes."""
    depth, quote = 0, None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
            yield i, ch, False
            continue
        if ch in "'\"":
            quote = ch
            yield i, ch, False
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        yield i, ch, depth == 0 and ch not in "([{)]}"


def _find(text, char):
    """Index of the first top-level `char` (outside brackets and quotes), or -1."""
    return next((i for i, ch, top in _scan(text) if top and ch == char), -1)


def _split(text, char, spec):
    """Splits at top-level `char`; unbalanced brackets or quotes are a malformed spec."""
    if _unbalanced(text):
        raise _malformed(spec, "unbalanced brackets or quotes")
    pieces, start = [], 0
    for i, ch, top in _scan(text):
        if top and ch == char:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return pieces


def _unbalanced(text):
    depth, quote = 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                return True
    return depth != 0 or quote is not None

"""Batch files of ``python -m editing --batch``: FlowEdit's edits.yaml and data-prep JSONL rows,
read as untrusted input, into ``Job``s and messages.

A batch file is checked like a typed value. Each problem of a row becomes one message
"FILE:LINE: 'field' ...: what is wrong; what to do", the row is skipped and the other rows still
run. Nothing in a file makes the reader raise, hang or take unbounded memory:

* a .yaml is at most ``MAX_YAML_BYTES`` and ``MAX_YAML_NODES`` nodes (PyYAML builds every node
  in Python, a few hundred bytes each); a .jsonl is read line by line, each line at most
  ``MAX_ROW_BYTES``;
* YAML anchors and aliases ("billion laughs"): a row is built only when its nodes, each alias
  counted every time it is used, are at most ``MAX_ROW_NODES``; a row that contains itself is
  refused;
* values are quoted cut short in messages (``editing.params.shown``; a row's size is bounded
  before it is built, so its repr is too); nesting too deep for Python is a message;
* keys: a FlowEdit parameter or run option (``n_max``, ``T_steps``, ``preset`` ...) is refused,
  since every row runs with the command's settings and the row would silently not get its own;
  another format's name or a near miss of a field (``target_prompt`` in a .yaml, ``masks``) is
  refused with the right name, since an optional field misspelt would silently change the edit;
  other keys are ignored: data-prep and shapes-world rows carry their provenance (``image_sha256``,
  ``changed_span``, labels).

Whether the image and mask files exist is checked when the jobs are planned (``missing_input``),
for batch rows and the command line's ``--image`` alike. Output names never leave the output
folder (``output_path``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from editing.params import MAX_PROMPT_CHARS, FlowEditParams, lone_surrogate, shown

AUTO_MASK = "auto"  # the batch files' and the jobs' word for editing.masks.AutoMask()
MAX_YAML_BYTES = 16 * 2**20  # FlowEdit's edits.yaml files are a few kB; a larger batch reads faster as .jsonl
MAX_YAML_NODES = 500_000  # about 45,000 rows of FlowEdit's layout, ~300 MB of PyYAML nodes
MAX_ROW_NODES = 10_000  # one row as built, aliases expanded: a row is ~10 nodes, a billion laughs 10**9
MAX_ROW_BYTES = 2**20  # one .jsonl line; data-prep rows with their provenance are a few kB
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux: no longer text names a file
MAX_CODE_CHARS = 255  # a target code or id becomes part of a file name, which holds at most 255 bytes
YAML_FIELDS = ("input_img", "init_img", "source_prompt", "target_prompts", "target_codes", "mask")
JSONL_FIELDS = ("image", "source_prompt", "target_prompt", "id", "mask")
FIELDS = {"yaml": YAML_FIELDS, "jsonl": JSONL_FIELDS}
# a field of the other format -> the name this format uses for it
OTHER_FORMAT_NAMES = {
    "yaml": {"image": "input_img", "target_prompt": "target_prompts (a list of prompts)",
             "id": "target_codes (a list as long as target_prompts)"},
    "jsonl": {"input_img": "image", "init_img": "image", "target_prompts": "target_prompt (one target per row)",
              "target_codes": "id"},
}
# keys a row might use to set a FlowEdit parameter or run option, which only the command sets:
# FlowEditParams' fields, the flags' own names and FlowEdit's experiment yaml (T_steps ...)
RUN_SETTINGS = {*(field.name for field in dataclasses.fields(FlowEditParams)), "src_negative", "tar_negative",
                "T_steps", "src_guidance_scale", "tar_guidance_scale", "preset", "tokens", "no_tokens", "use_tokens",
                "model", "kind", "max_side", "mask_feather", "paste_back", "auto_mask"}


class BatchRowError(ValueError):
    """The problems of one batch row, each a message naming its field (the row is skipped)."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


class _RowProblems:
    """Collects a row's problems, so that each field's is reported, not only the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def take(self, read, *args: Any) -> Any:
        """``read(*args)``, or None with its problem noted when it raises ``BatchRowError``."""
        try:
            return read(*args)
        except BatchRowError as exc:
            self.problems += exc.problems
            return None

    def raise_if_any(self) -> None:
        if self.problems:
            raise BatchRowError(self.problems)


def clipped(text: str, length: int = 200) -> str:
    """``text`` cut to ``length`` characters for a message (a parser's error may quote a whole line)."""
    return text if len(text) <= length else text[:length] + " [...]"


@dataclass
class Job:
    image: Path
    source_prompt: str
    target_prompt: str
    name: str  # output file stem, already sanitized
    origin: str  # "file:line" for messages
    mask: Path | str | None = None  # a mask image, AUTO_MASK, or None (the whole image)

    def with_mask(self, mask: Path | str | None) -> "Job":
        """This job restricted to ``mask``; the output name says so (``__mask`` / ``__automask``)."""
        if mask is None:
            return self
        suffix = "__automask" if mask == AUTO_MASK else "__mask"
        return Job(self.image, self.source_prompt, self.target_prompt, self.name + suffix, self.origin, mask)


def safe_name(text: str, max_length: int = 80) -> str:
    """A file-name stem with no path separators, no leading dots and only portable characters."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:max_length].rstrip("._-")
    return name or "edit"


def output_path(out_dir: Path, name: str) -> Path:
    """``out_dir / <safe name>.png``; refuses anything that would land outside ``out_dir``."""
    path = out_dir / f"{safe_name(name, 160)}.png"
    if path.resolve().parent != out_dir.resolve():
        raise ValueError(f"output name {name!r} escapes the output folder {out_dir}")
    return path


def job_name(image: Path, target_prompt: str, code: str | None = None) -> str:
    # without a code: a short slug plus a hash of the prompt, stable when the batch file is edited
    if code:
        label = safe_name(str(code), 60)
    else:
        label = f"{safe_name(target_prompt, 40)}-{hashlib.sha256(target_prompt.encode()).hexdigest()[:8]}"
    return f"{safe_name(image.stem, 60)}__{label}"


def file_problem(path: Path) -> str | None:
    """Why ``path`` is not a file to read ("does not exist" ...), None when it is one; never raises."""
    try:
        if path.is_file():
            return None
        return "is a folder, not a file" if path.is_dir() else "does not exist"
    except (OSError, ValueError) as exc:  # a name too long for the file system, a folder we may not enter
        return f"cannot be opened ({getattr(exc, 'strerror', None) or exc})"


def missing_input(job: Job) -> str | None:
    """"image file X does not exist" (or its mask file's problem), None when both can be read."""
    files = [("image", job.image)] + ([("mask", job.mask)] if isinstance(job.mask, Path) else [])
    for what, path in files:
        problem = file_problem(path)
        if problem is not None:
            return f"{what} file {path} {problem}"
    return None


# ----------------------------------------------------------------------------- fields of a row


def check_keys(entry: dict, form: str) -> None:
    """Refuse the keys a row cannot mean (see the module docstring); other keys are ignored."""
    problems = [problem for problem in (key_problem(key, form) for key in entry) if problem is not None]
    if problems:
        raise BatchRowError(problems)


def key_problem(key: Any, form: str) -> str | None:
    """Why a row of a .``form`` batch cannot hold ``key``; None for its fields and for any other key."""
    fields = FIELDS[form]
    if not isinstance(key, str) or key in fields:
        return None
    if key in RUN_SETTINGS or key.replace("-", "_") in RUN_SETTINGS:
        return (f"'{key}' is a setting of the whole run, which a batch row cannot change: every row runs with the "
                "command's settings. Remove it and give it on the command line (python -m editing --help lists the "
                "flags), one --out per setting")
    if key in OTHER_FORMAT_NAMES[form]:
        return f"'{key}' is not a field of a .{form} batch: use {OTHER_FORMAT_NAMES[form][key]}"
    near = difflib.get_close_matches(key, fields, n=1, cutoff=0.8)
    if near:
        return f"{key!r} is not a field of a .{form} batch; did you mean '{near[0]}'? (fields: {', '.join(fields)})"
    return None  # provenance (data-prep's image_sha256, the shapes world's labels ...): not ours to judge


def text_field(entry: dict, key: str) -> str:
    """``entry[key]`` as a prompt: non-empty text of at most ``MAX_PROMPT_CHARS`` that can be encoded."""
    return checked_text(entry.get(key), key, key in entry)


def checked_text(value: Any, label: str, given: bool = True) -> str:
    """``value`` as a prompt (``label`` names it in messages; ``given``: whether the row has it at all)."""
    if not given:
        raise BatchRowError([f"'{label}' must be a non-empty string, got nothing: add it to the row"])
    if not isinstance(value, str):
        raise BatchRowError([f"'{label}' must be a non-empty string, got {shown(value)}: write the prompt as "
                             "quoted text"])
    if not value.strip():
        raise BatchRowError([f"'{label}' must be a non-empty string, got {value[:20]!r}: describe the picture"])
    if len(value) > MAX_PROMPT_CHARS:
        raise BatchRowError([f"'{label}' is {len(value):,} characters long, over the limit of {MAX_PROMPT_CHARS:,}: "
                             "describe the picture in a sentence or two"])
    _encodable(value, label)
    return value


def _encodable(value: str, label: str) -> None:
    half = lone_surrogate(value)
    if half is not None:
        raise BatchRowError([f"'{label}' holds {half!r}, half of a UTF-16 pair, which is not text: "
                             "fix the file's encoding (write it as UTF-8)"])


def path_field(value: Any, batch_dir: Path, label: str) -> Path:
    """A file path given in a row; a relative one is looked up next to the batch file first (FlowEdit's
    paths are relative to its repository), then in the current folder. Whether it exists is
    ``missing_input``'s to say."""
    advice = f"give the {'mask' if label == 'mask' else 'image'} file's path"
    if not isinstance(value, str) or not value.strip():
        raise BatchRowError([f"'{label}' must be a non-empty string (a file path), got {shown(value)}: {advice}"])
    if len(value) > MAX_PATH_CHARS:
        raise BatchRowError([f"'{label}' is {len(value):,} characters long, longer than any file path "
                             f"({MAX_PATH_CHARS:,}): {advice}"])
    if "\x00" in value:
        raise BatchRowError([f"'{label}' holds a NUL character, which no file name can: {advice}"])
    _encodable(value, label)
    try:
        path = Path(value).expanduser()
        if not path.is_absolute() and (batch_dir / path).exists():
            return batch_dir / path
    except (OSError, RuntimeError) as exc:  # RuntimeError: "~user/..." for a user who does not exist
        reason = getattr(exc, "strerror", None) or exc  # the reason, not the (long) path again
        raise BatchRowError([f"'{label}' is not a usable path ({reason}): {advice}"]) from None
    return path


def row_mask(entry: dict, batch_dir: Path) -> Path | str | None:
    """A row's optional ``mask``: "auto", or a mask image path (relative to the batch file like images)."""
    value = entry.get("mask")
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == AUTO_MASK:
        return AUTO_MASK
    if not isinstance(value, str) or not value.strip():
        raise BatchRowError([f"'mask' must be a mask image path or \"auto\", got {shown(value)}: give one, or leave "
                             "the field out to edit the whole image"])
    return path_field(value, batch_dir, "mask")


def output_code(value: Any, label: str) -> str | None:
    """A target code or row id (the output file's name): text or a whole number, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BatchRowError([f"'{label}' must be text or a whole number (it names the output file), got "
                             f"{shown(value)}: give a short name such as \"lion\""])
    code = str(value)
    if len(code) > MAX_CODE_CHARS:
        raise BatchRowError([f"'{label}' is {len(code):,} characters long, over the {MAX_CODE_CHARS} a file name "
                             "can hold: give a short name"])
    _encodable(code, label)
    return code


# ----------------------------------------------------------------------------- rows


def yaml_row_jobs(entry: Any, batch_dir: Path, origin: str) -> list[Job]:
    """The jobs of one edits.yaml entry, one per target prompt; ``BatchRowError`` lists every problem."""
    if not isinstance(entry, dict):
        raise BatchRowError([f"expected a mapping with input_img, source_prompt, target_prompts; got {shown(entry)}: "
                             "write the edit as 'key: value' lines after its '- '"])
    row = _RowProblems()
    row.take(check_keys, entry, "yaml")
    image = row.take(_yaml_image, entry, batch_dir)
    mask = row.take(row_mask, entry, batch_dir)
    source = row.take(text_field, entry, "source_prompt")
    targets = row.take(_yaml_targets, entry)
    codes = row.take(_yaml_codes, entry, len(targets) if targets is not None else None)
    row.raise_if_any()
    return [Job(image, source, target, job_name(image, target, code), origin).with_mask(mask)
            for target, code in zip(targets, codes)]


def _yaml_image(entry: dict, batch_dir: Path) -> Path:
    keys = [key for key in ("input_img", "init_img") if key in entry]  # init_img: FlowEdit's older name
    if len(keys) == 2 and entry["input_img"] != entry["init_img"]:
        raise BatchRowError(["'input_img' and 'init_img' name different images: give one (init_img is FlowEdit's "
                             "older name for input_img)"])
    key = keys[0] if keys else "input_img"
    return path_field(entry.get(key), batch_dir, key)


def _yaml_targets(entry: dict) -> list[str]:
    targets = entry.get("target_prompts")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets:
        raise BatchRowError([f"'target_prompts' must be a non-empty list of prompts, got {shown(targets)}: list the "
                             "wanted results under it, one '- ' each"])
    return _each(checked_text, targets, "target_prompts")


def _yaml_codes(entry: dict, count: int | None) -> list[str | None]:
    codes = entry.get("target_codes")
    if codes is None:
        return [None] * (count or 0)
    if not isinstance(codes, list) or (count is not None and len(codes) != count):
        length = f" ({count})" if count is not None else ""
        raise BatchRowError([f"'target_codes' must be a list as long as target_prompts{length}, got {shown(codes)}: "
                             "give one code per target prompt, or leave it out"])
    return _each(output_code, codes, "target_codes")


def _each(check: Callable[[Any, str], Any], values: list, name: str) -> list:
    """``check`` applied to every item of the list field ``name``; ``BatchRowError`` with every item's problem."""
    row = _RowProblems()
    checked = [row.take(check, value, f"{name}[{j}]") for j, value in enumerate(values)]
    row.raise_if_any()
    return checked


def jsonl_row_job(row: Any, batch_dir: Path, origin: str) -> Job:
    """The job of one data-prep row; ``BatchRowError`` lists every problem."""
    if not isinstance(row, dict):
        raise BatchRowError([f"expected a JSON object with image, source_prompt, target_prompt; got {shown(row)}: "
                             "write one object {...} per line"])
    problems = _RowProblems()
    problems.take(check_keys, row, "jsonl")
    image = problems.take(path_field, row.get("image"), batch_dir, "image")
    mask = problems.take(row_mask, row, batch_dir)
    source = problems.take(text_field, row, "source_prompt")
    target = problems.take(text_field, row, "target_prompt")
    code = problems.take(output_code, row.get("id"), "id")
    problems.raise_if_any()
    return Job(image, source, target, job_name(image, target, code), origin).with_mask(mask)


# ----------------------------------------------------------------------------- files


class BatchFileError(ValueError):
    """A batch file that cannot be read at all (its message starts with the file, and its line when known)."""


def read_batch(path: str | Path) -> tuple[list[Job], list[str]]:
    """Jobs and messages ("FILE:LINE: ...") from a .yaml/.yml or .jsonl/.ndjson batch file; never raises."""
    path = Path(path)
    problem = file_problem(path)
    if problem is not None:
        return [], [f"batch file {path} {problem}"]
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        jobs, errors = read_jsonl_batch(path)
    elif suffix in (".yaml", ".yml"):
        jobs, errors = read_yaml_batch(path)
    else:
        return [], [f"{path}: unknown batch format (use .yaml/.yml or .jsonl)"]
    if not jobs and not errors:
        errors = [f"{path}: the file holds no edits: give at least one (docs/editing.md, Batch files)"]
    return jobs, errors


def read_jsonl_batch(path: Path) -> tuple[list[Job], list[str]]:
    """Jobs and error messages from data-prep rows {"image", "source_prompt", "target_prompt"[, "id", "mask"]}."""
    jobs, errors = [], []
    try:
        for number, line in _jsonl_lines(path):
            origin = f"{path}:{number}"
            try:
                jobs.append(jsonl_row_job(_json_row(line), path.parent, origin))
            except BatchRowError as exc:
                errors += [f"{origin}: {problem}" for problem in exc.problems]
    except OSError as exc:
        errors.append(f"{path}: cannot read ({exc})")
    return jobs, errors


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """(number, bytes) of each line that is not blank, never holding more than one line of
    ``MAX_ROW_BYTES``; a longer line is skipped to its end and given as None. Lines end at "\\n" only:
    JSON text may hold U+2028."""
    with path.open("rb") as stream:
        number = 0
        while line := stream.readline(MAX_ROW_BYTES + 1):
            number += 1
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
                line = line[3:]
            if len(line) > MAX_ROW_BYTES and not line.endswith(b"\n"):
                while (rest := stream.readline(MAX_ROW_BYTES)) and not rest.endswith(b"\n"):
                    pass
                line = None
            if line is None or line.strip():  # JSON's whitespace is ASCII: bytes.strip() finds a blank line
                yield number, line


def _json_row(line: bytes | None) -> Any:
    """The JSON value of one line; ``BatchRowError`` when it is not one."""
    if line is None:
        raise BatchRowError([f"the line is over {MAX_ROW_BYTES // 2**10:,} kB, the limit of one row: write one JSON "
                             "object per line"])
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BatchRowError([f"not UTF-8 text (byte 0x{line[exc.start]:02x} at column {exc.start + 1}): save the "
                             "file as UTF-8"]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BatchRowError([f"not valid JSON ({exc.msg} at column {exc.colno}): write one JSON object per "
                             "line"]) from None
    except RecursionError:
        raise BatchRowError(["not valid JSON: nested deeper than Python can read; write one flat JSON object "
                             "per line"]) from None
    except ValueError:  # what is left: an integer of over 4,300 digits (sys.get_int_max_str_digits)
        raise BatchRowError(["not valid JSON (a number of over 4,300 digits): write one JSON object per "
                             "line"]) from None


def read_yaml_batch(path: Path) -> tuple[list[Job], list[str]]:
    """Jobs and error messages ("file:line: ...") from a FlowEdit edits.yaml."""
    try:
        loader = _BoundedLoader(_yaml_text(path), path)
        try:
            return _yaml_document_jobs(loader, path)
        finally:
            loader.dispose()
    except BatchFileError as exc:
        return [], [str(exc)]
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else "?"
        return [], [f"{path}:{line}: not valid YAML ({exc.problem})"]
    except RecursionError:
        return [], [f"{path}: nested deeper than Python can read: an edits.yaml is a list of flat edits"]
    except (OSError, yaml.YAMLError) as exc:
        return [], [f"{path}: cannot read ({exc})"]


def _yaml_text(path: Path) -> str:
    with path.open("rb") as stream:
        data = stream.read(MAX_YAML_BYTES + 1)
    if len(data) > MAX_YAML_BYTES:
        raise BatchFileError(f"{path}: over {MAX_YAML_BYTES // 2**20} MiB, the limit of a .yaml batch (PyYAML holds "
                             "all of it in memory): split it, or write the rows as .jsonl, which is read line by line")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise BatchFileError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}): save the file as "
                             "UTF-8") from None


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader (no Python objects, only plain data) that stops after ``MAX_YAML_NODES``
    nodes. Aliases make no new node here; ``check_row_size`` counts them where a row is built."""

    def __init__(self, text: str, path: Path):
        super().__init__(text)
        self.path, self.nodes = path, 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if not self.check_event(yaml.AliasEvent):
            self.nodes += 1
            if self.nodes > MAX_YAML_NODES:
                line = self.peek_event().start_mark.line + 1
                raise BatchFileError(f"{self.path}:{line}: more than {MAX_YAML_NODES:,} YAML values, the limit of a "
                                     ".yaml batch (PyYAML holds all of them in memory): split the file, or write the "
                                     "rows as .jsonl, which is read line by line")
        return super().compose_node(parent, index)


def _yaml_document_jobs(loader: _BoundedLoader, path: Path) -> tuple[list[Job], list[str]]:
    root = loader.get_single_node()  # nodes keep their line numbers; entries are built one by one
    if root is None:
        return [], [f"{path}: the file is empty: write a list of edits (docs/editing.md, Batch files)"]
    if not isinstance(root, yaml.SequenceNode):
        return [], [f"{path}:{root.start_mark.line + 1}: expected a list of edits, got a {root.id}: start each "
                    "edit with '- '"]
    jobs, errors = [], []
    for node in root.value:
        origin = f"{path}:{node.start_mark.line + 1}"
        try:
            check_row_size(node)
            jobs.extend(yaml_row_jobs(_construct(loader, node), path.parent, origin))
        except BatchRowError as exc:
            errors += [f"{origin}: {problem}" for problem in exc.problems]
    return jobs, errors


def check_row_size(node: yaml.Node) -> None:
    """Refuse a row that stands for more than ``MAX_ROW_NODES`` nodes once its aliases are
    expanded (a "billion laughs" is 10 nodes that stand for 10**9), or that contains itself.
    Counted once per distinct node, so the count costs what the file does, not what it expands to."""
    sizes: dict[int, int | None] = {}  # id(node) -> expanded size; None while its children are counted

    def size(current: yaml.Node) -> int:
        if id(current) in sizes:
            if sizes[id(current)] is None:
                raise BatchRowError(["the entry contains itself through an alias (*name inside its own &name): "
                                     "write it out"])
            return sizes[id(current)]
        sizes[id(current)] = None
        if isinstance(current, yaml.MappingNode):
            children = [child for pair in current.value for child in pair]
        else:
            children = current.value if isinstance(current, yaml.SequenceNode) else []
        total = 1
        for child in children:
            total = min(total + size(child), MAX_ROW_NODES + 1)
        sizes[id(current)] = total
        return total

    if size(node) > MAX_ROW_NODES:
        raise BatchRowError([f"the entry stands for more than {MAX_ROW_NODES:,} values once its aliases (*name) are "
                             "expanded, more than any edit needs: write it out without aliases"])


def _construct(loader: _BoundedLoader, node: yaml.Node) -> Any:
    """The plain data of one entry's nodes; a malformed one is a ``BatchRowError``."""
    try:
        return loader.construct_document(node)
    except Exception as exc:  # PyYAML's constructors raise ValueError, TypeError ... for "!!int x" and the like
        # a failed construction leaves its half-built state behind; the next entry starts clean
        loader.constructed_objects, loader.recursive_objects, loader.state_generators = {}, {}, []
        marked = isinstance(exc, yaml.MarkedYAMLError) and exc.problem
        problem = exc.problem if marked else f"{type(exc).__name__}: {exc}"
        raise BatchRowError([f"not valid YAML ({clipped(problem)}): fix this entry"]) from None

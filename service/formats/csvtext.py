"""CSV, with or without a header row: streamed row by row, features straight into a growing float64 array and
labels kept as numbers or as small integer codes, so memory stays a small multiple of the body.

Line endings LF, CRLF and CR-only all work (the text is read with newline=""); a line or a field
too long for a table of numbers is refused with the line it is on.

`header`: "yes" (line 1 names the columns), "no" (line 1 is data; columns are named by their
numbers "0", "1", ...) or "auto": line 1 is data when every field is a number, a header when its
features are not all numbers, and refused (naming the option) when only its label is not a number,
since that line is as likely one of the classes as the columns' names.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal, NoReturn, get_args

import numpy as np

from dnnq.service.formats.common import (
    ParsedDataset,
    UploadError,
    UploadLimits,
    check_classes,
    check_finite,
    check_limits,
    finish_arrays,
    open_source,
    short,
)

__all__ = ["HEADER_MODES", "Header", "read_csv"]

Header = Literal["auto", "yes", "no"]  # does line 1 name the columns?
HEADER_MODES: tuple[Header, ...] = get_args(Header)

if TYPE_CHECKING:
    from _csv import Reader as _Reader  # what csv.reader returns (the csv module names no type for it)

CHARS_PER_FIELD = 64  # a line longer than this per column (plus one long field) is not a table of numbers


def _lines(text: io.TextIOBase, limits: UploadLimits) -> Iterator[str]:
    """The text's lines, refusing NUL bytes, undecodable bytes and lines longer than any valid row."""
    most = (limits.max_features + 1) * CHARS_PER_FIELD + csv.field_size_limit()
    number = 0
    while True:
        number += 1
        try:
            line = text.readline(most + 1)
        except UnicodeDecodeError as exc:
            raise UploadError(422, f"This CSV is not UTF-8 text ({short(exc)}); save it as UTF-8.") from None
        if not line:
            return
        if len(line) > most:
            if number == 1 and line.count(",") > limits.max_features:
                raise UploadError(
                    413,
                    f"This CSV's header has more than {limits.max_features} feature columns; "
                    f"the limit is {limits.max_features} (DNNQ_MAX_FEATURES).",
                )
            raise UploadError(
                422,
                f"CSV line {number} is longer than {most} characters; a row holds numbers and one label per column.",
            )
        if "\x00" in line:
            raise UploadError(422, f"CSV line {number} contains a NUL byte; upload plain UTF-8 text.")
        yield line


def read_csv(
    source: bytes | os.PathLike, limits: UploadLimits, target: str | None, header: str = "auto"
) -> ParsedDataset:
    if header not in HEADER_MODES:
        raise UploadError(422, f"header must be 'auto', 'yes' or 'no'; got {header!r}.")
    with io.TextIOWrapper(open_source(source), encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(_lines(text, limits))
        try:
            return _parse(reader, limits, target, header)
        except csv.Error as exc:  # a field over the csv module's limit, a quote never closed
            raise UploadError(
                422,
                f"CSV line {reader.line_num}: {exc}. Fields longer than "
                f"{csv.field_size_limit()} characters, or quotes that never close, are refused; "
                "save the file as comma-separated numbers.",
            ) from None


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _names_columns(first: list[str], mode: str, target: str | None, line: int) -> bool:
    """Whether the first non-blank line (`first`, stripped) is a header, under header=`mode`."""
    if mode != "auto":
        return mode == "yes"
    if target is not None and target in first:
        return True
    t = len(first) - 1 if target is None or not target.isdigit() else int(target)
    numbers = [_is_number(c) for c in first]
    if all(numbers):
        return False
    if all(ok for k, ok in enumerate(numbers) if k != t):
        raise UploadError(
            422,
            f"CSV line {line} may be a header or an example: its features are numbers but its label "
            f"{first[t][:100]!r} is not. Send header=yes if line {line} names the columns, or header=no "
            "if it is an example.",
        )
    return True


def _parse(reader: _Reader, limits: UploadLimits, target: str | None, mode: str) -> ParsedDataset:
    first = None
    for row in reader:
        if any(c.strip() for c in row):
            first = row
            break
    if first is None:
        raise UploadError(422, "This CSV needs a header row and at least one data row.")
    if len(first) < 2:
        raise UploadError(422, "This CSV needs at least one feature column and a label column.")
    n = len(first)
    if n - 1 > limits.max_features:
        raise UploadError(
            413, f"This dataset has {n - 1} features; the limit is {limits.max_features} (DNNQ_MAX_FEATURES)."
        )
    names = [c.strip() for c in first]
    rows: Iterator[tuple[int, list[str]]] = ((reader.line_num, row) for row in reader)
    if _names_columns(names, mode, target, reader.line_num):
        header = names
    else:  # line 1 is an example: columns are named by their numbers
        header = [str(k) for k in range(n)]
        rows = itertools.chain([(reader.line_num, first)], rows)
    t = n - 1 if target is None else (header.index(target) if target in header else None)
    if t is None:
        if header is names:
            raise UploadError(422, f"target column {target!r} is not in the header {header[:50]}.")
        raise UploadError(
            422,
            f"target column {target!r} is not a column number from 0 to {n - 1}: this CSV is read without a "
            "header row (header=no, or header=auto and its first line is all numbers). Send header=yes if "
            "its first line names the columns.",
        )
    max_rows = min(limits.max_examples, limits.max_array_bytes // (8 * (n - 1)))
    capacity = min(1024, max_rows)
    X = np.empty((capacity, n - 1), dtype=np.float64)
    labels = _Labels(capacity, limits)
    m = 0
    for line, row in rows:
        if len(row) != n:
            if not any(c.strip() for c in row):
                continue
            first_row = "the header" if header is names else "the first row"
            raise UploadError(422, f"CSV line {line} has {len(row)} fields; {first_row} has {n}.")
        if m == capacity:
            if m == max_rows:
                _too_many_rows(m, n, limits)
            capacity = min(m + m // 2 + 1, max_rows)
            X.resize((capacity, n - 1), refcheck=False)  # realloc, often in place
            labels.resize(capacity)
        label = row.pop(t).strip()
        try:
            X[m] = row
        except ValueError:
            if not label and not any(c.strip() for c in row):
                continue
            _not_a_number(row, header, t, line)
        labels.add(m, label)
        m += 1
    if m == 0:
        raise UploadError(
            422, "This CSV needs a header row and at least one data row (header=no: line 1 is a data row)."
        )
    X.resize((m, n - 1), refcheck=False)
    return labels.finish(X, m)


class _Labels:
    """The label column as it is read: codes of its distinct strings while there are few enough to
    be classes; past max_classes they must all be numbers (a continuous target), kept as floats."""

    def __init__(self, capacity: int, limits: UploadLimits) -> None:
        self.limits = limits
        self.names: dict[str, int] = {}  # label -> code, in the order first seen
        self.codes = np.empty(capacity, dtype=np.int32)
        self.values: np.ndarray | None = None  # the labels as floats, once there are too many to be classes

    def resize(self, capacity: int) -> None:
        (self.codes if self.values is None else self.values).resize(capacity, refcheck=False)

    def add(self, m: int, label: str) -> None:
        """Row m's label."""
        values = self.values
        if values is None:
            code = self.names.get(label)
            if code is None and len(self.names) < self.limits.max_classes:
                code = self.names[label] = len(self.names)
            if code is not None:
                self.codes[m] = code
                return
            values = self._to_floats(m)
        try:
            values[m] = float(label)
        except ValueError:
            self._refuse(self.limits.max_classes + 1)

    def _to_floats(self, m: int) -> np.ndarray:
        """The first m labels as floats, when there are too many distinct ones to be classes."""
        try:
            numbers = np.array([float(name) for name in self.names], dtype=np.float64)
        except ValueError:
            self._refuse(len(self.names) + 1)
        values = np.empty(len(self.codes), dtype=np.float64)
        values[:m] = numbers[self.codes[:m]]
        self.values, self.codes = values, np.empty(0, dtype=np.int32)
        return values

    def _refuse(self, n: int) -> NoReturn:
        """413: n (> max_classes) distinct labels that are not all numbers."""
        check_classes(n, "distinct values or more, not all numbers", self.limits)
        raise AssertionError(f"{n} labels are within the class limit")  # not reached: n > max_classes

    def finish(self, X: np.ndarray, m: int) -> ParsedDataset:
        """The dataset of X and the first m labels: numbers as they are, strings as sorted classes."""
        if self.values is not None:
            self.values.resize(m, refcheck=False)
            return finish_arrays(X, self.values, self.limits)
        codes = self.codes[:m]
        try:
            numbers = np.array([float(name) for name in self.names], dtype=np.float64)  # dicts keep insertion order
        except ValueError:
            numbers = None
        if numbers is not None:
            return finish_arrays(X, numbers[codes], self.limits)
        classes = sorted(self.names)
        order = np.empty(len(classes), dtype=np.int32)
        order[[self.names[c] for c in classes]] = np.arange(len(classes), dtype=np.int32)
        Y = order[codes].astype(np.float64).reshape(-1, 1)
        check_finite(X, Y)
        check_limits(X, self.limits)
        return ParsedDataset(X, Y, classes, "binary" if len(classes) == 2 else "integer")


def _too_many_rows(m: int, n: int, limits: UploadLimits) -> None:
    if m >= limits.max_examples:
        raise UploadError(
            413,
            f"This CSV has more than {limits.max_examples} examples; the limit is "
            f"{limits.max_examples} (DNNQ_MAX_EXAMPLES).",
        )
    raise UploadError(
        413,
        f"This CSV has more than {m} rows of {n - 1} features, over {limits.max_array_bytes} "
        "bytes as float64; the limit is the declared-size limit (DNNQ_MAX_DECOMPRESSED_BYTES). "
        "Upload a smaller dataset.",
    )


def _not_a_number(row: list[str], header: list[str], t: int, line: int) -> None:
    names = [h for k, h in enumerate(header) if k != t]
    for j, col in enumerate(row):
        try:
            float(col)
        except ValueError:
            raise UploadError(
                422,
                f"CSV line {line}, column {names[j]!r}: {col.strip()[:100]!r} is not a number. Features "
                "must be numeric (only the target column may hold strings).",
            ) from None
    raise UploadError(422, f"CSV line {line} could not be read as numbers.")
